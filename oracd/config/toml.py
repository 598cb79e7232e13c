"""The TOML parser for this Python: ``tomllib`` from 3.11, the ``tomli`` backport on 3.10 (the Jetson's).

Why one module: the settings file and the profiles file are both TOML; the version guard lives here once.
"""
from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["tomllib"]
