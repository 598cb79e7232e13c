"""The concurrency phase: aggregate completion tokens/s with N clients on N llama-server slots, oracd vs direct.

Why: oracd must not cost throughput when several clients share the model.  Each level gets its own
daemon (``parallel = N``); oracd and direct rounds alternate, each side going first as often.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Dict, List, Optional

import aiohttp

from .clients import Rpc, direct_generate, direct_session
from .daemons import SMOL, started
from .harness import FAILED, Phase, Timeouts, div

TOKENS = 32


def concurrency_rounds(levels: List[int], rounds: int) -> int:
    """The phase's progress total: two unmeasured and 2 x ``rounds`` measured rounds per level."""
    return len(levels) * (2 + 2 * rounds)


def median_rate(rates: List[float]) -> Optional[float]:
    return statistics.median(rates) if rates else None


async def _concurrency_level(ph: Phase, t: Timeouts, n: int, rounds: int, per_client: int) -> Dict[str, Any]:
    """One level: n clients on n slots, oracd and direct rounds alternating; rounds with a failed
    request are left out of the rates (their time includes a wait for nothing)."""
    keys = {"oracd": f"level {n}, oracd", "direct": f"level {n}, direct"}
    rates: Dict[str, List[float]] = {"oracd": [], "direct": []}
    with started(t, llama={"parallel": n, "ctx_size": 1024 * n, "threads": 0}) as o:
        conns = [Rpc(o.socket, t) for _ in range(n)]
        prompts = [f"Write one sentence about room number {i}." for i in range(n)]
        session: Optional[aiohttp.ClientSession] = None
        send = {
            "oracd": lambda i: conns[i].call("generate", {"model": SMOL, "prompt": prompts[i], "max_tokens": TOKENS,
                                                          "temperature": 0}, timeout=t.generate),
            "direct": lambda i: direct_generate(session, prompts[i], TOKENS),
        }

        async def client(name: str, i: int) -> int:
            toks = 0
            for _ in range(per_client):
                r = await ph.attempt_async(keys[name], lambda: send[name](i))
                toks += 0 if r is FAILED else r["usage"]["completion_tokens"]
            return toks

        async def one_round(name: str) -> Optional[float]:
            before = ph.failures.count(keys[name])
            t0 = time.perf_counter()
            toks = sum(await asyncio.gather(*(client(name, i) for i in range(n))))
            rate = toks / (time.perf_counter() - t0)
            ph.advance()
            return rate if ph.failures.count(keys[name]) == before else None

        try:
            session = direct_session((await conns[0].call("status"))["child"]["endpoint"], t)
            for name in ("oracd", "direct"):     # unmeasured: fill each slot's prompt cache for both alike
                await one_round(name)
            for rnd in range(rounds):
                for name in (("oracd", "direct") if rnd % 2 == 0 else ("direct", "oracd")):
                    rate = await one_round(name)
                    if rate is not None:
                        rates[name].append(rate)
        finally:
            if session is not None:
                await session.close()
            for c in conns:
                await c.close()
    o_rate, d_rate = median_rate(rates["oracd"]), median_rate(rates["direct"])
    return {"oracd_tok_s": None if o_rate is None else round(o_rate, 1),
            "direct_tok_s": None if d_rate is None else round(d_rate, 1), "ratio": div(o_rate, d_rate, 4),
            "failures": {k: ph.failures.get(key) for k, key in keys.items()}}


async def bench_concurrency(ph: Phase, t: Timeouts, levels: List[int], rounds: int,
                            per_client: int) -> Dict[str, Any]:
    """A level whose daemon will not start is a failure of that level; the other levels still run."""
    out: Dict[str, Any] = {}
    for n in levels:
        r = await ph.attempt_async(f"level {n}", lambda: _concurrency_level(ph, t, n, rounds, per_client))
        out[str(n)] = {"failed": True} if r is FAILED else r
    return out
