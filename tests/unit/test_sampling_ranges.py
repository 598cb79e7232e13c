"""One table of sampling ranges (config/sampling.py): a profile, generate and the HTTP APIs accept the same values."""
from __future__ import annotations

from pathlib import Path

import pytest

from oracd.api.generate import check_range
from oracd.config.profiles import ProfileError, parse_profiles
from oracd.config.sampling import RANGES
from oracd.http import core
from oracd_protocol.errors import InvalidParams

pytestmark = pytest.mark.unit


def just_outside(name: str):
    lo, hi = RANGES[name]
    step = 1 if isinstance(hi, int) else 0.5
    return lo - step, hi + step


def profile(key: str, value):
    return parse_profiles({"m.gguf": {key: value}}, Path("/"))["m.gguf"]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_a_profile_takes_exactly_the_tables_range(name):
    lo, hi = RANGES[name]
    assert getattr(profile(name, lo), name) == lo and getattr(profile(name, hi), name) == hi
    for bad in just_outside(name):
        with pytest.raises(ProfileError, match=name):
            profile(name, bad)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_generate_takes_exactly_the_tables_range(name):
    lo, hi = RANGES[name]
    check_range(name, lo)
    check_range(name, hi)
    for bad in just_outside(name):
        with pytest.raises(InvalidParams, match=f"{name} must be between"):
            check_range(name, bad)


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k"])
def test_the_http_apis_take_exactly_the_tables_range(name):
    lo, hi = RANGES[name]
    for ok in (lo, hi):
        gen = core.Gen()
        core.sampling({name: ok}, gen)
        assert getattr(gen, name) == ok
    for bad in just_outside(name):
        with pytest.raises(InvalidParams, match=name):
            core.sampling({name: bad}, core.Gen())
