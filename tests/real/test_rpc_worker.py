"""python -m oracd.workers.launcher / scripts/rpc-worker against the real rpc-server: refusals, readiness, clean stop."""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List

import psutil
import pytest

from helpers import BIN, REPO, gone
from oracd.workers.hello import hello

RPC_SERVER = BIN / "rpc-server"    # built by provisioning (conftest); these tests never skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oracd.workers.launcher", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)


def rpc_servers_on(port: int) -> List[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(c.endswith("rpc-server") for c in cmd) and str(port) in cmd:
            found.append(p)
    return found


@pytest.fixture
def started():
    """Popen'd workers; teardown kills them and any rpc-server they left behind."""
    procs: List[subprocess.Popen] = []
    yield procs
    for p in procs:
        kids = psutil.Process(p.pid).children(recursive=True) if p.poll() is None else []
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for k in kids:
            try:
                os.killpg(k.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def read_lines(stream) -> "queue.Queue[str]":
    q: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            q.put(line)
        stream.close()
    threading.Thread(target=pump, daemon=True).start()
    return q


def test_starts_answers_and_stops_cleanly(started):
    assert RPC_SERVER.exists(), f"{RPC_SERVER} missing: run scripts/setup"
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "oracd.workers.launcher", "--port", str(port), "--threads", "1"],
                         cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started.append(p)
    out, err = read_lines(p.stdout), read_lines(p.stderr)
    deadline, ready = time.monotonic() + 15, None
    while ready is None and time.monotonic() < deadline:
        try:
            line = out.get(timeout=0.2)
        except queue.Empty:
            continue
        if "listening on" in line:
            ready = line
    assert ready, f"no ready line within 15 s; exit={p.poll()}"
    assert f'rpc-server 7.0.0 listening on 127.0.0.1:{port}' in ready and f'"127.0.0.1:{port}"' in ready
    assert "only clients on this machine" in "".join(err.queue)
    check = hello(f"127.0.0.1:{port}", timeout=5)
    assert check.answers and check.version == "7.0.0", check
    child = psutil.Process(p.pid).children()[0].pid
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert gone(child, 5), "rpc-server outlived the worker"
    after = hello(f"127.0.0.1:{port}", timeout=2)
    assert not after.answers and "cannot connect" in (after.error or ""), after


def test_port_in_use_is_refused():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        res = worker("--port", str(port), "--threads", "1")
        assert res.returncode in (1, 2), res
        assert f"127.0.0.1:{port}" in res.stderr and "in use" in res.stderr, res.stderr
        assert not rpc_servers_on(port)


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], ["0.0.0.0", "every interface"]),
    (["--host", "8.8.8.8"], ["8.8.8.8", "not a loopback or private", "--allow-public"]),
    (["--host", "localhost"], ["numeric IPv4", "localhost"]),
    (["--host", "::1"], ["numeric IPv4"]),
    (["--port", "0"], ["--port must be 1-65535"]),
    (["--port", "65536"], ["--port must be 1-65535"]),
    (["--threads", "0"], ["--threads"]),
])
def test_refusals(args, words):
    res = worker(*args, "--check-only")
    assert res.returncode == 2, res
    line = res.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, line
    assert not res.stdout


def test_allow_public_is_accepted_with_the_warning():
    res = worker("--host", "8.8.8.8", "--allow-public", "--check-only", "--port", str(free_port()))
    assert res.returncode == 0, res
    assert "unauthenticated" in res.stderr and "firewall" in res.stderr
    assert "-H 8.8.8.8" in res.stdout


def test_private_address_check_only_warns():
    res = worker("--host", "10.1.2.3", "--port", "50999", "--threads", "2", "--cache", "--device", "CPU",
                 "--check-only")
    assert res.returncode == 0, res
    assert "unauthenticated" in res.stderr and "10.1.2.3:50999" in res.stderr
    assert "rpc-server -H 10.1.2.3 -p 50999 -t 2 -d CPU -c" in res.stdout
    assert '"10.1.2.3:50999"' in res.stdout


def test_missing_binary_names_the_path():
    res = worker("--bin", "/nonexistent/rpc-server", "--port", str(free_port()))
    assert res.returncode == 2, res
    assert "/nonexistent/rpc-server" in res.stderr and "scripts/setup" in res.stderr


def test_bin_from_environment(tmp_path):
    res = subprocess.run([sys.executable, "-m", "oracd.workers.launcher", "--check-only", "--port", str(free_port())],
                         cwd=str(REPO), capture_output=True, text=True, timeout=30,
                         env={**os.environ, "ORACD_RPC_SERVER": str(tmp_path / "nope")})
    assert res.returncode == 2 and str(tmp_path / "nope") in res.stderr, res


def test_exit_during_startup_is_a_failure_even_with_code_0(tmp_path):
    """rpc-server exits 0 when it cannot bind (e.g. a race for the port): that must not look like success."""
    fake = tmp_path / "rpc-server"
    fake.write_text("#!/bin/sh\necho 'Starting RPC server v7.0.0'\necho 'Failed to create server socket' >&2\n")
    fake.chmod(0o755)
    port = free_port()
    res = worker("--bin", str(fake), "--port", str(port))
    assert res.returncode == 1, res
    assert "before it was ready" in res.stderr and "Failed to create server socket" in res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "port in use" in res.stderr


def test_real_rpc_server_rejecting_a_device_fails_with_its_message():
    port = free_port()
    res = worker("--port", str(port), "--device", "NOSUCHDEV")
    assert res.returncode == 1, res
    assert "unknown device" in res.stderr
    assert not rpc_servers_on(port)


def test_script_check_only():
    args = ["--check-only"]
    try:    # the default port may be taken by a real worker on this machine
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 50052))
    except OSError:
        args += ["--port", str(free_port())]
    res = subprocess.run([str(REPO / "scripts" / "rpc-worker"), *args], cwd="/", capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res
    assert "rpc-server -H 127.0.0.1 -p" in res.stdout and "rpc_workers" in res.stdout
