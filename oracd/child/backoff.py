"""How long to wait before restarting a child that crashed or would not load again.  Pure.

Exponential from ``initial``, capped at ``maximum``; a child that stayed healthy
for ``reset_after`` seconds starts over; after ``fail_fast_after`` failures in a
row, requests stop waiting for the next attempt and get ServerUnavailable at once.
"""
from __future__ import annotations

from dataclasses import dataclass

OOM_MIN_DELAY = 5.0


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float
    maximum: float
    reset_after: float
    fail_fast_after: int

    def delay(self, consecutive_failures: int, reason: str = "crash") -> float:
        """Seconds to wait after the n-th failure in a row (n >= 1).  After an out-of-memory kill, four
        times longer (at least OOM_MIN_DELAY): a box under memory pressure is not hammered."""
        n = max(1, consecutive_failures)
        d = min(self.initial * 2 ** min(n - 1, 60), self.maximum)
        if reason == "out_of_memory":
            d = min(max(4 * d, OOM_MIN_DELAY), max(self.maximum, OOM_MIN_DELAY))
        return d

    def healthy_long_enough(self, healthy_for: float) -> bool:
        """True once a child has been ready so long that earlier failures no longer count."""
        return healthy_for > self.reset_after

    def fail_fast(self, consecutive_failures: int) -> bool:
        """A crash loop: waiting requests get ServerUnavailable instead of waiting for the next try."""
        return consecutive_failures >= self.fail_fast_after
