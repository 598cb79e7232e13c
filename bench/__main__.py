"""python -m bench: oracd vs direct llama-server vs the old per-call CLI, interleaved, one run.

Prints a markdown table and writes bench/results/<timestamp>.json and .md.
Variants are interleaved run by run so machine noise hits them alike.  Nothing
here asserts: the figures are for people (README, closing notes).  Progress goes
to stderr; a failed request is recorded (and left out of the figures) rather than
ending the run, and a phase that cannot run at all is recorded as failed while the
others still run (exit status 1 then, after the results are written).
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import BIN, SMOL, Oracd, toml_value  # noqa: E402  (the same real-process launcher the tests use)

from .harness import (FAILED, Phase, Progress, Timeouts, describe, failures_note, first_line,  # noqa: E402
                      summary, within)
from .old_cli import OldCliClient  # noqa: E402

PROMPT = "Turn on the kitchen lights."
MAX_TOKENS = 16
OLD = "old per-call CLI"
GENERATE_VARIANTS = ("direct HTTP", "raw JSON-RPC", "compat client", OLD)
THROUGHPUT_CONNS = (1, 8)
STDLIB_PHASE = "stdlib-loop RPC floor"
QUICK = {"runs": 4, "cli_runs": 2, "rpc_calls": 200, "memory_requests": 500, "cold_runs": 1, "levels": [1, 2],
         "conc_rounds": 2, "conc_per_client": 1, "warmup_loads": 1}


def _div(a: Optional[float], b: Optional[float], nd: int) -> Optional[float]:
    """a / b rounded, or None when either is missing (a variant with no successful request)."""
    return None if a is None or b is None or b == 0 else round(a / b, nd)


def _sub(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(a - b, 3)


class RPCFailure(RuntimeError):
    """oracd answered with a JSON-RPC error (the connection is still good)."""


class RawRPC:
    """A minimal persistent JSON-RPC connection (what a socat-like client does, kept open).

    Every call has a deadline.  After a timeout or a broken connection the next call
    reconnects, so a late answer is never read as the next request's.
    """

    def __init__(self, path: Path, t: Timeouts):
        self.path, self.t = path, t
        self.n = 0
        self.w: Optional[asyncio.StreamWriter] = None

    async def open(self) -> None:
        self.r, self.w = await within(self.t.call, asyncio.open_unix_connection(str(self.path), limit=1 << 24),
                                      f"connect to {self.path}")

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None,
                   timeout: Optional[float] = None) -> Any:
        """``timeout``: the method's own timeout, sent to oracd (generate, load_model...); we wait that plus
        a grace so oracd's error arrives first.  Without it, a cheap call's deadline."""
        if timeout is not None:
            params = {**(params or {}), "timeout": timeout}
        if self.w is None:
            await self.open()
        try:
            return await within(self.t.call if timeout is None else timeout + self.t.grace,
                                self._call(method, params), method)
        except RPCFailure:
            raise
        except BaseException:
            self._drop()
            raise

    async def _call(self, method: str, params: Optional[Dict[str, Any]]) -> Any:
        self.n += 1
        msg = {"jsonrpc": "2.0", "id": self.n, "method": method}
        if params:
            msg["params"] = params
        self.w.write(json.dumps(msg).encode() + b"\n")
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError(f"{method}: connection closed by oracd")
            resp = json.loads(line)
            if resp.get("id") == self.n:                       # not a progress notification (load.progress)
                break
        if "error" in resp:
            raise RPCFailure(f"{resp['error'].get('code')}: {resp['error'].get('message')}")
        return resp["result"]

    def _drop(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None

    async def close(self) -> None:
        if self.w is not None:
            self.w.close()
            try:
                await self.w.wait_closed()
            except OSError:
                pass
            self.w = None


def direct_session(endpoint: str, t: Timeouts) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=t.generate)
    if endpoint.startswith("unix:"):
        return aiohttp.ClientSession("http://localhost", connector=aiohttp.UnixConnector(path=endpoint[5:]),
                                     timeout=timeout)
    return aiohttp.ClientSession(f"http://{endpoint}", timeout=timeout)


async def direct_generate(session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> Dict[str, Any]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "top_p": 0.7, "top_k": 40}
    try:
        async with session.post("/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"llama-server answered HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()
    except asyncio.TimeoutError:          # aiohttp's says nothing
        raise TimeoutError(f"direct HTTP: no answer within {session.timeout.total:g} s") from None


@contextmanager
def started(t: Timeouts, **kw: Any) -> Iterator[Oracd]:
    """An oracd started with the bench's start timeout, stopped and removed even if it would not start."""
    o = Oracd(**kw)
    try:
        o.start(timeout=t.start)
        yield o
    finally:
        o.stop(timeout=t.stop)
        o.cleanup()


class SharedOracd:
    """The daemon that the generate, RPC floor and memory phases share, started by the first of them.

    If it will not start, each of those phases fails with that reason and the others still run.
    """

    def __init__(self, t: Timeouts, **kw: Any):
        self.t, self.kw = t, kw
        self.o: Optional[Oracd] = None
        self.error: Optional[str] = None

    def get(self) -> Oracd:
        if self.o is None and self.error is None:
            o = Oracd(**self.kw)
            try:
                o.start(timeout=self.t.start)
                self.o = o
            except Exception as exc:
                o.stop(timeout=self.t.stop)
                o.cleanup()
                self.error = describe(exc, limit=2000)
        if self.error is not None:
            raise RuntimeError(f"oracd would not start: {self.error}")
        return self.o

    def close(self) -> None:
        if self.o is not None:
            self.o.stop(timeout=self.t.stop)
            self.o.cleanup()


async def bench_generate(ph: Phase, o: Oracd, t: Timeouts, runs: int, cli_runs: int) -> Dict[str, Any]:
    from oracd_client.compat import LlamaCppClient
    os.environ["ORACD_SOCKET"] = str(o.socket)
    client = LlamaCppClient()
    raw = RawRPC(o.socket, t)
    old = OldCliClient(BIN / "llama-completion", o.models_dir)
    params = {"model": SMOL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    session: Optional[aiohttp.ClientSession] = None
    try:
        session = direct_session((await raw.call("status"))["child"]["endpoint"], t)
        variants = {
            "compat client": lambda: client.generate(SMOL, PROMPT, temperature=0, max_tokens=MAX_TOKENS,
                                                     timeout=t.generate),
            "raw JSON-RPC": lambda: raw.call("generate", params, timeout=t.generate),
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
        await raw.close()
        await client.aclose()
    res: Dict[str, Any] = {k: summary(v, ph.failures.get(k)) for k, v in times.items()}
    res["_raw"] = times
    d, c, r, cli = (res[k]["p50"] for k in GENERATE_VARIANTS)
    res["overhead_ms_p50"] = {"compat client": _sub(c, d), "raw JSON-RPC": _sub(r, d)}
    res["overhead_ratio_p50"] = {"compat client": _div(c, d, 4), "raw JSON-RPC": _div(r, d, 4)}
    res["speedup_vs_old_cli"] = {"direct HTTP": _div(cli, d, 2), "compat client": _div(cli, c, 2),
                                 "raw JSON-RPC": _div(cli, r, 2),
                                 "share_of_direct_speedup": None if cli is None else _div(d, c, 4)}  # (cli/c)/(cli/d)
    return res


class BlockingRPC:
    """Round trips over a plain blocking socket (what socat, a shell or the sync client does): the
    daemon's own latency, with as little client in the way as possible.

    The deadline is the kernel's (SO_RCVTIMEO/SO_SNDTIMEO): a Python socket timeout would add a poll()
    to every send and receive, i.e. to the very floor being measured.  Reconnects after a failed call.
    """

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout
        self.s: Optional[socket.socket] = None

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        tv = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        try:
            s.connect(str(self.path))
        except BaseException:
            s.close()
            raise
        self.s, self.rf = s, s.makefile("rb")

    def round_trip_ms(self, method: str, rid: int) -> float:
        if self.s is None:
            self._connect()
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method}).encode() + b"\n"
        try:
            t0 = time.perf_counter()
            self.s.sendall(line)
            resp = self.rf.readline()
            ms = (time.perf_counter() - t0) * 1000
        except BaseException:
            self.close()
            raise
        if not resp:
            self.close()
            raise TimeoutError(f"{method}: no answer within {self.timeout:g} s (or connection closed)")
        if b'"result"' not in resp:
            raise RPCFailure(resp[:300].decode(errors="replace"))
        return ms

    def close(self) -> None:
        if self.s is not None:
            self.rf.close()
            self.s.close()
            self.s = None


def blocking_latencies(ph: Phase, key: str, path: Path, method: str, calls: int, t: Timeouts) -> List[float]:
    conn = BlockingRPC(path, t.call)
    ts: List[float] = []
    try:
        for i in range(calls + 50):              # the first 50 warm the path up
            ms = ph.attempt(key, conn.round_trip_ms, method, i)
            if i >= 50:
                ph.advance()
                if ms is not FAILED:
                    ts.append(ms)
    finally:
        conn.close()
    return ts


async def bench_rpc_floor(ph: Phase, o: Oracd, t: Timeouts, calls: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for method in ("status", "list_models"):
        key = f"{method} latency ms (1 conn)"
        out[key] = summary(blocking_latencies(ph, key, o.socket, method, calls, t), ph.failures.get(key))
    raw = RawRPC(o.socket, t)
    try:
        for method in ("status", "list_models"):
            key = f"{method} latency ms (1 conn, asyncio client)"
            await ph.attempt_async(key, lambda: raw.call(method))          # warm-up
            ts: Dict[str, List[float]] = {key: []}
            for _ in range(calls):
                await ph.sample(ts, key, lambda: raw.call(method))
                ph.advance()
            out[key] = summary(ts[key], ph.failures.get(key))
    finally:
        await raw.close()
    for conns in THROUGHPUT_CONNS:
        key = f"status throughput req/s ({conns} conn)"
        clients = [RawRPC(o.socket, t) for _ in range(conns)]
        per = calls // conns

        async def loop(c: RawRPC) -> int:
            ok = 0
            for _ in range(per):
                ok += await ph.attempt_async(key, lambda: c.call("status")) is not FAILED
                ph.advance()
            return ok

        try:
            for c in clients:
                await c.open()
            t0 = time.perf_counter()
            ok = sum(await asyncio.gather(*(loop(c) for c in clients)))
            out[key] = round(ok / (time.perf_counter() - t0), 1)      # successful requests only
        finally:
            for c in clients:
                await c.close()
    return out


async def bench_stdlib_loop(ph: Phase, t: Timeouts, calls: int) -> Dict[str, Any]:
    """uvloop's share, for the record: the blocking status floor of an oracd on the stdlib event loop."""
    key = "status latency ms (1 conn, stdlib asyncio loop)"
    with started(t, server={"event_loop": "asyncio"}, llama={"preload": False}) as o:
        return {key: summary(blocking_latencies(ph, key, o.socket, "status", calls, t), ph.failures.get(key))}


async def bench_memory(ph: Phase, o: Oracd, t: Timeouts, requests: int) -> Dict[str, Any]:
    proc = psutil.Process(o.proc.pid)
    idle = proc.memory_info().rss
    raw = RawRPC(o.socket, t)
    try:
        for i in range(requests):
            method = "list_models" if i % 10 == 0 else "status"
            await ph.attempt_async("requests", lambda: raw.call(method))
            ph.advance()
    finally:
        await raw.close()
    after = proc.memory_info().rss
    return {"oracd RSS idle MB": round(idle / 2**20, 1), f"oracd RSS after {requests} requests MB":
            round(after / 2**20, 1), "growth MB": round((after - idle) / 2**20, 1)}


async def _concurrency_level(ph: Phase, t: Timeouts, n: int, rounds: int, per_client: int) -> Dict[str, Any]:
    """One level: n clients on n slots, oracd and direct rounds alternating; rounds with a failed
    request are left out of the rates (their time includes a wait for nothing)."""
    keys = {"oracd": f"level {n}, oracd", "direct": f"level {n}, direct"}
    rates: Dict[str, List[float]] = {"oracd": [], "direct": []}
    with started(t, llama={"parallel": n, "ctx_size": 1024 * n, "threads": 0}) as o:
        conns = [RawRPC(o.socket, t) for _ in range(n)]
        prompts = [f"Write one sentence about room number {i}." for i in range(n)]
        session: Optional[aiohttp.ClientSession] = None
        send = {
            "oracd": lambda i: conns[i].call("generate", {"model": SMOL, "prompt": prompts[i], "max_tokens": 32,
                                                          "temperature": 0}, timeout=t.generate),
            "direct": lambda i: direct_generate(session, prompts[i], 32),
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
    o_rate = statistics.median(rates["oracd"]) if rates["oracd"] else None
    d_rate = statistics.median(rates["direct"]) if rates["direct"] else None
    return {"oracd_tok_s": None if o_rate is None else round(o_rate, 1),
            "direct_tok_s": None if d_rate is None else round(d_rate, 1), "ratio": _div(o_rate, d_rate, 4),
            "failures": {k: ph.failures.get(key) for k, key in keys.items()}}


async def bench_concurrency(ph: Phase, t: Timeouts, levels: List[int], rounds: int,
                            per_client: int) -> Dict[str, Any]:
    """Aggregate completion tokens/s with N concurrent clients and N llama-server slots: oracd vs direct.
    A level whose daemon will not start is a failure of that level; the other levels still run."""
    out: Dict[str, Any] = {}
    for n in levels:
        r = await ph.attempt_async(f"level {n}", lambda: _concurrency_level(ph, t, n, rounds, per_client))
        out[str(n)] = {"failed": True} if r is FAILED else r
    return out


def _llama_server_ready(sock: Path, timeout: float) -> bool:
    """GET /health over llama-server's Unix socket: True on 200 (503 while it loads, OSError before it listens)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            conn = http.client.HTTPConnection("localhost", timeout=timeout)
            conn.sock = s
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False


def time_oracd_start(t: Timeouts) -> float:
    o = Oracd(llama={"threads": 0})
    try:
        t0 = time.perf_counter()
        o.start(timeout=t.start)
        return (time.perf_counter() - t0) * 1000
    finally:
        o.stop(timeout=t.stop)
        o.cleanup()


def time_llama_server_start(t: Timeouts) -> float:
    d = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    sock = d / "l.sock"
    t0 = time.perf_counter()
    deadline = time.monotonic() + t.start
    p = subprocess.Popen([str(BIN / "llama-server"), "-m", str(REPO / "models" / SMOL), "--host", str(sock),
                          "-c", "1024", "-np", "2", "--no-webui"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        while not _llama_server_ready(sock, t.call):
            if p.poll() is not None:
                raise RuntimeError(f"llama-server exited with {p.returncode} before /health said 200")
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server: no /health 200 within {t.start:g} s")
            time.sleep(0.01)
        return (time.perf_counter() - t0) * 1000
    finally:
        p.terminate()
        try:
            p.wait(t.stop)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def bench_cold_start(ph: Phase, t: Timeouts, runs: int) -> Dict[str, Any]:
    timers = {"oracd start to READY (preload) ms": time_oracd_start,
              "llama-server alone to /health 200 ms": time_llama_server_start}
    times: Dict[str, List[float]] = {k: [] for k in timers}
    for _ in range(runs):
        for key, fn in timers.items():
            ms = ph.attempt(key, fn, t)
            if ms is not FAILED:
                times[key].append(ms)
        ph.advance()
    return {k: summary(v, ph.failures.get(k)) for k, v in times.items()}


# A long few-shot system prompt (~600 SmolLM2 tokens) for the warm-up measurement: the kind of
# prompt a small model needs to parse commands, and the kind whose prefill warm-up saves.
FEWSHOT_EXAMPLES = [
    ("switch on the hallway lights", "lights", "on", "hallway", None),
    ("dim the living room lights to 40 percent", "lights", "set", "living room", 40),
    ("make the kitchen lights red", "lights", "set", "kitchen", "red"),
    ("set the living room heating to 22 degrees", "heating", "set", "living room", 22),
    ("make it cooler in the kitchen", "heating", "decrease", "kitchen", None),
    ("set the thermostat to 19", "thermostat", "set", None, 19),
    ("open the bedroom blinds", "blinds", "open", "bedroom", None),
    ("turn on the fan in the office", "fan", "on", "office", None),
    ("play some rock music in the living room", "music", "play", "living room", "rock"),
    ("turn the volume down", "volume", "decrease", None, None),
    ("activate the dinner party scene", "scene", "activate", None, "dinner party"),
    ("lock the back door", "door", "lock", "back", None),
    ("what's the weather today", "none", "none", None, None),
]
FEWSHOT_SYSTEM = (
    "You are the command parser of a smart home. You turn one spoken command into one JSON object with "
    "exactly the keys device, action, location and value, and you reply with that object only.\n"
    "device: lights, heating, thermostat, blinds, fan, tv, music, volume, scene, door, an appliance, "
    "or none.\naction: on, off, toggle, set, increase, decrease, open, close, play, pause, stop, "
    "activate, lock, unlock, or none.\nlocation: the room as said, or null. value: a number without "
    "units, a word such as a colour or a scene name, or null.\nQuestions and chit-chat are not commands: "
    "device none, action none, location null, value null.\nExamples:\n"
    + "\n".join(f'"{t}" -> ' + json.dumps({"device": d, "action": a, "location": loc, "value": v})
                for t, d, a, loc, v in FEWSHOT_EXAMPLES))
WARMUP_PROMPTS = ("Turn off the kitchen lights", "Set the bedroom heating to 20 degrees")


async def _warmup_round(ph: Phase, t: Timeouts, name: str, raw: RawRPC, times: Dict[str, List[float]]) -> Optional[int]:
    """Unload, load, first and second generate, status, on one daemon: whatever succeeded is kept; a
    failed step ends the round (its later steps would measure something else).  The prompt's tokens."""
    if await ph.attempt_async(name, lambda: raw.call("unload_model", timeout=t.load)) is FAILED:
        return None
    load = await ph.timed(name, lambda: raw.call("load_model", {"model": SMOL}, timeout=t.load))
    if load is None:
        return None
    times["load_ms"].append(load)
    first_res: Dict[str, Any] = {}

    async def first() -> None:
        first_res.update(await raw.call("generate", {"prompt": WARMUP_PROMPTS[0], "model": SMOL}, timeout=t.generate))

    first_ms = await ph.timed(name, first)
    if first_ms is None:
        return None
    times["first_ms"].append(first_ms)
    times["load_plus_first_ms"].append(load + first_ms)
    await ph.sample(times, name, lambda: raw.call("generate", {"prompt": WARMUP_PROMPTS[1], "model": SMOL},
                                                  timeout=t.generate), into_key="second_ms")
    st = await ph.attempt_async(name, lambda: raw.call("status"))
    if st is not FAILED and st["child"].get("warmup_ms") is not None:
        times["warmup_ms"].append(st["child"]["warmup_ms"])
    return first_res["usage"]["prompt_tokens"]


async def _warmup_rounds(ph: Phase, t: Timeouts, loads: int, common: Dict[str, Any]) -> Any:
    times: Dict[str, Dict[str, List[float]]] = {}
    prompt_tokens = None
    with started(t, llama={**common, "warmup": True}) as on, started(t, llama={**common, "warmup": False}) as off:
        variants = {"warmup on": on, "warmup off": off}
        conns = {name: RawRPC(o.socket, t) for name, o in variants.items()}
        for name in variants:
            times[name] = {"load_ms": [], "first_ms": [], "load_plus_first_ms": [], "second_ms": [],
                           "warmup_ms": []}
        try:
            for i in range(loads):
                order = list(variants) if i % 2 == 0 else list(reversed(variants))
                for name in order:
                    prompt_tokens = await _warmup_round(ph, t, name, conns[name], times[name]) or prompt_tokens
                    ph.advance()
        finally:
            for c in conns.values():
                await c.close()
    return times, prompt_tokens


async def bench_warmup(ph: Phase, t: Timeouts, loads: int) -> Dict[str, Any]:
    """First-request latency after a load, with and without slot warm-up (llama.warmup true/false).

    Two oracd run side by side on the same model and long few-shot profile, one with warm-up, one
    without; each round unloads and loads the model on both (order alternating) and times the load,
    the first generate after it and a second one (the steady state).  The first request pays for
    the whole system prompt unless warm-up already prefilled it into the slot's KV cache.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-w-", dir="/tmp"))
    prof = root / "models.toml"
    prof.write_text(f'[profiles."{SMOL}"]\nsystem_prompt = {toml_value(FEWSHOT_SYSTEM)}\n'
                    'temperature = 0.0\nmax_tokens = 64\njson_schema = "command"\n')
    common = {"threads": 0, "profiles_file": str(prof), "preload": False, "ctx_size": 4096, "parallel": 2}
    try:
        times, prompt_tokens = await _warmup_rounds(ph, t, loads, common)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res: Dict[str, Any] = {"loads": loads, "first_request_prompt_tokens": prompt_tokens, "parallel": 2}
    for name, tm in times.items():
        res[name] = {k: summary(v) for k, v in tm.items() if v}
        res[name]["failures"] = ph.failures.get(name)
        res[name]["_raw"] = tm
    p50 = {(name, k): res[name].get(k, {}).get("p50") for name in times for k in ("first_ms", "load_plus_first_ms")}
    on_first, off_first = p50["warmup on", "first_ms"], p50["warmup off", "first_ms"]
    res["first_request_saving_ms_p50"] = _sub(off_first, on_first)
    res["first_request_speedup_p50"] = _div(off_first, on_first, 2)
    res["load_plus_first_saving_ms_p50"] = _sub(p50["warmup off", "load_plus_first_ms"],
                                                p50["warmup on", "load_plus_first_ms"])
    return res


# ---------------------------------------------------------------------- markdown
def num(v: Any) -> str:
    return "-" if v is None else str(v)


def fmt(v: Any, with_p99: bool = False) -> str:
    if not isinstance(v, dict):
        return num(v)
    return f"p50 {num(v['p50'])} / p99 {num(v['p99'])}" if with_p99 else f"p50 {num(v['p50'])}"


def rows(d: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """A phase result's table rows: everything but its bookkeeping."""
    return [(k, v) for k, v in d.items() if k not in ("failures", "failed", "_raw")]


def not_measured(title: str, r: Dict[str, Any]) -> str:
    return f"**{title}: not measured** ({first_line(r['failed'])})."


def with_notes(lines: List[str], notes: List[str]) -> List[str]:
    """Notes under a table, each its own paragraph (a line right under a table would be read as a row)."""
    for note in notes:
        lines = lines + ([""] if lines else []) + [note]
    return lines


def section(title: str, r: Dict[str, Any], render: Callable[[Dict[str, Any]], List[str]]) -> List[str]:
    """One phase's markdown: its table, or why it could not run; then its failed requests, if any."""
    body = [not_measured(title, r)] if "failed" in r else render(r)
    return with_notes(body, failures_note(r.get("failures", {})))


def warmup_markdown(w: Dict[str, Any]) -> List[str]:
    tokens = w["first_request_prompt_tokens"]
    lines = [f"| warm-up ({w['loads']} loads each, {f'{tokens}-token ' if tokens else ''}few-shot prompt) "
             "| warmup = true p50 ms | warmup = false p50 ms |", "|---|---|---|"]
    labels = {"load_ms": "load_model (includes warm-up)", "first_ms": "first generate after the load",
              "load_plus_first_ms": "load + first generate", "second_ms": "second generate (steady state)"}
    for k, label in labels.items():
        on, off = (num(w[name].get(k, {}).get("p50")) for name in ("warmup on", "warmup off"))
        lines.append(f"| {label} | {on} | {off} |")
    if "warmup_ms" in w["warmup on"]:
        lines.append(f"| status.child.warmup_ms | {w['warmup on']['warmup_ms']['p50']} | - |")
    return lines + ["", f"Warm-up saves {num(w['first_request_saving_ms_p50'])} ms on the first request after a "
                    f"load (x{num(w['first_request_speedup_p50'])}); load + first request: "
                    f"{num(w['load_plus_first_saving_ms_p50'])} ms saved."]


def generate_markdown(g: Dict[str, Any]) -> List[str]:
    lines = ["| warm generate | p50 ms | p95 ms |", "|---|---|---|"]
    for k in GENERATE_VARIANTS:
        lines.append(f"| {k} | {num(g[k]['p50'])} | {num(g[k]['p95'])} |")
    share = g["speedup_vs_old_cli"]["share_of_direct_speedup"]
    return lines + [
        "", f"oracd overhead at p50: raw JSON-RPC {num(g['overhead_ms_p50']['raw JSON-RPC'])} ms "
        f"(x{num(g['overhead_ratio_p50']['raw JSON-RPC'])}), compat client "
        f"{num(g['overhead_ms_p50']['compat client'])} ms (x{num(g['overhead_ratio_p50']['compat client'])}).",
        f"Speed-up over the old per-call CLI: direct x{num(g['speedup_vs_old_cli']['direct HTTP'])}, "
        f"compat client x{num(g['speedup_vs_old_cli']['compat client'])} "
        f"({'-' if share is None else f'{share * 100:.1f}'}% of direct's)."]


def concurrency_markdown(c: Dict[str, Any]) -> List[str]:
    lines = ["| concurrent clients | oracd tok/s | direct tok/s | oracd/direct |", "|---|---|---|---|"]
    for n, v in sorted(rows(c), key=lambda kv: int(kv[0])):
        if v.get("failed"):
            lines.append(f"| {n} | not measured | - | - |")
        else:
            lines.append(f"| {n} | {num(v['oracd_tok_s'])} | {num(v['direct_tok_s'])} | {num(v['ratio'])} |")
    return lines


def table(head: str, parts: Dict[str, Dict[str, Any]], with_p99: bool = False) -> List[str]:
    """One two-column table from several phases' rows; a failed phase becomes a note under it."""
    body: List[str] = []
    notes: List[str] = []
    for title, r in parts.items():
        if "failed" in r:
            notes.append(not_measured(title, r))
        else:
            body += [f"| {k} | {fmt(v, with_p99)} |" for k, v in rows(r)]
        notes += failures_note(r.get("failures", {}))
    return with_notes([head, "|---|---|", *body] if body else [], notes)


def to_markdown(res: Dict[str, Any]) -> str:
    g = res["generate"]
    runs = "-" if "failed" in g else g["direct HTTP"]["n"]
    lines = [f"Benchmark {res['when']} on {res['machine']} (SmolLM2-135M Q4_1, max_tokens {MAX_TOKENS}, "
             f"temperature 0, {runs} interleaved runs)", ""]
    lines += section("warm generate", g, generate_markdown) + [""]
    lines += table("| RPC floor | value |", {"RPC floor": res["rpc"], STDLIB_PHASE: res["rpc_stdlib_loop"]},
                   with_p99=True) + [""]
    lines += section("concurrency", res["concurrency"], concurrency_markdown) + [""]
    lines += table("| cold start / memory | value |", {"cold start": res["cold_start"], "memory": res["memory"]})
    if "warmup" in res:
        lines += [""] + section("warm-up", res["warmup"], warmup_markdown)
    lines += ["", "| target | met | value |", "|---|---|---|"]
    for k, v in res["targets"].items():
        lines.append(f"| {k} | {'yes' if v['met'] else 'NO'} | {v['value']} |")
    failed = [k for k, v in res.get("phases", {}).items() if v.get("failed")]
    if failed:
        lines += ["", f"Phases that could not run: {', '.join(failed)} (why: the JSON's \"phases\")."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- run
async def run_all(args: argparse.Namespace, progress: Progress, t: Timeouts) -> Dict[str, Any]:
    res: Dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": f"{os.cpu_count()} CPU, {round(psutil.virtual_memory().total / 2**30)} GiB",
                           "timeouts_s": asdict(t)}
    calls = args.rpc_calls
    shared = SharedOracd(t, llama={"threads": 0})
    try:
        res["generate"] = await progress.phase(
            "warm generate", args.runs, "run", "direct, raw JSON-RPC, compat, old CLI interleaved").run(
            lambda ph: bench_generate(ph, shared.get(), t, args.runs, args.cli_runs))
        res["rpc"] = await progress.phase(
            "RPC floor", 4 * calls + sum(calls // c * c for c in THROUGHPUT_CONNS), "call",
            "status, list_models; blocking, asyncio; throughput 1 and 8 conns").run(
            lambda ph: bench_rpc_floor(ph, shared.get(), t, calls))
        res["memory"] = await progress.phase("memory", args.memory_requests, "request", "status, list_models").run(
            lambda ph: bench_memory(ph, shared.get(), t, args.memory_requests))
    finally:
        shared.close()
    res["rpc_stdlib_loop"] = await progress.phase(STDLIB_PHASE, calls, "call").run(
        lambda ph: bench_stdlib_loop(ph, t, calls))
    res["cold_start"] = await progress.phase(
        "cold start", args.cold_runs, "run", "oracd to READY, llama-server alone to /health").run(
        lambda ph: bench_cold_start(ph, t, args.cold_runs))
    res["concurrency"] = await progress.phase(
        "concurrency", len(args.levels) * (2 + 2 * args.conc_rounds), "round",
        f"oracd vs direct, {' '.join(map(str, args.levels))} clients").run(
        lambda ph: bench_concurrency(ph, t, args.levels, args.conc_rounds, args.conc_per_client))
    if args.warmup_loads:
        res["warmup"] = await run_warmup(progress, t, args.warmup_loads)
    res["targets"] = check_targets(res)
    res["phases"] = progress.phases
    return res


def run_warmup(progress: Progress, t: Timeouts, loads: int) -> Any:
    return progress.phase("warm-up", 2 * loads, "load", "warmup on vs off, interleaved").run(
        lambda ph: bench_warmup(ph, t, loads))


def target(value: Any, ok: Any, show: Any) -> Dict[str, Any]:
    """One goal: ``value()`` (missing when its phase failed or had no successful request) checked by ``ok``."""
    try:
        v = value()
    except (KeyError, TypeError, AttributeError, ValueError):
        v = None
    if v is None or (isinstance(v, tuple) and None in v):
        return {"met": False, "value": "not measured"}
    return {"met": bool(ok(v)), "value": show(v)}


def check_targets(res: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals, met or missed, from this run's figures."""
    g, mem = res["generate"], res["memory"]
    return {
        "generate overhead p50 <= max(1 ms, 2% of direct)": target(
            lambda: (g["overhead_ms_p50"]["compat client"], g["direct HTTP"]["p50"]),
            lambda v: v[0] <= max(1.0, 0.02 * v[1]), lambda v: f"{v[0]} ms"),
        "status p50 <= 0.3 ms (1 conn)": target(
            lambda: res["rpc"]["status latency ms (1 conn)"]["p50"], lambda v: v <= 0.3, lambda v: f"{v} ms"),
        "speed-up vs old CLI >= 97% of direct's": target(
            lambda: g["speedup_vs_old_cli"]["share_of_direct_speedup"], lambda v: v >= 0.97,
            lambda v: f"{v * 100:.1f}%"),
        ">= 95% of direct throughput at 8 clients": target(
            lambda: res["concurrency"]["8"]["ratio"], lambda v: v >= 0.95, lambda v: f"{v * 100:.1f}%"),
        "oracd RSS <= 60 MB": target(
            lambda: max(v for k, v in mem.items() if k.startswith("oracd RSS")), lambda v: v <= 60,
            lambda v: f"{v} MB"),
    }


def write_chart(res: Dict[str, Any], raw: Dict[str, List[float]], path: Path) -> bool:
    """Latency distributions and the concurrency curve as a PNG (needs matplotlib: scripts/bench installs it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [k for k in GENERATE_VARIANTS if raw.get(k)]
    conc = res["concurrency"]
    levels = sorted((n for n, v in rows(conc) if v.get("oracd_tok_s") is not None
                     and v.get("direct_tok_s") is not None), key=int) if "failed" not in conc else []
    if not names and not levels:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if names:
        ax1.boxplot([raw[k] for k in names], showfliers=False)
        ax1.set_xticks(range(1, len(names) + 1), names, rotation=15)
        ax1.set_yscale("log")
    ax1.set_ylabel("ms (log)")
    ax1.set_title(f"warm generate, max_tokens {MAX_TOKENS}")
    ax2.plot([int(n) for n in levels], [conc[n]["direct_tok_s"] for n in levels], "o-", label="direct")
    ax2.plot([int(n) for n in levels], [conc[n]["oracd_tok_s"] for n in levels], "s--", label="oracd")
    ax2.set_xlabel("concurrent clients (= parallel slots)")
    ax2.set_ylabel("completion tokens/s")
    ax2.set_title("aggregate throughput")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="warm generate runs per variant")
    ap.add_argument("--cli-runs", type=int, default=10, help="old per-call CLI runs")
    ap.add_argument("--rpc-calls", type=int, default=2000)
    ap.add_argument("--memory-requests", type=int, default=10000)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--conc-rounds", type=int, default=4, help="even, so each side goes first as often")
    ap.add_argument("--conc-per-client", type=int, default=4)
    ap.add_argument("--warmup-loads", type=int, default=4, help="loads per variant for the warm-up measurement "
                    "(0: skip it)")
    ap.add_argument("--only-warmup", action="store_true", help="run only the warm-up measurement")
    ap.add_argument("--quick", action="store_true",
                    help="a few runs of everything, to try the benchmark out in a couple of minutes (not for "
                         "figures; files are named quick-*): " + ", ".join(f"{k.replace('_', '-')} {v}"
                                                                           for k, v in QUICK.items())
                         + "; options given explicitly still win")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply every timeout (generate 120 s, load 300 s, oracd start 180 s, cheap RPC 30 s): "
                         "above 1 for a very slow box; far below 1 makes requests fail, to see how failures "
                         "are reported")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    if args.quick:             # again, with the quick counts as defaults: explicit options keep their values
        ap.set_defaults(**QUICK)
        args = ap.parse_args()
    if not args.timeout_scale > 0:
        ap.error("--timeout-scale must be > 0")
    return args


def write_results(args: argparse.Namespace, stem_name: str, res: Dict[str, Any], md: str) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (("quick-" if args.quick else "") + stem_name)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    return stem


def main() -> int:
    args = parse_args()
    t = Timeouts().scaled(args.timeout_scale)
    progress = Progress()
    progress.line(f"timeouts: generate {t.generate:g} s, load {t.load:g} s, start {t.start:g} s, "
                  f"cheap RPC {t.call:g} s (--timeout-scale {args.timeout_scale:g})")
    if args.only_warmup:
        w = asyncio.run(run_warmup(progress, t, max(1, args.warmup_loads)))
        raw = {k: w[k].pop("_raw") for k in ("warmup on", "warmup off") if k in w}
        md = "\n".join(section("warm-up", w, warmup_markdown)) + "\n"
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stem = write_results(args, f"warmup-{when.replace(':', '')}", {
            "when": when, "timeouts_s": asdict(t), "warmup": w, "warmup_raw_ms": raw, "phases": progress.phases}, md)
        print(md)
        print(f"written: {stem}.json, {stem}.md")
    else:
        res = asyncio.run(run_all(args, progress, t))
        raw = res["generate"].pop("_raw", {})
        if "warmup" in res:
            res["warmup_raw_ms"] = {k: res["warmup"][k].pop("_raw") for k in ("warmup on", "warmup off")
                                    if k in res["warmup"]}
        md = to_markdown(res)
        res["generate_raw_ms"] = raw
        stem = write_results(args, res["when"].replace(":", ""), res, md)
        charted = write_chart(res, raw, stem.with_suffix(".png"))
        print(md)
        print(f"written: {stem}.json, {stem}.md"
              + (f", {stem}.png" if charted else " (no PNG: matplotlib missing, or nothing to chart)"))
    progress.finish()
    return 1 if progress.failed_phases() else 0


if __name__ == "__main__":
    sys.exit(main())
