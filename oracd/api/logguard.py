"""Keeping clients from flooding the log: client-supplied fields clipped, request lines rate-limited per peer.

Why: the log is the operator's history.  A method name of 1 MB written in full,
32 times, would rotate every log file away in seconds.  Every field a
client chose is clipped to ``CLIP`` characters with a marker giving its real
length, and each peer gets a token bucket of request lines; the lines it would
have cost beyond that are counted and reported in one summary line later.
Pure: the clock is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional

CLIP = 200


def clip(value: Any, limit: int = CLIP) -> Any:
    """``value`` for a log line: strings longer than ``limit`` cut, with "...[N chars]" saying how long it was;
    other types (numbers, None) as they are, anything else as its clipped repr."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` spends one if there is one."""
    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:                 # new: full
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PeerLogLimiter:
    """One bucket per peer; ``admit`` says whether to write a line now, and how many were held back before it
    (to be reported with it)."""

    def __init__(self, rate: float, burst: int, max_peers: int = 1024):
        self.rate = rate
        self.burst = float(burst)
        self.max_peers = max_peers
        self.buckets: Dict[Hashable, TokenBucket] = {}
        self.suppressed: Dict[Hashable, int] = {}

    def admit(self, peer: Hashable, now: float) -> Optional[int]:
        """None: suppress this line (it is counted).  Otherwise the number of lines suppressed since the
        last one written for this peer (0 usually)."""
        bucket = self.buckets.get(peer)
        if bucket is None:
            if len(self.buckets) >= self.max_peers:
                self._prune(now)
            bucket = self.buckets[peer] = TokenBucket(self.rate, self.burst)
        if not bucket.take(now):
            self.suppressed[peer] = self.suppressed.get(peer, 0) + 1
            return None
        return self.suppressed.pop(peer, 0)

    def _prune(self, now: float) -> None:
        """Forget peers whose bucket has refilled and who owe no summary (they behave like new ones)."""
        for key in [k for k, b in self.buckets.items()
                    if k not in self.suppressed and b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del self.buckets[key]
        if len(self.buckets) >= self.max_peers:       # all busy: drop the oldest rather than grow
            oldest = min(self.buckets, key=lambda k: self.buckets[k].stamp)
            del self.buckets[oldest]
            self.suppressed.pop(oldest, None)
