"""The range each sampling value may take: one table for every place that checks one.

A model's profile (checked when the config loads), a JSON-RPC ``generate`` or
``start_server`` and an HTTP request (``http/core.py``) accept the same values, so a
profile that loads never makes a request fail for its sampling.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

Number = Union[int, float]

RANGES: Dict[str, Tuple[Number, Number]] = {
    "temperature": (0.0, 10.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, 100_000),
    "max_tokens": (1, 1_000_000),
}


def bounds(name: str) -> Tuple[Number, Number]:
    """(lowest, highest) allowed for ``name``."""
    return RANGES[name]
