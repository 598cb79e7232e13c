"""python -m bench.flavors: tokens/s of llama.cpp builds (flavors) side by side, interleaved, one run.

Why: the x86-64 default is a portable AVX2 baseline (``oracd/provision/flavors.py``)
instead of ``-march=native``; this measures what that costs against the opt-in
flavors on this machine.  Each build's llama-server serves SmolLM2 on its own
Unix socket (same threads, context and prompt); requests go round-robin, so
machine noise hits every build alike.

  python -m bench.flavors                         # every complete entry in the cache
  python -m bench.flavors --bin avx2=/path/to/llama-server --bin native=/other/llama-server
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from oracd.provision.build import is_complete
from oracd.provision.cache import cache_root
from oracd.provision.smoke import request

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("You turn spoken home-automation commands into JSON with the keys device, action and location. "
          "Examples: 'turn on the kitchen lights' gives {\"device\": \"lights\", \"action\": \"on\", "
          "\"location\": \"kitchen\"}. Now: set the bedroom heating to twenty one degrees and then")


def cached_builds() -> Dict[str, Path]:
    out = {}
    for entry in sorted((cache_root() / "llama.cpp").glob("*")):
        if entry.is_dir() and is_complete(entry):
            key = json.loads((entry / "KEY.json").read_text())
            out[str(key["flavor"])] = entry / "bin" / "llama-server"
    return out


def start(binary: Path, sock: str, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(binary), "-m", str(MODEL), "--host", sock, "-c", "1024", "-np", "1",
                             "-t", str(threads), "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{binary} exited with {proc.returncode}"
        try:
            if request(sock, "GET", "/health", None, 5)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{binary} not healthy in 120 s")


def one(sock: str, n_predict: int) -> Tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one uncached completion."""
    body = {"prompt": PROMPT, "n_predict": n_predict, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
    status, raw = request(sock, "POST", "/completion", body, 300)
    assert status == 200, raw[:200]
    t = json.loads(raw)["timings"]
    return t["prompt_per_second"], t["predicted_per_second"]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.flavors", description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", default=[], metavar="NAME=PATH", help="a llama-server to measure")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in args.bin) if args.bin else cached_builds()
    if not builds:
        sys.exit("no builds: provision some flavors first (ORACD_LLAMA_FLAVOR=native scripts/setup) or pass --bin")
    procs, socks = {}, {}
    tmp = tempfile.mkdtemp(prefix="oracd-flavors-")
    results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in builds}
    try:
        for name, binary in builds.items():
            socks[name] = os.path.join(tmp, f"{name}.sock")
            procs[name] = start(Path(binary), socks[name], args.threads)
        for name in builds:                      # one unmeasured request each: page in, warm caches
            one(socks[name], 8)
        for r in range(args.rounds):
            order = list(builds) if r % 2 == 0 else list(reversed(builds))
            for name in order:
                results[name].append(one(socks[name], args.tokens))
            print(f"[flavors] round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    base = statistics.median(g for _, g in results[next(iter(builds))])
    print(f"llama.cpp flavors on {os.cpu_count()} CPU, SmolLM2-135M Q4_1, {args.threads} threads, "
          f"{args.tokens} tokens, {args.rounds} interleaved rounds (p50)\n")
    print("| flavor | prompt tok/s | generate tok/s | generate vs first |")
    print("|---|---|---|---|")
    for name, xs in results.items():
        pp = statistics.median(p for p, _ in xs)
        tg = statistics.median(g for _, g in xs)
        print(f"| {name} | {pp:.1f} | {tg:.1f} | {tg / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
