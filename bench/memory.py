"""The memory phase: oracd's RSS idle and after many cheap requests (does it grow?).

Why its own phase: a daemon that runs for months must not leak per request; the figure is RSS
from psutil before and after ``requests`` status/list_models calls on one connection.
"""
from __future__ import annotations

from typing import Any, Dict

import psutil

from .clients import Rpc
from .daemons import Oracd
from .harness import Phase, Timeouts


async def bench_memory(ph: Phase, o: Oracd, t: Timeouts, requests: int) -> Dict[str, Any]:
    proc = psutil.Process(o.proc.pid)
    idle = proc.memory_info().rss
    rpc = Rpc(o.socket, t)
    try:
        for i in range(requests):
            method = "list_models" if i % 10 == 0 else "status"
            await ph.attempt_async("requests", lambda: rpc.call(method))
            ph.advance()
    finally:
        await rpc.close()
    after = proc.memory_info().rss
    return {"oracd RSS idle MB": round(idle / 2**20, 1), f"oracd RSS after {requests} requests MB":
            round(after / 2**20, 1), "growth MB": round((after - idle) / 2**20, 1)}
