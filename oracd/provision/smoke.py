"""Prove a llama-server runs here: load the embedded model and generate one token.

Why on every setup and not only after a build: a cache outlives the machine that
filled it.  CI once stayed green on binaries built on an earlier machine while
every fresh build segfaulted.  This check takes a second or two.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..child import exits


@dataclass
class Verdict:
    ok: bool
    kind: str                       # ok | crashed | killed | exited | hung | bad_answer
    detail: str                     # one line for a person
    seconds: float = 0.0
    returncode: Optional[int] = None
    tail: List[str] = field(default_factory=list)

    @property
    def rebuild_may_help(self) -> bool:
        """A crash, a kill or a hang can come from the build; a plain error exit is a message to read."""
        return self.kind in ("crashed", "killed", "hung")


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (llama-server listens on one)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def request(sock_path: str, method: str, url: str, body: Optional[dict], timeout: float):
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request(method, url, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def smoke_test(server: Path, model: Path, *, timeout: float = 120.0, gpu: bool = False,
               threads: Optional[int] = None) -> Verdict:
    """Start ``server`` on ``model``, wait for /health, generate one token, stop it."""
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oracd-smoke-") as tmp:
        sock_path = os.path.join(tmp, "s.sock")
        out_path = os.path.join(tmp, "out.log")
        cmd = [str(server), "-m", str(model), "--host", sock_path, "-c", "512", "-np", "1", "-t", str(threads),
               "-ngl", "999" if gpu else "0", "--no-webui"]
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
            except OSError as exc:
                return Verdict(False, "exited", f"cannot start {server}: {exc}")
            try:
                verdict = _drive(proc, sock_path, t0 + timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        with open(out_path, "rb") as fh:
            verdict.tail = fh.read().decode("utf-8", "replace").splitlines()[-15:]
    verdict.seconds = round(time.monotonic() - t0, 2)
    return verdict


def _exited(proc: subprocess.Popen) -> Verdict:
    rc = proc.returncode
    info = exits.exit_info(rc)
    kind = info.get("how", "exited")
    detail = exits.describe(rc)
    cause = exits.LIKELY_CAUSE.get(info.get("signal", ""))
    if cause:
        detail += f": likely {cause}"
    return Verdict(False, kind, detail, returncode=rc)


def _drive(proc: subprocess.Popen, sock_path: str, deadline: float) -> Verdict:
    while True:          # wait for /health 200 while the process lives
        if proc.poll() is not None:
            return _exited(proc)
        if time.monotonic() > deadline:
            return Verdict(False, "hung", "llama-server did not become healthy in time")
        try:
            status, _ = request(sock_path, "GET", "/health", None, 5)
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    body = {"prompt": "The capital of France is", "n_predict": 1, "temperature": 0, "cache_prompt": False}
    try:
        status, raw = request(sock_path, "POST", "/completion", body, max(1.0, deadline - time.monotonic()))
    except socket.timeout:
        return Verdict(False, "hung", "llama-server did not answer a one-token completion in time")
    except OSError as exc:
        proc.wait(5) if proc.poll() is None else None
        if proc.poll() is not None:
            return _exited(proc)            # it died while generating: the usual AMX segfault
        return Verdict(False, "bad_answer", f"lost the connection during the one-token completion: {exc}")
    if status != 200:
        return Verdict(False, "bad_answer", f"one-token completion answered HTTP {status}: {raw[:200]!r}")
    try:
        n = json.loads(raw).get("tokens_predicted")
    except ValueError:
        n = None
    if n != 1:
        return Verdict(False, "bad_answer", f"one-token completion predicted {n!r} tokens: {raw[:200]!r}")
    return Verdict(True, "ok", "loaded the model and generated one token")
