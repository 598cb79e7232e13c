"""The RPC floor: how fast oracd answers cheap calls (status, list_models), with no model work in the way.

Why: it is oracd's own cost per request.  Measured three ways: a blocking connection (what socat, a
shell or the sync client does; the protocol's ``BlockingClient`` with kernel timeouts, see
``bench.clients.FloorConn``), the client library's asyncio client (its own cost shows on its rows),
and throughput with 1 and 8 asyncio connections.  Also the blocking floor of an oracd on the stdlib
event loop instead of uvloop, for the record.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, List

from .clients import FloorConn, Rpc
from .daemons import Oracd, started
from .figures import THROUGHPUT_CONNS
from .harness import FAILED, Phase, Timeouts, summary

WARM_CALLS = 50       # unmeasured calls first: the path (and the daemon's caches) warmed up


def floor_calls(calls: int) -> int:
    """The RPC floor phase's progress total for ``calls`` per measurement."""
    return 4 * calls + sum(calls // c * c for c in THROUGHPUT_CONNS)


def blocking_latencies(ph: Phase, key: str, path: Path, method: str, calls: int, t: Timeouts) -> List[float]:
    conn = FloorConn(path, t.call)
    ts: List[float] = []
    try:
        for i in range(calls + WARM_CALLS):
            ms = ph.attempt(key, conn.round_trip_ms, method)
            if i >= WARM_CALLS:
                ph.advance()
                if ms is not FAILED:
                    ts.append(ms)
    finally:
        conn.close()
    return ts


async def asyncio_latencies(ph: Phase, key: str, rpc: Rpc, method: str, calls: int) -> List[float]:
    await ph.attempt_async(key, lambda: rpc.call(method))          # warm-up
    ts: Dict[str, List[float]] = {key: []}
    for _ in range(calls):
        await ph.sample(ts, key, lambda: rpc.call(method))
        ph.advance()
    return ts[key]


async def throughput(ph: Phase, key: str, path: Path, conns: int, calls: int, t: Timeouts) -> float:
    """Successful status calls per second over ``conns`` connections, each one call at a time."""
    clients = [Rpc(path, t) for _ in range(conns)]
    per = calls // conns

    async def loop(c: Rpc) -> int:
        ok = 0
        for _ in range(per):
            ok += await ph.attempt_async(key, lambda: c.call("status")) is not FAILED
            ph.advance()
        return ok

    try:
        for c in clients:                       # connect before the clock starts (not counted)
            await ph.attempt_async(key + " (connect)", lambda: c.call("status"))
        t0 = time.perf_counter()
        ok = sum(await asyncio.gather(*(loop(c) for c in clients)))
        return round(ok / (time.perf_counter() - t0), 1)
    finally:
        for c in clients:
            await c.close()


async def bench_rpc_floor(ph: Phase, o: Oracd, t: Timeouts, calls: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for method in ("status", "list_models"):
        key = f"{method} latency ms (1 conn)"
        out[key] = summary(blocking_latencies(ph, key, o.socket, method, calls, t), ph.failures.get(key))
    rpc = Rpc(o.socket, t)
    try:
        for method in ("status", "list_models"):
            key = f"{method} latency ms (1 conn, asyncio client)"
            out[key] = summary(await asyncio_latencies(ph, key, rpc, method, calls), ph.failures.get(key))
    finally:
        await rpc.close()
    for conns in THROUGHPUT_CONNS:
        key = f"status throughput req/s ({conns} conn)"
        out[key] = await throughput(ph, key, o.socket, conns, calls, t)
    return out


async def bench_stdlib_loop(ph: Phase, t: Timeouts, calls: int) -> Dict[str, Any]:
    """uvloop's share, for the record: the blocking status floor of an oracd on the stdlib event loop."""
    key = "status latency ms (1 conn, stdlib asyncio loop)"
    with started(t, server={"event_loop": "asyncio"}, llama={"preload": False}) as o:
        return {key: summary(blocking_latencies(ph, key, o.socket, "status", calls, t), ph.failures.get(key))}
