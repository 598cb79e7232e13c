"""What the owner says about the child, as one immutable value (status, metrics, STATUS= read it).

Why a snapshot: readers on other tasks (status, a Prometheus scrape, systemd's
STATUS= line) never look into the supervisor's working state, so it has one
writer and they see a consistent picture.  The owner publishes a new one
whenever something in it changes: every state move, a spawn, a warm-up, the
inbox taken in, a swap decided.  Figures that move on their own (the child's RSS, uptime, the
time left in backoff, requests holding the child) are read live.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional

from .states import ChildState


def frozen_map(d: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """A read-only copy (the owner may change the original after publishing)."""
    return MappingProxyType(dict(d)) if d is not None else None


@dataclass(frozen=True)
class ChildSnapshot:
    state: ChildState = ChildState.STOPPED
    model: Optional[str] = None               # the model the running child serves
    wanted_model: Optional[str] = None        # the model the child should run now (loading, or about to be)
    child: Any = None                         # the running Child (its pid, endpoint, HTTP client), or None
    restarts: int = 0
    restarts_by_reason: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    loads: int = 0
    consecutive_failures: int = 0
    last_error: Optional[Mapping[str, Any]] = None
    last_exit: Optional[Mapping[str, Any]] = None
    backoff_until: float = 0.0                # monotonic time of the next start while in backoff
    warm: Any = None                          # the last warm-up's WarmReport (replaced, never changed)
    warm_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # outcomes, for metrics


def plain(d: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """A snapshot's map as the plain dict status answers with."""
    return dict(d) if d is not None else None
