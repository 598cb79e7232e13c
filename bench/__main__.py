"""python -m bench: oracd vs direct llama-server vs the old per-call CLI, interleaved, one run.

Prints a markdown table and writes bench/results/<timestamp>.json and .md.
Variants are interleaved run by run so machine noise hits them alike.  Nothing
here asserts: the figures are for people (README, closing notes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import BIN, SMOL, Oracd, toml_value  # noqa: E402  (the same real-process launcher the tests use)

from .old_cli import OldCliClient  # noqa: E402

PROMPT = "Turn on the kitchen lights."
MAX_TOKENS = 16


def pct(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs: List[float]) -> Dict[str, float]:
    return {"n": len(xs), "p50": round(pct(xs, 50), 3), "p95": round(pct(xs, 95), 3),
            "p99": round(pct(xs, 99), 3), "mean": round(statistics.fmean(xs), 3) if xs else None}


class RawRPC:
    """A minimal persistent JSON-RPC connection (what a socat-like client does, kept open)."""

    def __init__(self, path: Path):
        self.path = path
        self.n = 0

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_unix_connection(str(self.path), limit=1 << 24)

    async def call(self, method: str, params: Dict[str, Any] = None) -> Any:
        self.n += 1
        msg = {"jsonrpc": "2.0", "id": self.n, "method": method}
        if params:
            msg["params"] = params
        self.w.write(json.dumps(msg).encode() + b"\n")
        resp = json.loads(await self.r.readline())
        while "id" not in resp and "method" in resp:       # a progress notification (load.progress)
            resp = json.loads(await self.r.readline())
        if "error" in resp:
            raise RuntimeError(resp["error"])
        return resp["result"]

    async def close(self) -> None:
        self.w.close()
        await self.w.wait_closed()


def direct_session(endpoint: str) -> aiohttp.ClientSession:
    if endpoint.startswith("unix:"):
        return aiohttp.ClientSession("http://localhost", connector=aiohttp.UnixConnector(path=endpoint[5:]))
    return aiohttp.ClientSession(f"http://{endpoint}")


async def direct_generate(session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> Dict[str, Any]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "top_p": 0.7, "top_k": 40}
    async with session.post("/v1/chat/completions", json=body) as resp:
        return await resp.json()


async def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def bench_generate(o: Oracd, runs: int, cli_runs: int) -> Dict[str, Any]:
    from oracd_client.compat import LlamaCppClient
    os.environ["ORACD_SOCKET"] = str(o.socket)
    client = LlamaCppClient()
    raw = RawRPC(o.socket)
    await raw.open()
    endpoint = (await raw.call("status"))["child"]["endpoint"]
    session = direct_session(endpoint)
    old = OldCliClient(BIN / "llama-completion", o.models_dir)
    params = {"model": SMOL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    variants = {
        "compat client": lambda: client.generate(SMOL, PROMPT, temperature=0, max_tokens=MAX_TOKENS),
        "raw JSON-RPC": lambda: raw.call("generate", params),
        "direct HTTP": lambda: direct_generate(session, PROMPT, MAX_TOKENS),
    }
    for fn in variants.values():          # warm-up: first request fills caches
        await fn()
    times: Dict[str, List[float]] = {k: [] for k in variants}
    times["old per-call CLI"] = []
    every = max(1, runs // max(cli_runs, 1))
    for i in range(runs):
        order = list(variants.items())
        if i % 2:
            order.reverse()
        for name, fn in order:
            times[name].append(await timed(fn))
        if i % every == 0 and len(times["old per-call CLI"]) < cli_runs:
            times["old per-call CLI"].append(await timed(
                lambda: old.generate(SMOL, PROMPT, temperature=0, max_tokens=MAX_TOKENS)))
    await session.close()
    await raw.close()
    await client.aclose()
    res = {k: summary(v) for k, v in times.items()}
    res["_raw"] = times
    d, c, r = res["direct HTTP"]["p50"], res["compat client"]["p50"], res["raw JSON-RPC"]["p50"]
    cli = res["old per-call CLI"]["p50"]
    res["overhead_ms_p50"] = {"compat client": round(c - d, 3), "raw JSON-RPC": round(r - d, 3)}
    res["overhead_ratio_p50"] = {"compat client": round(c / d, 4), "raw JSON-RPC": round(r / d, 4)}
    res["speedup_vs_old_cli"] = {"direct HTTP": round(cli / d, 2), "compat client": round(cli / c, 2),
                                 "raw JSON-RPC": round(cli / r, 2),
                                 "share_of_direct_speedup": round((cli / c) / (cli / d), 4)}
    return res


def blocking_latencies(path: Path, method: str, calls: int) -> List[float]:
    """Round trips with a plain blocking socket (what socat, a shell or the sync client does):
    the daemon's own latency, with as little client in the way as possible."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        rf = s.makefile("rb")
        ts = []
        for i in range(calls + 50):              # the first 50 warm the path up
            line = json.dumps({"jsonrpc": "2.0", "id": i, "method": method}).encode() + b"\n"
            t0 = time.perf_counter()
            s.sendall(line)
            resp = rf.readline()
            ts.append((time.perf_counter() - t0) * 1000)
            if b'"result"' not in resp:
                raise RuntimeError(resp)
        return ts[50:]


async def bench_rpc_floor(o: Oracd, calls: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for method in ("status", "list_models"):
        out[f"{method} latency ms (1 conn)"] = summary(blocking_latencies(o.socket, method, calls))
    raw = RawRPC(o.socket)
    await raw.open()
    for method in ("status", "list_models"):
        await raw.call(method)
        ts = [await timed(lambda: raw.call(method)) for _ in range(calls)]
        out[f"{method} latency ms (1 conn, asyncio client)"] = summary(ts)
    await raw.close()
    for conns in (1, 8):
        clients = [RawRPC(o.socket) for _ in range(conns)]
        for c in clients:
            await c.open()
        per = calls // conns
        t0 = time.perf_counter()

        async def loop(c: RawRPC) -> None:
            for _ in range(per):
                await c.call("status")

        await asyncio.gather(*(loop(c) for c in clients))
        dt = time.perf_counter() - t0
        out[f"status throughput req/s ({conns} conn)"] = round(per * conns / dt, 1)
        for c in clients:
            await c.close()
    return out


async def bench_memory(o: Oracd, requests: int) -> Dict[str, Any]:
    proc = psutil.Process(o.proc.pid)
    idle = proc.memory_info().rss
    raw = RawRPC(o.socket)
    await raw.open()
    for i in range(requests):
        await raw.call("list_models" if i % 10 == 0 else "status")
    await raw.close()
    after = proc.memory_info().rss
    return {"oracd RSS idle MB": round(idle / 2**20, 1), f"oracd RSS after {requests} requests MB":
            round(after / 2**20, 1), "growth MB": round((after - idle) / 2**20, 1)}


async def bench_concurrency(levels: List[int], rounds: int, per_client: int) -> Dict[str, Any]:
    """Aggregate completion tokens/s with N concurrent clients and N llama-server slots: oracd vs direct."""
    out: Dict[str, Any] = {}
    for n in levels:
        with Oracd(llama={"parallel": n, "ctx_size": 1024 * n, "threads": 0}) as o:
            conns = [RawRPC(o.socket) for _ in range(n)]
            for c in conns:
                await c.open()
            endpoint = (await conns[0].call("status"))["child"]["endpoint"]
            session = direct_session(endpoint)
            prompts = [f"Write one sentence about room number {i}." for i in range(n)]

            async def via_oracd(i: int) -> int:
                toks = 0
                for _ in range(per_client):
                    r = await conns[i].call("generate", {"model": SMOL, "prompt": prompts[i], "max_tokens": 32,
                                                         "temperature": 0})
                    toks += r["usage"]["completion_tokens"]
                return toks

            async def via_direct(i: int) -> int:
                toks = 0
                for _ in range(per_client):
                    r = await direct_generate(session, prompts[i], 32)
                    toks += r["usage"]["completion_tokens"]
                return toks

            rates: Dict[str, List[float]] = {"oracd": [], "direct": []}
            for fn in (via_oracd, via_direct):   # unmeasured: fill each slot's prompt cache for both alike
                await asyncio.gather(*(fn(i) for i in range(n)))
            for rnd in range(rounds):
                for name, fn in ((("oracd", via_oracd), ("direct", via_direct)) if rnd % 2 == 0
                                 else (("direct", via_direct), ("oracd", via_oracd))):
                    t0 = time.perf_counter()
                    toks = sum(await asyncio.gather(*(fn(i) for i in range(n))))
                    rates[name].append(toks / (time.perf_counter() - t0))
            await session.close()
            for c in conns:
                await c.close()
        o_rate, d_rate = statistics.median(rates["oracd"]), statistics.median(rates["direct"])
        out[str(n)] = {"oracd_tok_s": round(o_rate, 1), "direct_tok_s": round(d_rate, 1),
                       "ratio": round(o_rate / d_rate, 4)}
    return out


def bench_cold_start(runs: int) -> Dict[str, Any]:
    oracd_ms, llama_ms = [], []
    for _ in range(runs):
        o = Oracd(llama={"threads": 0})
        t0 = time.perf_counter()
        o.start()
        oracd_ms.append((time.perf_counter() - t0) * 1000)
        o.cleanup()
        d = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
        sock = d / "l.sock"
        t0 = time.perf_counter()
        p = subprocess.Popen([str(BIN / "llama-server"), "-m", str(REPO / "models" / SMOL), "--host", str(sock),
                              "-c", "1024", "-np", "2", "--no-webui"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        import http.client
        import socket as so

        while True:
            try:
                s = so.socket(so.AF_UNIX)
                s.connect(str(sock))
                conn = http.client.HTTPConnection("localhost")
                conn.sock = s
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        llama_ms.append((time.perf_counter() - t0) * 1000)
        p.terminate()
        p.wait(10)
    return {"oracd start to READY (preload) ms": summary(oracd_ms),
            "llama-server alone to /health 200 ms": summary(llama_ms)}


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


async def _warmup_rounds(loads: int, common: Dict[str, Any]) -> Any:
    times: Dict[str, Dict[str, List[float]]] = {}
    prompt_tokens = None
    with Oracd(llama={**common, "warmup": True}) as on, Oracd(llama={**common, "warmup": False}) as off:
        variants = {"warmup on": on, "warmup off": off}
        conns = {}
        for name, o in variants.items():
            conns[name] = RawRPC(o.socket)
            await conns[name].open()
            times[name] = {"load_ms": [], "first_ms": [], "load_plus_first_ms": [], "second_ms": [],
                           "warmup_ms": []}
        for i in range(loads):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in order:
                raw, t = conns[name], times[name]
                await raw.call("unload_model")
                load = await timed(lambda: raw.call("load_model", {"model": SMOL}))
                first_res: Dict[str, Any] = {}

                async def first() -> None:
                    first_res.update(await raw.call("generate", {"prompt": WARMUP_PROMPTS[0], "model": SMOL}))

                first_ms = await timed(first)
                second_ms = await timed(lambda: raw.call("generate", {"prompt": WARMUP_PROMPTS[1], "model": SMOL}))
                st = (await raw.call("status"))["child"]
                t["load_ms"].append(load)
                t["first_ms"].append(first_ms)
                t["load_plus_first_ms"].append(load + first_ms)
                t["second_ms"].append(second_ms)
                if st.get("warmup_ms") is not None:
                    t["warmup_ms"].append(st["warmup_ms"])
                prompt_tokens = first_res["usage"]["prompt_tokens"]
        for c in conns.values():
            await c.close()
    return times, prompt_tokens


async def bench_warmup(loads: int) -> Dict[str, Any]:
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
        times, prompt_tokens = await _warmup_rounds(loads, common)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res: Dict[str, Any] = {"loads": loads, "first_request_prompt_tokens": prompt_tokens, "parallel": 2}
    for name, t in times.items():
        res[name] = {k: summary(v) for k, v in t.items() if v}
        res[name]["_raw"] = t
    on_first, off_first = res["warmup on"]["first_ms"]["p50"], res["warmup off"]["first_ms"]["p50"]
    res["first_request_saving_ms_p50"] = round(off_first - on_first, 3)
    res["first_request_speedup_p50"] = round(off_first / on_first, 2) if on_first else None
    res["load_plus_first_saving_ms_p50"] = round(res["warmup off"]["load_plus_first_ms"]["p50"]
                                                 - res["warmup on"]["load_plus_first_ms"]["p50"], 3)
    return res


def warmup_markdown(w: Dict[str, Any]) -> List[str]:
    lines = [f"| warm-up ({w['loads']} loads each, {w['first_request_prompt_tokens']}-token few-shot prompt) "
             "| warmup = true p50 ms | warmup = false p50 ms |", "|---|---|---|"]
    labels = {"load_ms": "load_model (includes warm-up)", "first_ms": "first generate after the load",
              "load_plus_first_ms": "load + first generate", "second_ms": "second generate (steady state)"}
    for k, label in labels.items():
        lines.append(f"| {label} | {w['warmup on'][k]['p50']} | {w['warmup off'][k]['p50']} |")
    if "warmup_ms" in w["warmup on"]:
        lines.append(f"| status.child.warmup_ms | {w['warmup on']['warmup_ms']['p50']} | - |")
    lines += ["", f"Warm-up saves {w['first_request_saving_ms_p50']} ms on the first request after a load "
              f"(x{w['first_request_speedup_p50']}); load + first request: "
              f"{w['load_plus_first_saving_ms_p50']} ms saved."]
    return lines


def fmt(v: Any, with_p99: bool = False) -> str:
    if not isinstance(v, dict):
        return str(v)
    return f"p50 {v['p50']} / p99 {v['p99']}" if with_p99 else f"p50 {v['p50']}"


def to_markdown(res: Dict[str, Any]) -> str:
    g = res["generate"]
    lines = [f"Benchmark {res['when']} on {res['machine']} (SmolLM2-135M Q4_1, max_tokens {MAX_TOKENS}, "
             f"temperature 0, {g['direct HTTP']['n']} interleaved runs)", "",
             "| warm generate | p50 ms | p95 ms |", "|---|---|---|"]
    for k in ("direct HTTP", "raw JSON-RPC", "compat client", "old per-call CLI"):
        lines.append(f"| {k} | {g[k]['p50']} | {g[k]['p95']} |")
    lines += ["", f"oracd overhead at p50: raw JSON-RPC {g['overhead_ms_p50']['raw JSON-RPC']} ms "
              f"(x{g['overhead_ratio_p50']['raw JSON-RPC']}), compat client {g['overhead_ms_p50']['compat client']} ms "
              f"(x{g['overhead_ratio_p50']['compat client']}).",
              f"Speed-up over the old per-call CLI: direct x{g['speedup_vs_old_cli']['direct HTTP']}, "
              f"compat client x{g['speedup_vs_old_cli']['compat client']} "
              f"({g['speedup_vs_old_cli']['share_of_direct_speedup'] * 100:.1f}% of direct's).", ""]
    lines += ["| RPC floor | value |", "|---|---|"]
    for k, v in res["rpc"].items():
        lines.append(f"| {k} | {fmt(v, with_p99=True)} |")
    lines += ["", "| concurrent clients | oracd tok/s | direct tok/s | oracd/direct |", "|---|---|---|---|"]
    for n, v in sorted(res["concurrency"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | {v['oracd_tok_s']} | {v['direct_tok_s']} | {v['ratio']} |")
    lines += ["", "| cold start / memory | value |", "|---|---|"]
    for k, v in {**res["cold_start"], **res["memory"]}.items():
        lines.append(f"| {k} | {fmt(v)} |")
    if "warmup" in res:
        lines += [""] + warmup_markdown(res["warmup"])
    lines += ["", "| target | met | value |", "|---|---|---|"]
    for k, v in res["targets"].items():
        lines.append(f"| {k} | {'yes' if v['met'] else 'NO'} | {v['value']} |")
    return "\n".join(lines) + "\n"


async def run_all(args: argparse.Namespace) -> Dict[str, Any]:
    res: Dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": f"{os.cpu_count()} CPU, {round(psutil.virtual_memory().total / 2**30)} GiB"}
    with Oracd(llama={"threads": 0}) as o:
        res["generate"] = await bench_generate(o, args.runs, args.cli_runs)
        res["rpc"] = await bench_rpc_floor(o, args.rpc_calls)
        res["memory"] = await bench_memory(o, args.memory_requests)
    with Oracd(server={"event_loop": "asyncio"}, llama={"preload": False}) as o:   # uvloop's share, for the record
        res["rpc"]["status latency ms (1 conn, stdlib asyncio loop)"] = summary(
            blocking_latencies(o.socket, "status", args.rpc_calls))
    res["cold_start"] = bench_cold_start(args.cold_runs)
    res["concurrency"] = await bench_concurrency(args.levels, args.conc_rounds, args.conc_per_client)
    if args.warmup_loads:
        res["warmup"] = await bench_warmup(args.warmup_loads)
    res["targets"] = check_targets(res)
    return res


def check_targets(res: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals, met or missed, from this run's figures."""
    g = res["generate"]
    d50 = g["direct HTTP"]["p50"]
    over = g["overhead_ms_p50"]["compat client"]
    conc8 = res["concurrency"].get("8", {}).get("ratio")
    rss = max(res["memory"]["oracd RSS idle MB"], list(res["memory"].values())[1])
    rows = {
        "generate overhead p50 <= max(1 ms, 2% of direct)": (over <= max(1.0, 0.02 * d50), f"{over} ms"),
        "status p50 <= 0.3 ms (1 conn)": (res["rpc"]["status latency ms (1 conn)"]["p50"] <= 0.3,
                                          f"{res['rpc']['status latency ms (1 conn)']['p50']} ms"),
        "speed-up vs old CLI >= 97% of direct's": (g["speedup_vs_old_cli"]["share_of_direct_speedup"] >= 0.97,
                                                   f"{g['speedup_vs_old_cli']['share_of_direct_speedup'] * 100:.1f}%"),
        ">= 95% of direct throughput at 8 clients": (conc8 is not None and conc8 >= 0.95,
                                                     f"{conc8 * 100:.1f}%" if conc8 else "not measured"),
        "oracd RSS <= 60 MB": (rss <= 60, f"{rss} MB"),
    }
    return {k: {"met": bool(ok), "value": v} for k, (ok, v) in rows.items()}


def write_chart(res: Dict[str, Any], raw: Dict[str, List[float]], path: Path) -> bool:
    """Latency distributions and the concurrency curve as a PNG (needs matplotlib: scripts/bench installs it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [k for k in ("direct HTTP", "raw JSON-RPC", "compat client", "old per-call CLI") if raw.get(k)]
    ax1.boxplot([raw[k] for k in names], showfliers=False)
    ax1.set_xticks(range(1, len(names) + 1), names, rotation=15)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms (log)")
    ax1.set_title(f"warm generate, max_tokens {MAX_TOKENS}")
    levels = sorted(res["concurrency"], key=int)
    ax2.plot([int(n) for n in levels], [res["concurrency"][n]["direct_tok_s"] for n in levels], "o-", label="direct")
    ax2.plot([int(n) for n in levels], [res["concurrency"][n]["oracd_tok_s"] for n in levels], "s--", label="oracd")
    ax2.set_xlabel("concurrent clients (= parallel slots)")
    ax2.set_ylabel("completion tokens/s")
    ax2.set_title("aggregate throughput")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
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
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    if args.only_warmup:
        w = asyncio.run(bench_warmup(max(1, args.warmup_loads)))
        raw = {k: w[k].pop("_raw") for k in ("warmup on", "warmup off")}
        md = "\n".join(warmup_markdown(w)) + "\n"
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"warmup-{when.replace(':', '')}"
        stem.with_suffix(".json").write_text(json.dumps({"when": when, "warmup": w, "warmup_raw_ms": raw},
                                                        indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
        print(md)
        print(f"written: {stem}.json, {stem}.md")
        return 0
    res = asyncio.run(run_all(args))
    raw = res["generate"].pop("_raw")
    if "warmup" in res:
        res["warmup_raw_ms"] = {k: res["warmup"][k].pop("_raw") for k in ("warmup on", "warmup off")}
    md = to_markdown(res)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / res["when"].replace(":", "")
    res["generate_raw_ms"] = raw
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    charted = write_chart(res, raw, stem.with_suffix(".png"))
    print(md)
    print(f"written: {stem}.json, {stem}.md" + (f", {stem}.png" if charted else " (no PNG: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
