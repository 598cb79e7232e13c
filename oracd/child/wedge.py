"""Is the child wedged: healthy by /health, but failing every generation?  Pure: the caller passes the clock.

Seen after memory pressure: /health answers 200 while every completion answers
500 "Compute error.".  ``threshold`` 5xx answers (or lost connections) in a row
on generations, with no success in between and all within ``window`` seconds,
mean the child must be restarted.  A 4xx (a bad request) or a slow answer is not
a failure here, and a success resets the count, so an overloaded but healthy
server never trips it; errors spread over a long time do not add up either.
"""
from __future__ import annotations

from collections import deque
from typing import Deque


class WedgeDetector:
    def __init__(self, threshold: int, window: float):
        self.threshold = threshold
        self.window = window
        self._failures: Deque[float] = deque()

    def success(self) -> None:
        self._failures.clear()

    def failure(self, now: float) -> bool:
        """A generation got a 5xx or lost its connection; True when the child counts as wedged."""
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.window:
            self._failures.popleft()
        return len(self._failures) >= self.threshold

    @property
    def streak(self) -> int:
        return len(self._failures)
