"""RSS and CPU time of a process, read cheaply: ``status`` is polled, and /proc reads are not free."""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import psutil


class RssSampler:
    """A process's RSS, read at most once per ``max_age`` seconds per pid."""

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self._cache: Dict[int, Tuple[float, Optional[int]]] = {}

    def rss(self, proc: psutil.Process) -> Optional[int]:
        now = time.monotonic()
        hit = self._cache.get(proc.pid)
        if hit is not None and now - hit[0] < self.max_age:
            return hit[1]
        try:
            rss: Optional[int] = proc.memory_info().rss
        except psutil.Error:
            rss = None
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[proc.pid] = (now, rss)
        return rss


def cpu_seconds(proc: Optional[psutil.Process]) -> float:
    """CPU time used so far (user + system, all threads); 0 if the process is gone."""
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0
