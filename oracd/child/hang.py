"""Is the child hung?  Decided from probe results and CPU samples alone.  Pure: the caller passes the clock.

Two kinds of hang, both with /health possibly still answering 200:
- the probe itself goes unanswered (or fails) for ``hang_timeout``;
- with generations in flight, the busy slots' progress counters in /slots stop
  moving for ``hang_timeout`` *while llama-server uses almost no CPU* (a stuck
  decode: a GPU hang, a frozen RPC worker).  A long prompt batch also freezes
  the counters, but burns CPU, so it is not a hang.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

IDLE_CPU_SHARE = 0.1      # below this share of one core while frozen: nothing is computing


def slot_progress(slots: Any) -> Tuple[Any, ...]:
    """The busy slots' progress counters from GET /slots (unchanged for hang_timeout = stuck)."""
    if not isinstance(slots, list):
        return ()
    out = []
    for s in slots:
        if isinstance(s, dict) and s.get("is_processing"):
            tokens = s.get("next_token") or []
            out.append((s.get("id"), s.get("id_task"), s.get("n_prompt_tokens_processed"),
                        tuple(t.get("n_decoded") for t in tokens if isinstance(t, dict))))
    return tuple(out)


class HangDetector:
    def __init__(self, hang_timeout: float, health_timeout: float, now: float):
        self.hang_timeout = hang_timeout
        self.health_timeout = health_timeout
        self._unhealthy_since: Optional[float] = None
        self._progress: Any = None
        self._progress_since = now
        self._progress_cpu = 0.0

    def health(self, now: float, ok: bool) -> Optional[str]:
        """An idle probe (/health) answered ``ok`` or not.  Returns why to kill, or None."""
        self._progress = None
        return self._probe(now, ok, "/health")

    def slots(self, now: float, progress: Tuple[Any, ...], cpu_s: float) -> Optional[str]:
        """/slots answered with the busy slots' ``progress``; ``cpu_s`` is the child's CPU time so far."""
        if progress != self._progress or not progress:
            self._progress, self._progress_since, self._progress_cpu = progress, now, cpu_s
        else:
            stalled = now - self._progress_since
            used = cpu_s - self._progress_cpu
            if stalled >= self.hang_timeout and used < IDLE_CPU_SHARE * stalled:
                return f"no progress in /slots for {stalled:.1f}s ({used:.2f}s CPU)"
        return self._probe(now, True, "/slots")

    def failed(self, now: float, probe: str) -> Optional[str]:
        """A probe got no usable answer (timeout, connection refused, not 200)."""
        return self._probe(now, False, probe)

    @property
    def unhealthy_since(self) -> Optional[float]:
        return self._unhealthy_since

    def _probe(self, now: float, ok: bool, probe: str) -> Optional[str]:
        if ok:
            self._unhealthy_since = None
            return None
        if self._unhealthy_since is None:
            self._unhealthy_since = now
        stuck = now - self._unhealthy_since + self.health_timeout
        if stuck >= self.hang_timeout:
            return f"{probe} unanswered for {stuck:.1f}s"
        return None
