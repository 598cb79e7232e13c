"""How the benchmark talks to what it measures: oracd through the shared clients, llama-server over HTTP.

Why here and not in each phase: every phase needs the same deadlines (bench.harness.Timeouts) on the
same clients, and the wire is written in one place only (a second copy drifts): JSON-RPC goes through
``oracd_client.transport.OracdClient`` (asyncio) or ``oracd_protocol.blocking.BlockingClient``
(the blocking RPC floor).  Only the direct llama-server baseline speaks HTTP, with aiohttp.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import aiohttp
from oracd_client.transport import OracdClient
from oracd_protocol.blocking import BlockingClient
from oracd_protocol.errors import ConnectionLost, from_wire
from oracd_protocol.framing import encode

from .harness import Timeouts


class Rpc:
    """The client library's asyncio client (one connection of its own) with the bench's deadlines.

    ``call(..., timeout=x)`` is for methods with a timeout of their own (generate, load_model...): ``x``
    is sent to oracd and the client waits ``x`` plus a grace, so oracd's error arrives first.  Without
    it, a cheap call's deadline.  A late answer is matched by id and dropped, never read as the next
    call's, so a timed-out call leaves the connection usable.
    """

    def __init__(self, path: Path, t: Timeouts):
        self.t = t
        self.client = OracdClient(str(path), connect_timeout=t.call)

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None,
                   timeout: Optional[float] = None) -> Any:
        if timeout is None:
            return await self.client.call(method, params, timeout=self.t.call)
        return await self.client.call(method, {**(params or {}), "timeout": timeout}, timeout=timeout + self.t.grace)

    async def close(self) -> None:
        await self.client.aclose()


class FloorConn:
    """Round trips on the protocol's blocking client: the daemon's own latency, as little client as possible.

    ``kernel_timeouts=True``: the deadline is SO_RCVTIMEO/SO_SNDTIMEO, so no poll() per send and
    receive.  The clock covers ``send_raw`` of a line encoded beforehand and ``recv_line`` only:
    building the request and parsing the answer (a status answer is a few kB of JSON) happen outside
    it, then the answer is checked (its id; an error is raised as its class, ``from_wire``).
    Reconnects after a failed call, so a late answer is never taken for the next one.
    """

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout
        self.c: Optional[BlockingClient] = None
        self.n = 0

    def round_trip_ms(self, method: str) -> float:
        if self.c is None:
            self.c = BlockingClient(self.path, self.timeout, kernel_timeouts=True)
        self.n += 1
        line = encode({"jsonrpc": "2.0", "id": self.n, "method": method})
        try:
            t0 = time.perf_counter()
            self.c.send_raw(line)
            answer = self.c.recv_line()
            ms = (time.perf_counter() - t0) * 1000
        except BaseException:
            self.close()
            raise
        resp = json.loads(answer)
        if resp.get("id") != self.n:
            self.close()
            raise ConnectionLost(f"{method}: answer to id {resp.get('id')!r}, expected {self.n}", str(self.path))
        if "error" in resp:
            raise from_wire(resp["error"])
        return ms

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None


def direct_session(endpoint: str, t: Timeouts) -> aiohttp.ClientSession:
    """An HTTP session to llama-server itself (status.child.endpoint: ``unix:<path>`` or ``host:port``)."""
    timeout = aiohttp.ClientTimeout(total=t.generate)
    if endpoint.startswith("unix:"):
        return aiohttp.ClientSession("http://localhost", connector=aiohttp.UnixConnector(path=endpoint[5:]),
                                     timeout=timeout)
    return aiohttp.ClientSession(f"http://{endpoint}", timeout=timeout)


async def direct_generate(session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> Dict[str, Any]:
    """The same request as oracd's generate, sent to llama-server's chat endpoint directly."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "top_p": 0.7, "top_k": 40}
    try:
        async with session.post("/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"llama-server answered HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()
    except asyncio.TimeoutError:          # aiohttp's says nothing
        raise TimeoutError(f"direct HTTP: no answer within {session.timeout.total:g} s") from None
