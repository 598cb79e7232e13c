"""The cold start phase: oracd from launch to READY with a preload, against llama-server alone to /health 200.

Why: the first answer after a boot waits for this; the difference is what oracd adds on top of
llama-server's own load (its start, the health checks, the warm-up when a profile has a prompt).
"""
from __future__ import annotations

import http.client
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from oracd.provision.smoke import request

from .daemons import BIN, REPO, SMOL, Oracd
from .harness import FAILED, Phase, Timeouts, summary


def _llama_server_ready(sock: Path, timeout: float) -> bool:
    """GET /health over llama-server's Unix socket: True on 200 (503 while it loads, OSError before it listens)."""
    try:
        return request(str(sock), "GET", "/health", None, timeout)[0] == 200
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
