"""strip_think: a reasoning model's <think> block never reaches the answer (pure)."""
from __future__ import annotations

import pytest

from oracd.api.generate import strip_think


@pytest.mark.parametrize("raw, expected", [
    ("<think>hmm</think>\n\n{\"a\": 1}", "{\"a\": 1}"),
    ("<think>never closed", ""),
    ("plain", "plain"),
    ("a <think>x</think> b", "a b"),
])
def test_strip_think(raw, expected):
    assert strip_think(raw) == expected
