"""When an idle non-default model gives way to the default: the rules requests set and the owner reads.

Why a table of its own: these are settings, not the owner's state.  An HTTP client's ``keep_alive``
and a reload's new default are written by request tasks (the way the config holder is swapped on
SIGHUP); the owner only reads them when it decides whether to return to the default.  Pure: the idle
clock and the config's ``return_to_default_after`` are passed in, so the decision is unit-tested.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Tuple


class IdleRules:
    """The default model to return to, and each other model's keep-alive (idle seconds before returning)."""

    def __init__(self) -> None:
        self.default: Optional[Tuple[str, Path]] = None      # the active default model (name, its file)
        self.keep_alive: Dict[str, float] = {}               # model -> seconds (HTTP keep_alive; inf pins)

    def set_default(self, name: str, path: Path) -> None:
        self.default = (name, Path(os.fspath(path)))

    def set_keep_alive(self, name: str, seconds: float) -> None:
        """An HTTP client's keep_alive for a model other than the default: idle seconds before the default
        returns (0: right after the request; inf: pinned until a request wants another model).  The default
        model ignores it: it stays warm whatever a client asks."""
        if self.default is not None and name == self.default[0]:
            return
        self.keep_alive[name] = seconds

    def return_at(self, model: str, idle_since: float, config_after: float) -> Optional[float]:
        """When the idle ``model`` should give way to the default (None: never): its keep-alive, else the
        config's ``return_to_default_after`` (0: never), counted from ``idle_since``."""
        if self.default is None or model == self.default[0]:
            return None
        after = self.keep_alive.get(model)
        if after is None:
            after = config_after
            if not after:
                return None
        if after == math.inf:
            return None
        return idle_since + after
