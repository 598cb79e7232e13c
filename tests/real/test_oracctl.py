"""oracctl, the operator's command line, driven as a subprocess against a real oracd + llama-server.

Covered: status/models (human and --json), generate (plain, --stream arriving incrementally and equal
to the plain text at temperature 0), Ctrl-C during a stream (exit 130, llama-server slot freed),
load/unload with progress, quantize with progress to 100% (plain lines and the \\r bar on a tty),
exit codes (1 daemon error, 2 usage, 3 daemon down, 4 permission denied), logs -n across the rotated
files and logs -f across rotations.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from helpers import BIN, REPO, SMOL, Conn, Oracd, write_tiny_f32
from llama_direct import busy_slots, wait_slots_idle

from oracd_client.cli import logs as cli_logs

CLI = [sys.executable, "-m", "oracd_client.cli"]
SMOL_NAME = SMOL[:-len(".gguf")]
LOAD_DELAY = 1.2          # the test llama-server wrapper sleeps this long, so a load shows progress


def run(d: Optional[Oracd], *args: str, timeout: float = 120, socket_path: Optional[str] = None,
        env: Optional[Dict[str, str]] = None, **kw) -> subprocess.CompletedProcess:
    sock = socket_path if socket_path is not None else str(d.socket)
    e = dict(os.environ, **(env or {}))
    e.pop("NO_COLOR", None)
    return subprocess.run([*CLI, "--socket", sock, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env=e, **kw)


def _sigint_default() -> None:
    # A job started in the background by a non-interactive shell (a CI runner's script, `cmd &`)
    # inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler: the Ctrl-C
    # tests would test nothing.  Give oracctl the disposition a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(d: Oracd, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "--socket", str(d.socket), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(REPO), preexec_fn=_sigint_default, **kw)


class Reader(threading.Thread):
    """Reads a pipe in the background, remembering each read (bytes, monotonic time)."""

    def __init__(self, fh) -> None:
        super().__init__(daemon=True)
        self.fd = fh.fileno()
        self.reads: List[Tuple[bytes, float]] = []
        self.eof_at: Optional[float] = None
        self.start()

    def run(self) -> None:
        while True:
            data = os.read(self.fd, 65536)
            if not data:
                self.eof_at = time.monotonic()
                return
            self.reads.append((data, time.monotonic()))

    @property
    def data(self) -> bytes:
        return b"".join(d for d, _ in self.reads)

    def wait_for(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.data):
                return True
            time.sleep(0.02)
        return pred(self.data)


@pytest.fixture(scope="module")
def d():
    """One oracd for the module: small log files (rotation) and a llama-server that starts slowly
    (a wrapper sleeps LOAD_DELAY s before exec), so `oracctl load` has progress to show."""
    root = Path(tempfile.mkdtemp(prefix="oracd-t-", dir="/tmp"))
    wrapper = root / "slowbin" / "llama-server"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n"
                       f'case "$1" in --help|--version) ;; *) sleep {LOAD_DELAY} ;; esac\n'
                       f'exec {BIN / "llama-server"} "$@"\n')
    wrapper.chmod(0o755)
    # ctx 4096: 2048 per slot, so a 2000-token story runs ~20 s and a Ctrl-C always lands mid-stream
    daemon = Oracd(root=root, server={"log_max_bytes": 4096, "log_backups": 2},
                   llama={"server_bin": str(wrapper), "ctx_size": 4096})
    daemon.start()
    yield daemon
    daemon.cleanup()


# ---------------------------------------------------------------------- status / models
def test_status_human_and_json(d):
    r = run(d, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^llama-server\s+ready: " + re.escape(SMOL), out, re.M), out
    assert re.search(r"^socket\s+" + re.escape(str(d.socket)) + "$", out, re.M), out
    assert re.search(r"^log\s+" + re.escape(str(d.log_file)) + "$", out, re.M), out
    assert re.search(r"^oracd\s+\S+, pid \d+, up \d", out, re.M), out
    assert re.search(r"RSS \d+\.\d MB", out), out
    assert "\033[" not in out                          # no colours into a pipe

    r = run(d, "status", "--json")                      # options after the command work too
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["child"]["state"] == "ready" and st["child"]["model"] == SMOL
    assert st["socket"] == str(d.socket)
    r = run(d, "--json", "status")
    assert json.loads(r.stdout)["pid"] == st["pid"]


def test_models_table_shows_size_in_mb(d):
    size = (d.models_dir / SMOL).stat().st_size
    r = run(d, "models")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "QUANT", "ARCH", "PARAMS", "CTX", "LOADED"], lines
    row = next(ln for ln in lines if ln.startswith(SMOL))
    assert f"{size / 1e6:.1f} MB" in row, row
    assert "Q4_1" in row and "llama" in row and row.rstrip().endswith("*"), row
    # columns are aligned: SIZE is right-aligned under its header
    assert lines[0].index("SIZE") + len("SIZE") == row.index(" MB") + len(" MB"), lines

    r = run(d, "models", "--json")
    items = json.loads(r.stdout)
    assert [m["size"] for m in items if m["name"] == SMOL] == [size]


# ---------------------------------------------------------------------- generate
PROMPT = "Name three colours of the rainbow."


def test_generate_plain(d):
    r = run(d, "generate", PROMPT, "--max-tokens", "24", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), r.stdout
    assert re.search(r"\d+ tokens?, [\d.]+ (ms|s), .*finish (stop|length)", r.stderr), r.stderr
    r = run(d, "generate", PROMPT, "--max-tokens", "8", "--temperature", "0", "--json")
    res = json.loads(r.stdout)
    assert res["usage"]["completion_tokens"] <= 8 and res["response"]
    r = run(d, "generate", PROMPT, "--max-tokens", "8", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run(d, "generate", "-", "--max-tokens", "8", input="Say hello.")      # prompt from stdin
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_generate_stream_arrives_incrementally_and_matches_plain(d):
    args = ("generate", PROMPT, "--max-tokens", "48", "--temperature", "0", "-m", SMOL_NAME)
    p = popen(d, *args, "--stream")
    reader = Reader(p.stdout)
    try:
        p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read().decode()
    reader.join(10)
    assert p.returncode == 0, err
    reads = [(data, t) for data, t in reader.reads if data]
    assert reader.eof_at is not None
    assert len(reads) >= 2, f"stdout arrived in one piece: {reads}"
    assert reads[0][1] < reads[-1][1] <= reader.eof_at
    streamed = reader.data.decode()
    assert re.search(r"\d+ tokens?, [\d.]+ (ms|s)", err), err          # the stats line, on stderr
    plain = run(d, *args)
    assert plain.returncode == 0, plain.stderr
    assert streamed == plain.stdout, (streamed, plain.stdout)
    assert streamed.endswith("\n") and streamed.strip()

    r = run(d, "generate", PROMPT, "--max-tokens", "6", "--stream", "--json")
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert all(set(x) == {"text"} for x in lines[:-1]) and len(lines) >= 2, lines
    assert "".join(x["text"] for x in lines[:-1]) == lines[-1]["response"]


def test_ctrl_c_during_stream_exits_130_and_frees_the_slot(d):
    endpoint = d.call("status")["child"]["endpoint"]
    p = popen(d, "generate", "Write a very long story about a dragon and a knight.", "--max-tokens", "2000",
              "--temperature", "0.8", "--stream", "--timeout", "300")
    reader = Reader(p.stdout)
    try:
        assert reader.wait_for(lambda b: len(b) >= 20, 60), (reader.data, p.poll())
        assert busy_slots(endpoint) == 1                    # the generation runs in llama-server
        p.send_signal(signal.SIGINT)
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read().decode()
    assert rc == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert wait_slots_idle(endpoint, 5) < 5
    assert d.call("status")["child"]["state"] == "ready"


def test_stdout_closed_during_stream_exits_141_and_frees_the_slot(d):
    """`oracctl generate --stream ... | head -c 20`: no traceback, and the generation stops upstream."""
    endpoint = d.call("status")["child"]["endpoint"]
    p = popen(d, "generate", "Write a very long story about a lighthouse keeper.", "--max-tokens", "2000",
              "--temperature", "0.8", "--stream", "--timeout", "300")
    try:
        first = p.stdout.read(20)
        assert len(first) == 20
        p.stdout.close()                                        # like head exiting
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read().decode()
    assert rc == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert wait_slots_idle(endpoint, 5) < 5


def test_daemon_error_exits_1_with_code_and_message(d):
    r = run(d, "generate", "hello", "-m", "no-such-model")
    assert r.returncode == 1
    assert "-32001" in r.stderr and "ModelNotFound" in r.stderr and "Model not found" in r.stderr, r.stderr
    assert "no-such-model.gguf" in r.stderr and r.stdout == ""
    r = run(d, "generate", "hello", "-m", "no-such-model", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == -32001
    r = run(d, "generate", "hello", "--temperature", "50")
    assert r.returncode == 1 and "-32602" in r.stderr and "temperature" in r.stderr, r.stderr


def test_usage_errors_exit_2(d):
    for args in ([], ["generate"], ["logs", "-n", "-3"], ["frobnicate"], ["generate", "x", "--max-tokens", "many"],
                 ["eval", "-j", "x"]):
        r = run(d, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert "usage" in r.stderr.lower(), r.stderr
    r = run(d, "--help")
    assert r.returncode == 0
    for code in ("0", "1", "2", "3", "4", "130"):
        assert re.search(rf"^\s+{code}\s+\S", r.stdout, re.M), r.stdout


# ---------------------------------------------------------------------- load / unload
def test_unload_then_load_with_progress(d):
    r = run(d, "unload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"unloaded {SMOL} (llama-server stopped)", r.stdout
    assert d.call("status")["child"]["state"] == "stopped"
    r = run(d, "unload", "--json")
    assert json.loads(r.stdout) == {"unloaded": None, "state": "stopped"}

    t0 = time.monotonic()
    r = run(d, "load", SMOL_NAME)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"loaded {re.escape(SMOL)} in [\d.]+ (ms|s) \(llama-server pid \d+, ready\)\n",
                        r.stdout), r.stdout
    assert took >= LOAD_DELAY
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("load ")]
    assert progress, r.stderr                                          # a slow start shows its progress
    assert all(re.match(rf"load {re.escape(SMOL)}: \w+, [\d.]+ (ms|s)$", ln)
               for ln in progress), progress
    assert d.call("status")["child"]["state"] == "ready"

    r = run(d, "load", "--json")            # already loaded: the raw result, no progress
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "ready" and r.stderr == ""
    r = run(d, "load", "no-such-model")
    assert r.returncode == 1 and "-32001" in r.stderr


# ---------------------------------------------------------------------- quantize
def _percents(text: str) -> List[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d)?)%", text)]


def test_quantize_shows_progress_to_100_percent(d):
    write_tiny_f32(d.models_dir / "tiny-f32.gguf")
    r = run(d, "quantize", "tiny-f32", "tiny-q8", "-t", "q8_0")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("quantize")]
    pcts = _percents("\n".join(lines))
    assert len(lines) >= 2 and pcts == sorted(pcts) and pcts[-1] == 100, r.stderr
    assert len(lines) <= 11, r.stderr                         # one line per 10% at most (not per tensor)
    assert re.search(r"100%\s+(\d+)/\1 tensors", lines[-1]), lines
    out = d.models_dir / "tiny-q8.gguf"
    assert out.exists()
    kb = f"{out.stat().st_size / 1e3:.1f} kB"
    assert re.fullmatch(rf"quantized tiny-f32 -> tiny-q8\.gguf \(Q8_0, {kb}\) in [\d.]+ (ms|s)",
                        r.stdout.splitlines()[0]), r.stdout
    assert r.stdout.splitlines()[1].strip() == str(out)

    r = run(d, "quantize", "tiny-f32", "tiny-q8", "-t", "q8_0")
    assert r.returncode == 1 and "-32011" in r.stderr and "--overwrite" in r.stderr, r.stderr
    r = run(d, "quantize", "tiny-f32", "tiny-q8", "-t", "q8_0", "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] is True and res["path"] == str(out) and res["quantization_type"] == "q8_0"
    assert "%" not in r.stderr                                # --json: just the result
    r = run(d, "quantize", "nothing-here", "x-q8")
    assert r.returncode == 1 and "-32001" in r.stderr, r.stderr


def test_quantize_progress_bar_on_a_tty(d):
    write_tiny_f32(d.models_dir / "tiny2-f32.gguf")
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([*CLI, "--socket", str(d.socket), "quantize", "tiny2-f32", "tiny2-q4", "-t", "q4_0",
                              "--overwrite"], stdout=subprocess.PIPE, stderr=slave, cwd=str(REPO),
                             env=dict(os.environ, TERM="xterm", COLUMNS="120"))
        os.close(slave)
        slave = -1
        buf = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:            # EIO: the child closed the tty
                    break
                if not chunk:
                    break
                buf += chunk
            elif p.poll() is not None:
                break
        rc = p.wait(30)
        out = p.stdout.read().decode()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    text = buf.decode(errors="replace")
    assert rc == 0, text
    assert text.count("\r") >= 2, text                      # redrawn in place
    assert re.search(r"\[#+\]\s+100\.0%", text), text        # the bar completes
    assert "ETA" in text or "done in" in text
    assert out.startswith("quantized tiny2-f32 -> tiny2-q4.gguf (Q4_0,"), out


# ---------------------------------------------------------------------- exit codes 3 and 4
def test_daemon_down_exits_3_with_an_actionable_message(tmp_path):
    missing = str(tmp_path / "nothing.sock")
    r = run(None, "status", socket_path=missing)
    assert r.returncode == 3, r.stderr
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert f"oracd is not running at {missing}" in msg and "sudo systemctl start oracd" in msg, msg
    # a stale socket file (nobody listening): same code, says so
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    r = run(None, "generate", "hi", socket_path=str(stale))
    assert r.returncode == 3 and "connection refused" in r.stderr, r.stderr
    # ORACD_SOCKET is honoured when --socket is not given
    r = subprocess.run([*CLI, "models"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, ORACD_SOCKET=missing))
    assert r.returncode == 3 and missing in r.stderr, r.stderr


def _python_for(uid: int) -> Tuple[str, Dict[str, str]]:
    """An interpreter that ``uid`` may run (the venv's may live under /root), with an env that
    imports this checkout's client, oracd_protocol and the venv's packages (same Python version)."""
    want = "%d.%d" % sys.version_info[:2]
    paths = sysconfig.get_paths()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(REPO / "client"), str(REPO), paths["purelib"], paths["platlib"]]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    tried = []
    for cand in dict.fromkeys([sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                               "/usr/bin/python3", shutil.which("python3") or "", f"/usr/bin/python{want}"]):
        if not cand:
            continue
        try:
            r = subprocess.run([cand, "-c", "import sys, pydantic; print('%d.%d' % sys.version_info[:2])"],
                               user=uid, capture_output=True, text=True, timeout=60, cwd="/", env=env)
        except OSError as exc:
            tried.append(f"{cand}: {exc}")
            continue
        if r.returncode == 0 and r.stdout.strip() == want:
            return cand, env
        tried.append(f"{cand}: rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()[-200:]}")
    raise AssertionError(f"no Python {want} runnable as uid {uid}: " + "; ".join(tried))


def test_permission_denied_exits_4_with_the_group_hint(d):
    assert os.geteuid() == 0, "this test runs the CLI as another uid, so the suite must run as root"
    uid = 12345
    py, env = _python_for(uid)
    sock = str(d.socket)
    old_mode = stat.S_IMODE(d.root.stat().st_mode)
    d.root.chmod(0o711)                                       # traversable, so the socket's own mode decides
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) & 0o007 == 0          # 0660 root:root: not for uid 12345
        r = subprocess.run([py, "-m", "oracd_client.cli", "--socket", sock, "status"], user=uid, group=uid,
                           extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/", env=env)
        assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
        msg = r.stderr.strip()
        assert len(msg.splitlines()) == 1, msg
        assert f"permission denied on {sock}" in msg and "sudo usermod -aG orac $USER" in msg, msg
        assert "log in again" in msg
        # control: the same uid gets through once the socket lets it
        os.chmod(sock, 0o666)
        try:
            r = subprocess.run([py, "-m", "oracd_client.cli", "--socket", sock, "status", "--json"], user=uid,
                               group=uid, extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/",
                               env=env)
        finally:
            os.chmod(sock, 0o660)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["child"]["state"] == "ready"
    finally:
        d.root.chmod(old_mode)


def test_uid_refused_by_oracd_exits_4(fresh_oracd):
    other = fresh_oracd(server={"allowed_uids": [12345]}, llama={"preload": False}).start(wait=False)
    deadline = time.monotonic() + 90           # Oracd.wait_ready asks status, which this oracd refuses to root
    while True:
        assert other.proc.poll() is None, other.stderr_tail()
        try:
            with Conn(other.socket, timeout=5) as c:
                c.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
                assert c.recv()["error"]["code"] == -32013
                break
        except (OSError, EOFError):
            assert time.monotonic() < deadline, other.stderr_tail()
            time.sleep(0.1)
    r = run(other, "status")
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert f"permission denied on {other.socket}" in r.stderr and "allowed_uids" in r.stderr, r.stderr


# ---------------------------------------------------------------------- logs
def _all_lines(log: Path) -> List[str]:
    out: List[str] = []
    for p in cli_logs.rotated_files(log):
        out += [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return out


def _mark(d: Oracd, tag: str, n: int, pause: float = 0.0) -> None:
    with Conn(d.socket) as c:
        for i in range(n):
            c.send_raw(json.dumps({"jsonrpc": "2.0", "id": f"{tag}-{i}", "method": "status"}).encode() + b"\n")
            assert c.recv()["id"] == f"{tag}-{i}"
            if pause:
                time.sleep(pause)


def test_logs_last_lines_across_rotated_files(d):
    _mark(d, "tail", 80)                           # ~200 bytes each: several rotations at 4 kB
    log = d.log_file
    assert log.with_name("orac.log.1").exists() and log.with_name("orac.log.2").exists()
    n = len(log.read_text().splitlines()) + 10      # more than orac.log holds: must reach into .1
    for _attempt in range(5):
        before = _all_lines(log)
        r = run(d, "logs", "-n", str(n), "--json", "--file", str(log))
        if _all_lines(log) == before:               # nothing logged meanwhile: compare exactly
            break
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == before[-n:]

    r = run(d, "logs", "-n", "15")                  # human: path from status, our own status call hidden
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 15, r.stdout
    tail_ids = re.findall(r"id=tail-(\d+)", r.stdout)
    assert tail_ids and tail_ids[-1] == "79", r.stdout
    for ln in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|DEBUG|WARNING|ERROR)\s+\S+", ln), ln
    req = next(ln for ln in lines if "id=tail-79" in ln)
    assert re.search(r"oracd\.request\s+request\s+method=status id=tail-79 peer_pid=\d+ peer_uid=0 ms=[\d.]+ "
                     r"outcome=ok", req), req


def test_logs_pretty_print_marks_llama_server_lines():
    fmt = cli_logs.Formatter(colour=False)
    line = fmt(json.dumps({"source": "llama-server", "stream": "stderr", "pid": 42, "event": "srv  load_model: x",
                           "level": "info", "timestamp": "2026-01-02T03:04:05.678901Z", "logger": "oracd.child"}
                          ).encode())
    assert re.search(r" INFO\s+llama-server\[42\]\s+srv  load_model: x$", line), line
    line = fmt(json.dumps({"event": "child state", "level": "warning", "timestamp": "2026-01-02T03:04:05Z",
                           "logger": "oracd.supervisor", "state": "backoff", "error": "exit 1: boom",
                           "exception": "Traceback...\nValueError: x"}).encode())
    first, *rest = line.splitlines()
    assert re.search(r" WARNING oracd\.supervisor\s+child state  state=backoff error=\"exit 1: boom\"$", first), line
    assert rest == ["    Traceback...", "    ValueError: x"]
    assert fmt(b"not json at all\n") == "not json at all"


def test_logs_follow_across_rotation(d):
    log = d.log_file
    p = popen(d, "logs", "-f", "-n", "0")
    reader = Reader(p.stdout)
    try:
        # wait until the follower is reading: marks sent before it opened the file would not show
        for i in range(100):
            _mark(d, f"ready{i}", 1)
            if reader.wait_for(lambda b: b"id=ready" in b, 0.3):
                break
        else:
            raise AssertionError(f"logs -f printed nothing: {reader.data!r} {p.poll()}")
        _mark(d, "follow", 120, pause=0.01)        # ~23 kB of request lines: several rotations at 4 kB
        assert b'"follow-0"' not in log.read_bytes(), "no rotation happened"   # (inodes get reused)
        assert reader.wait_for(lambda b: b"id=follow-119 " in b, 20), reader.data[-2000:]
        p.send_signal(signal.SIGINT)
        rc = p.wait(60)                            # generous: a loaded 2-core box
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(10)
    assert rc == 130, p.stderr.read()
    ids = [int(x) for x in re.findall(r"id=follow-(\d+) ", reader.data.decode())]
    assert ids == list(range(120)), ids            # every line once, in order, across the rotations


def test_logs_follow_waits_for_new_lines_in_a_file(tmp_path):
    """Unit-level: rotation by rename, then truncation, with a plain file and the Follower."""
    log = tmp_path / "orac.log"
    log.write_text('{"event": "a", "level": "info", "timestamp": "2026-01-01T00:00:00Z"}\n')
    f = cli_logs.Follower(log, start_at_end=True)
    assert f.poll() == []
    with open(log, "a") as fh:
        fh.write('{"event": "b"}\n{"event": "partial')
    assert f.poll() == [b'{"event": "b"}']
    with open(log, "a") as fh:
        fh.write('"}\n')
    assert f.poll() == [b'{"event": "partial"}']
    with open(log, "a") as fh:
        fh.write('{"event": "c"}\n')
    os.replace(log, tmp_path / "orac.log.1")            # rotation: c is still in the old file
    assert f.poll() == [b'{"event": "c"}']
    log.write_text('{"event": "d"}\n')
    got = f.poll() + f.poll()
    assert got == [b'{"event": "d"}'], got
    # two rotations between polls: the intermediate file is read too, oldest first
    with open(log, "a") as fh:
        fh.write('{"event": "e"}\n')
    os.replace(tmp_path / "orac.log.1", tmp_path / "orac.log.2")
    os.replace(log, tmp_path / "orac.log.1")
    log.write_text('{"event": "f"}\n')
    os.replace(tmp_path / "orac.log.1", tmp_path / "orac.log.2")
    os.replace(log, tmp_path / "orac.log.1")
    log.write_text('{"event": "g"}\n')
    got = f.poll() + f.poll()
    assert got == [b'{"event": "e"}', b'{"event": "f"}', b'{"event": "g"}'], got
    log.write_text("")                                   # truncated in place (then a shorter line)
    with open(log, "a") as fh:
        fh.write('{"e": "h"}\n')
    got = f.poll() + f.poll()
    assert got == [b'{"e": "h"}'], got
    f.close()


def test_eval_subcommand_runs_the_harness(tmp_path):
    """`oracctl eval` runs the eval harness on a small corpus against the real daemon."""
    corpus = tmp_path / "mini.jsonl"
    src = (REPO / "client" / "oracd_client" / "cli" / "data" / "commands.jsonl").read_text().splitlines()[:3]
    corpus.write_text("\n".join(src) + "\n")
    with Oracd(llama={"profiles_file": str(REPO / "etc" / "models.toml")}) as o:
        out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "eval",
                              "--corpus", str(corpus), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    text = json.dumps(report)
    assert "valid" in text and "SmolLM2" in text
