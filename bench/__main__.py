"""python -m bench: oracd vs direct llama-server vs the old per-call CLI, interleaved, one run.

Prints a markdown table and writes bench/results/<timestamp>.json, .md and .png.
Variants are interleaved run by run so machine noise hits them alike.  Nothing
here asserts: the figures are for people (bench/README.md, closing notes).  Progress goes
to stderr; a failed request is recorded (and left out of the figures) rather than
ending the run, and a phase that cannot run at all is recorded as failed while the
others still run (exit status 1 then, after the results are written).

This module is the command line and the order of the phases; each phase is a module
of its own (generate, rpc_floor, memory, cold_start, concurrency, warmup), the
figures and targets are bench.figures, the text bench.report, the PNG bench.chart.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

import psutil

from .chart import write_chart
from .command import bench_command, command_section, command_units, corpus
from .cold_start import bench_cold_start
from .concurrency import bench_concurrency, concurrency_rounds
from .daemons import GEMMA, REPO, SMOL, SharedOracd
from .figures import check_targets, pop_raw
from .generate import bench_generate
from .harness import Progress, Timeouts
from .http import bench_http, http_rounds, targets as http_targets
from .memory import bench_memory
from .report import STDLIB_PHASE, gemma_warmup_section, to_markdown, warmup_section
from .rpc_floor import bench_rpc_floor, bench_stdlib_loop, floor_calls
from .warmup import bench_warmup, warmup_units

QUICK = {"runs": 4, "cli_runs": 2, "commands": 6, "rpc_calls": 200, "memory_requests": 500, "cold_runs": 1,
         "levels": [1, 2], "conc_rounds": 2, "conc_per_client": 1, "warmup_loads": 1, "http_runs": 4, "http_rounds": 2}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def run_all(args: argparse.Namespace, progress: Progress, t: Timeouts) -> Dict[str, Any]:
    res: Dict[str, Any] = {"when": now(),
                           "machine": f"{os.cpu_count()} CPU, {round(psutil.virtual_memory().total / 2**30)} GiB",
                           "timeouts_s": asdict(t)}
    calls = args.rpc_calls
    shared = SharedOracd(t, llama={"threads": 0})
    try:
        res["generate"] = await progress.phase(
            "warm generate", args.runs, "run", "direct, raw JSON-RPC, compat, old CLI interleaved").run(
            lambda ph: bench_generate(ph, shared.get(), t, args.runs, args.cli_runs))
        res["rpc"] = await progress.phase(
            "RPC floor", floor_calls(calls), "call", "status, list_models; blocking, asyncio; throughput 1 and 8 conns"
        ).run(lambda ph: bench_rpc_floor(ph, shared.get(), t, calls))
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
        "concurrency", concurrency_rounds(args.levels, args.conc_rounds), "round",
        f"oracd vs direct, {' '.join(map(str, args.levels))} clients").run(
        lambda ph: bench_concurrency(ph, t, args.levels, args.conc_rounds, args.conc_per_client))
    if args.http_runs:
        res["http"] = await progress.phase(
            "HTTP APIs", http_rounds(args.http_runs, args.http_rounds), "run",
            "openai SDK on oracd /v1 vs llama-server /v1 interleaved; Ollama path; 8 clients").run(
            lambda ph: bench_http(ph, t, args.http_runs, args.http_rounds, 2))
        res["http"].pop("_raw", None)
        if "failed" not in res["http"]:
            res["http"]["targets"] = http_targets(res["http"])
    if args.warmup_loads:
        res["warmup"] = await run_warmup(progress, t, args.warmup_loads)
        if args.warmup_gemma:
            res["warmup_gemma"] = await run_warmup(progress, t, args.warmup_loads, GEMMA)
    if args.commands:
        res["command"] = await run_command(progress, t, args.commands)
    res["targets"] = check_targets(res)
    res["phases"] = progress.phases
    return res


def run_warmup(progress: Progress, t: Timeouts, loads: int, model: str = SMOL) -> Any:
    """The warm-up phase on SmolLM2, or on Gemma 3 (sliding window: its restore needs --swa-full)."""
    return progress.phase("warm-up" if model == SMOL else "warm-up (gemma3)", warmup_units(loads), "load",
                          "no warm-up, prefill, restore interleaved; crash restarts").run(
        lambda ph: bench_warmup(ph, t, loads, model))


def run_command(progress: Progress, t: Timeouts, limit: int) -> Any:
    n = len(corpus(limit))
    return progress.phase("command", command_units(n), "answer",
                          "direct response_format, oracd compact, fast-forward, compact again interleaved; SmolLM2 and "
                          "Gemma 3").run(lambda ph: bench_command(ph, t, limit))


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
    ap.add_argument("--warmup-loads", type=int, default=4,
                    help="measured loads per variant (no warm-up, prefill warm-up, restore) and crash restarts per "
                         "warm-up variant in the warm-up phase (0: skip the phase)")
    ap.add_argument("--warmup-gemma", action=argparse.BooleanOptionalAction, default=True,
                    help="run the warm-up phase for Gemma 3 270M too (sliding window: restored with --swa-full)")
    ap.add_argument("--http-runs", type=int, default=40,
                    help="interleaved samples per variant in the HTTP phase (0: skip the phase)")
    ap.add_argument("--http-rounds", type=int, default=4, help="throughput rounds per side, 8 HTTP clients")
    ap.add_argument("--only-warmup", "--only-warm-restore", dest="only_warmup", action="store_true",
                    help="run only the warm-up phase (no warm-up vs prefill vs restore, crash restarts)")
    ap.add_argument("--commands", type=int, default=75,
                    help="corpus commands in the command phase (each answered three ways on both models; 0: skip)")
    ap.add_argument("--only-command", action="store_true",
                    help="run only the command phase (compact output and fast-forward vs response_format)")
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
    if args.only_command:
        res: Dict[str, Any] = {"when": now(), "timeouts_s": asdict(t),
                               "machine": f"{os.cpu_count()} CPU, {round(psutil.virtual_memory().total / 2**30)} GiB"}
        res["command"] = asyncio.run(run_command(progress, t, max(1, args.commands)))
        res["phases"] = progress.phases
        md = "\n".join(command_section(res["command"])) + "\n"
        stem = write_results(args, f"command-{res['when'].replace(':', '')}", res, md)
        print(md)
        print(f"written: {stem}.json, {stem}.md")
        progress.finish()
        return 1 if progress.failed_phases() else 0
    if args.only_warmup:
        res = {"when": now(), "timeouts_s": asdict(t)}
        res["warmup"] = asyncio.run(run_warmup(progress, t, max(1, args.warmup_loads)))
        if args.warmup_gemma:
            res["warmup_gemma"] = asyncio.run(run_warmup(progress, t, max(1, args.warmup_loads), GEMMA))
        res["phases"] = progress.phases
        raw: Dict[str, Any] = {}
        md = "\n".join(warmup_section(res["warmup"]) + gemma_warmup_section(res)) + "\n"
        stem_name = f"warmup-{res['when'].replace(':', '')}"
    else:
        res = asyncio.run(run_all(args, progress, t))
        raw = res["generate"].pop("_raw", {})
        md = to_markdown(res)
        res["generate_raw_ms"] = raw
        stem_name = res["when"].replace(":", "")
    if "failed" not in res.get("warmup", {"failed": True}):
        res["warmup_raw_ms"] = pop_raw(res["warmup"])
    if "failed" not in res.get("warmup_gemma", {"failed": True}):
        res["warmup_gemma_raw_ms"] = pop_raw(res["warmup_gemma"])
    stem = write_results(args, stem_name, res, md)
    charted = write_chart(res, raw, stem.with_suffix(".png"))
    print(md)
    print(f"written: {stem}.json, {stem}.md"
          + (f", {stem}.png" if charted else " (no PNG: matplotlib missing, or nothing to chart)"))
    progress.finish()
    return 1 if progress.failed_phases() else 0


if __name__ == "__main__":
    sys.exit(main())
