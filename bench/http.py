"""The HTTP phase: the same ``openai`` SDK calls against oracd's /v1 and llama-server's own /v1, interleaved.

Why: the HTTP front door must cost next to nothing over asking llama-server directly.  Both are reached
over a Unix socket (oracd's ``[http] listen = ["unix:..."]``, llama-server's own socket), so the transport
is the same and only oracd's work shows: non-streamed latency (p50 added), the first streamed token,
and 8 concurrent clients' throughput on an 8-slot server.  A third side, ``bench/floor_proxy.py`` (the
least one Python hop can do), is sampled the same way: the floor any proxy in front of llama-server
pays on this box, so what oracd adds beyond it is its own.  The Ollama path (the ``ollama`` library on
oracd's /api/chat) is measured against the OpenAI path on the same oracd.

``python -m bench.http`` runs this phase alone; ``python -m bench`` runs it with the others.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .daemons import SMOL, started
from .harness import FAILED, Phase, Progress, Timeouts, div, sub, summary

PROMPT = "Turn on the kitchen lights."
TOKENS = 16
CLIENTS = 8
MESSAGES = [{"role": "user", "content": PROMPT}]


def http_rounds(runs: int, rounds: int) -> int:
    """The phase's progress total: ``runs`` interleaved samples, then ``rounds`` x 2 throughput rounds."""
    return runs + 2 * rounds


def figures(times: Dict[str, List[float]], rates: Dict[str, List[float]], failures: Dict[str, Any]) -> Dict[str, Any]:
    """The phase's figures from its samples (ms) and throughput rates (tokens/s): pure, unit-tested."""
    import statistics
    res: Dict[str, Any] = {k: summary(v, failures.get(k)) for k, v in times.items()}
    p50 = {k: res[k]["p50"] for k in times}
    res["added_ms_p50"] = {
        "non-streamed": sub(p50.get("oracd /v1"), p50.get("direct /v1")),
        "first token": sub(p50.get("oracd /v1 first token"), p50.get("direct /v1 first token")),
        "ollama vs openai path": sub(p50.get("oracd /api/chat"), p50.get("oracd /v1")),
    }
    if times.get("floor /v1 first token"):
        res["floor_added_ms_p50"] = {
            "non-streamed": sub(p50.get("floor /v1"), p50.get("direct /v1")),
            "first token": sub(p50.get("floor /v1 first token"), p50.get("direct /v1 first token"))}
    med = {k: (statistics.median(v) if v else None) for k, v in rates.items()}
    res[f"throughput tokens/s ({CLIENTS} clients)"] = {k: None if v is None else round(v, 1) for k, v in med.items()}
    res["throughput_ratio"] = div(med.get("oracd"), med.get("direct"), 3)
    return res


def targets(res: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals for this phase, met or missed."""
    from .figures import target
    added = res.get("added_ms_p50") or {}
    return {
        "HTTP non-streamed added p50 <= max(1 ms, 2% of direct)": target(
            lambda: (added["non-streamed"], res["direct /v1"]["p50"]),
            lambda v: v[0] <= max(1.0, 0.02 * v[1]), lambda v: f"{v[0]} ms"),
        "HTTP first streamed token added p50 <= 1 ms": target(
            lambda: added["first token"], lambda v: v <= 1.0, lambda v: f"{v} ms"),
        f">= 95% of direct throughput at {CLIENTS} HTTP clients": target(
            lambda: res["throughput_ratio"], lambda v: v >= 0.95, lambda v: f"{v * 100:.1f}%"),
    }


def _openai(uds: str, base: str, t: Timeouts) -> Any:
    import httpx
    import openai
    return openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds),
                                                            timeout=t.generate))


@contextmanager
def floor_proxy(upstream: str) -> Iterator[str]:
    """``bench/floor_proxy.py`` in front of ``upstream`` (a Unix socket path): its own socket's path."""
    sock = f"/tmp/oracd-bench-floor-{os.getpid()}.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor_proxy", sock, upstream],
                            cwd=str(Path(__file__).resolve().parents[1]))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the floor proxy did not start")
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if os.path.exists(sock):
            os.unlink(sock)


async def bench_http(ph: Phase, t: Timeouts, runs: int, rounds: int, per_client: int) -> Dict[str, Any]:
    sock = f"/tmp/oracd-bench-http-{os.getpid()}.sock"
    with started(t, llama={"parallel": CLIENTS, "ctx_size": 512 * CLIENTS, "threads": 0},
                 http={"listen": [f"unix:{sock}"]}) as o:
        endpoint = o.call("status")["child"]["endpoint"] or ""
        if not endpoint.startswith("unix:"):
            raise RuntimeError(f"llama-server is not on a Unix socket ({endpoint}); the phase compares like with like")
        with floor_proxy(endpoint[5:]) as floor:
            return await _sample(ph, t, sock, endpoint, floor, runs, rounds, per_client)


async def _sample(ph: Phase, t: Timeouts, sock: str, endpoint: str, floor: str, runs: int, rounds: int,
                  per_client: int) -> Dict[str, Any]:
    """The interleaved samples (oracd, direct, the floor proxy), then the throughput rounds."""
    import httpx
    import ollama
    sides = {"oracd": _openai(sock, "http://oracd/v1", t), "direct": _openai(endpoint[5:], "http://llama/v1", t),
             "floor": _openai(floor, "http://floor/v1", t)}
    olla = ollama.AsyncClient(host="http://oracd", transport=httpx.AsyncHTTPTransport(uds=sock),
                              timeout=t.generate)
    kw = dict(model=SMOL, messages=MESSAGES, max_tokens=TOKENS, temperature=0)

    async def whole(side: str) -> None:
        await sides[side].chat.completions.create(**kw)

    async def first_token(side: str, into: List[float]) -> None:
        t0 = time.perf_counter()
        first = None
        stream = await sides[side].chat.completions.create(stream=True, **kw)
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - t0) * 1000
        if first is None:
            raise RuntimeError("no text streamed")
        into.append(first)

    async def ollama_chat() -> None:
        await olla.chat(model=SMOL, messages=MESSAGES, stream=False,
                        options={"num_predict": TOKENS, "temperature": 0})

    times: Dict[str, List[float]] = {k: [] for k in ("direct /v1", "oracd /v1", "direct /v1 first token",
                                                     "oracd /v1 first token", "oracd /api/chat", "floor /v1",
                                                     "floor /v1 first token")}
    steps = [("direct /v1", lambda: whole("direct")), ("oracd /v1", lambda: whole("oracd")),
             ("oracd /api/chat", ollama_chat), ("floor /v1", lambda: whole("floor"))]
    for name, fn in steps:                          # warm-up, unmeasured
        await ph.attempt_async(name, fn)
    for i in range(runs):
        order = steps if i % 2 == 0 else steps[::-1]
        for name, fn in order:
            await ph.sample(times, name, fn)
        for side in (("direct", "oracd", "floor") if i % 2 == 0 else ("floor", "oracd", "direct")):
            key = f"{side} /v1 first token"
            await ph.attempt_async(key, lambda s=side, k=key: first_token(s, times[k]))
        ph.advance()
    rates: Dict[str, List[float]] = {"oracd": [], "direct": []}
    for r in range(rounds):              # throughput: oracd and direct only
        for side in (("oracd", "direct") if r % 2 == 0 else ("direct", "oracd")):
            rate = await _round(ph, sides[side], side, per_client)
            if rate is not None:
                rates[side].append(rate)
            ph.advance()
    for c in sides.values():
        await c.close()
    return {**figures(times, rates, ph.failures.as_dict()), "_raw": times}


async def _round(ph: Phase, client: Any, side: str, per_client: int) -> Optional[float]:
    """CLIENTS clients at once, each ``per_client`` requests: completion tokens per second (None: a failure)."""
    async def one(i: int) -> int:
        n = 0
        for _ in range(per_client):
            r = await client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": f"Write one sentence about room {i}."}],
                max_tokens=32, temperature=0)
            n += r.usage.completion_tokens
        return n

    t0 = time.perf_counter()
    done = await ph.attempt_async(f"{side} throughput", lambda: asyncio.gather(*(one(i) for i in range(CLIENTS))))
    if done is FAILED:
        return None
    return sum(done) / (time.perf_counter() - t0)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=2)
    args = ap.parse_args(argv)
    t = Timeouts()
    progress = Progress()
    ph = progress.phase("HTTP APIs", http_rounds(args.runs, args.rounds), "run",
                        "openai SDK on oracd /v1 vs llama-server /v1, interleaved; Ollama path")
    res = asyncio.run(ph.run(lambda p: bench_http(p, t, args.runs, args.rounds, args.per_client)))
    res.pop("_raw", None)
    if "failed" not in res:
        res["targets"] = targets(res)
    print(json.dumps(res, indent=2))
    return 1 if "failed" in res else 0


if __name__ == "__main__":
    sys.exit(main())
