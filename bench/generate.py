"""The warm generate phase: one request at a time through direct HTTP, raw JSON-RPC, the compat client and
the old per-call CLI, interleaved run by run, on one daemon.

Why: it is the headline of the benchmark, oracd's overhead over llama-server itself and its speed-up
over the per-call process ORAC used before.  "raw JSON-RPC" is the client library's asyncio client
(``oracd_client.transport.OracdClient``) calling ``generate``; "compat client" is ORAC's old interface
on top of the same client.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import aiohttp

from .clients import Rpc, direct_generate, direct_session
from .daemons import BIN, SMOL, Oracd
from .figures import OLD, comparisons
from .harness import Phase, Timeouts, summary
from .old_cli import OldCliClient

PROMPT = "Turn on the kitchen lights."
MAX_TOKENS = 16


async def bench_generate(ph: Phase, o: Oracd, t: Timeouts, runs: int, cli_runs: int) -> Dict[str, Any]:
    from oracd_client.compat import LlamaCppClient
    os.environ["ORACD_SOCKET"] = str(o.socket)
    client = LlamaCppClient()
    rpc = Rpc(o.socket, t)
    old = OldCliClient(BIN / "llama-completion", o.models_dir)
    params = {"model": SMOL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    session: Optional[aiohttp.ClientSession] = None
    try:
        session = direct_session((await rpc.call("status"))["child"]["endpoint"], t)
        variants = {
            "compat client": lambda: client.generate(SMOL, PROMPT, temperature=0, max_tokens=MAX_TOKENS,
                                                     timeout=t.generate),
            "raw JSON-RPC": lambda: rpc.call("generate", params, timeout=t.generate),
            "direct HTTP": lambda: direct_generate(session, PROMPT, MAX_TOKENS),
        }
        for name, fn in variants.items():      # warm-up (unmeasured, but a failure counts): first request fills caches
            await ph.attempt_async(name, fn)
        times: Dict[str, List[float]] = {k: [] for k in (*variants, OLD)}
        every, cli_done = max(1, runs // max(cli_runs, 1)), 0
        for i in range(runs):
            order = list(variants.items())
            if i % 2:
                order.reverse()
            for name, fn in order:
                await ph.sample(times, name, fn)
            if i % every == 0 and cli_done < cli_runs:
                cli_done += 1
                await ph.sample(times, OLD, lambda: old.generate(SMOL, PROMPT, temperature=0, max_tokens=MAX_TOKENS,
                                                                  timeout=t.generate))
            ph.advance()
    finally:
        if session is not None:
            await session.close()
        await rpc.close()
        await client.aclose()
    res: Dict[str, Any] = {k: summary(v, ph.failures.get(k)) for k, v in times.items()}
    res["_raw"] = times
    return {**res, **comparisons(res)}

