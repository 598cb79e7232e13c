"""python -m bench.status_ab --before TREE [--after TREE]: the RPC floor of two oracd checkouts, paired.

Why: the full bench runs each variant in its own phase, minutes apart; a difference of tens of
microseconds needs the two daemons measured in the same seconds.  Each checkout's own venv runs
its own oracd (no model loaded: status only), and one blocking client alternates between them,
call by call, so machine noise hits both alike.

  python -m bench.status_ab --before /path/to/old/checkout --calls 24000
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
LINE = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'


def start(tree: Path, root: Path) -> subprocess.Popen:
    root.mkdir(parents=True)
    (root / "models").mkdir()
    conf = root / "oracd.toml"
    conf.write_text(f'[server]\nsocket = "{root}/s.sock"\nlog_dir = "{root}/logs"\nsocket_group = ""\n'
                    f'[llama]\nserver_bin = "{tree}/bin/llama-server"\nmodels_dir = "{root}/models"\n')
    proc = subprocess.Popen([str(tree / ".venv" / "bin" / "python"), "-m", "oracd", "--config", str(conf)],
                            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (root / "s.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"oracd from {tree} did not start")
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.status_ab", description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (with its .venv and bin/)")
    ap.add_argument("--after", type=Path, default=REPO, help="default: this checkout")
    ap.add_argument("--calls", type=int, default=24000, help="per daemon; the first 2000 warm up")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oracd-ab-", dir="/tmp"))
    procs, conns = [], {}
    try:
        for tag, tree in (("before", args.before.resolve()), ("after", args.after.resolve())):
            procs.append(start(tree, tmp / tag))
            c = socket.socket(socket.AF_UNIX)
            c.connect(str(tmp / tag / "s.sock"))
            conns[tag] = (c, c.makefile("rb"))
        lat: Dict[str, List[float]] = {t: [] for t in conns}
        for i in range(args.calls):
            for tag in (("before", "after") if i % 2 else ("after", "before")):
                c, f = conns[tag]
                t0 = time.perf_counter()
                c.sendall(LINE)
                f.readline()
                lat[tag].append((time.perf_counter() - t0) * 1000)
        print(f"status over one connection, {args.calls - 2000} calls each, interleaved (ms)")
        for tag, xs in lat.items():
            xs = sorted(xs[2000:])
            print(f"{tag:7s} p50 {xs[len(xs) // 2]:.3f}  p90 {xs[int(len(xs) * .9)]:.3f}  p99 {xs[int(len(xs) * .99)]:.3f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
