"""python -m bench.rpc: generate tokens/s through oracd, local vs one vs two loopback rpc-server workers.

What it shows is the cost of the RPC hop (every token crosses to the workers and
back), not a speed-up: on one box the workers share the same cores.  The three
setups run side by side and their requests are interleaved, so machine noise
hits them alike.  Prints a markdown table; writes bench/results/rpc-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from oracd_protocol.blocking import BlockingClient

from .daemons import REPO, Oracd, RpcWorker
from .harness import Timeouts

PROMPT = "Write a short story about a dragon who learns to cook."


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rpc", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout (see python -m bench)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    t = Timeouts().scaled(args.timeout_scale)
    workers = [RpcWorker() for _ in range(3)]
    setups = {"local": [], "1 worker": [workers[0].address], "2 workers": [workers[1].address, workers[2].address]}
    daemons = {}
    try:
        for name, ws in setups.items():     # threads 1 everywhere: the same compute per token in every setup
            daemons[name] = Oracd(llama={"rpc_workers": ws, "threads": 1, "parallel": 1})
            daemons[name].start(timeout=t.start)
        rates = {name: [] for name in setups}
        for i in range(args.runs + 1):
            for name, o in (list(daemons.items()) if i % 2 else list(daemons.items())[::-1]):
                with BlockingClient(o.socket, t.generate + t.grace) as c:   # outwaits oracd's own timeout
                    r = c.call("generate", {"prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
                                            "timeout": t.generate})
                if i:                        # the first round warms every prompt cache
                    rates[name].append(r["usage"]["completion_tokens"] / (r["elapsed_ms"] / 1000))
        res = {name: {"tok_s_p50": round(statistics.median(v), 1), "min": round(min(v), 1),
                      "max": round(max(v), 1), "runs": len(v)} for name, v in rates.items()}
        local = res["local"]["tok_s_p50"]
        for v in res.values():
            v["vs_local"] = round(v["tok_s_p50"] / local, 3)
    finally:
        for o in daemons.values():
            o.cleanup()
        for w in workers:
            w.cleanup()
    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    lines = [f"generate through oracd, SmolLM2 Q4_1, max_tokens {args.max_tokens}, temperature 0, "
             f"{args.runs} interleaved runs, threads 1 for llama-server and each rpc-server, loopback", "",
             "| setup | tokens/s p50 | min-max | vs local |", "|---|---|---|---|"]
    for name, v in res.items():
        lines.append(f"| {name} | {v['tok_s_p50']} | {v['min']}-{v['max']} | {v['vs_local']} |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rpc-{when}.json").write_text(json.dumps({"when": when, "results": res}, indent=2) + "\n")
    (args.out / f"rpc-{when}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
