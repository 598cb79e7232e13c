"""What a batch-invariant llama-server costs: prompt processing and decoding, with and without its flags.

Why: ``[llama] batch_invariant`` (on by default for a CPU child) starts llama-server with
``--flash-attn off --no-repack`` and ``GGML_CPU_TILED_MM=0`` (``oracd/child/command.py``), so a token gets
the same logits in a batch as alone: the same request then gives the same answer whatever else is cached,
and fast-forward gives compact sampling's object.  Those kernels are there for speed; this measures what
leaving them costs.  The same binary (oracd's own build, without llamafile's sgemm) runs each model both
ways, side by side, interleaved: the bench's few-shot system prompt (~620 tokens, uncached) and 32
generated tokens, timed by llama-server itself (``timings``).

``python -m bench.invariance`` (``--rounds N``); about 2 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from .daemons import GEMMA, SMOL
from .warmup import FEWSHOT_SYSTEM

REPO = Path(__file__).resolve().parents[1]


def _variants() -> Dict[str, Dict[str, Any]]:
    from oracd.child.command import BATCH_INVARIANT_ARGS, BATCH_INVARIANT_ENV
    return {"default kernels": {"args": [], "env": {}},
            "batch-invariant": {"args": list(BATCH_INVARIANT_ARGS), "env": dict(BATCH_INVARIANT_ENV)}}


class Server:
    """One llama-server on a free loopback port."""

    def __init__(self, binary: str, model: Path, args: List[str], env: Dict[str, str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                                      "-c", "4096", "-np", "1", *args], stdout=self.log, stderr=self.log,
                                     env={**os.environ, **env})
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server did not start ({' '.join(args)})")
                time.sleep(0.2)

    def timings(self, prompt: str) -> Dict[str, float]:
        body = {"prompt": prompt, "n_predict": 32, "cache_prompt": False, "temperature": 0, "ignore_eos": True}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req, timeout=300))["timings"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(binary: str, models_dir: Path, rounds: int) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    for model in (SMOL, GEMMA):
        servers = {name: Server(binary, models_dir / model, v["args"], v["env"]) for name, v in _variants().items()}
        try:
            got: Dict[str, Dict[str, List[float]]] = {n: {"prompt": [], "decode": []} for n in servers}
            for r in range(rounds + 1):
                for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                    t = servers[name].timings(f"{FEWSHOT_SYSTEM}\nUser: Turn on the kitchen lights. ({r})\nAssistant:")
                    if r:                                           # round 0 warms each server up, unmeasured
                        got[name]["prompt"].append(t["prompt_per_second"])
                        got[name]["decode"].append(t["predicted_per_second"])
        finally:
            for s in servers.values():
                s.stop()
        med = {n: {k: round(statistics.median(v), 1) for k, v in g.items()} for n, g in got.items()}
        base, inv = med["default kernels"], med["batch-invariant"]
        res[model] = {**med, "ratio": {k: round(inv[k] / base[k], 3) for k in ("prompt", "decode")}}
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--bin", default=str(REPO / "bin" / "llama-server"))
    ap.add_argument("--models", default=str(REPO / "models"))
    args = ap.parse_args(argv)
    res = measure(args.bin, Path(args.models), args.rounds)
    print(json.dumps({"tokens_per_second_p50": res, "binary": os.path.realpath(args.bin)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
