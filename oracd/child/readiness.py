"""Waiting for a llama-server to say it is ready: ``GET /health`` until 200, a deadline, or a reason to stop.

Why one loop: the supervised child and the extra servers (``start_server``) wait the same way; only
what ends the wait early (the process exited, the load was abandoned) and the pause between probes
differ, so those are the caller's.  Each probe is bounded by ``probe_timeout`` and by the deadline: a
llama-server busy loading may hold the connection open without answering.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Optional

import anyio

HEALTHY = "healthy"
TIMED_OUT = "timed_out"


async def wait_healthy(http: Any, deadline: float, probe_timeout: float, stop: Callable[[], Optional[Any]],
                       pause: Callable[[float], Awaitable[Any]], first_pause: float, max_pause: float) -> Any:
    """``HEALTHY`` once /health answers 200; ``TIMED_OUT`` once ``deadline`` (monotonic) has passed; or
    whatever ``stop()`` returned when it returned something other than None (asked before every probe).
    ``pause(seconds)`` runs between probes, starting at ``first_pause`` and growing by half up to
    ``max_pause``."""
    delay = first_pause
    while True:
        why = stop()
        if why is not None:
            return why
        left = deadline - time.monotonic()
        if left <= 0:
            return TIMED_OUT
        with anyio.move_on_after(min(probe_timeout, max(0.01, left))):
            try:
                if await http.health() == 200:
                    return HEALTHY
            except Exception:      # not listening yet, or a broken answer: ask again
                pass
        await pause(delay)
        delay = min(delay * 1.5, max_pause)
