"""The box's own faults against a real oracd (its llama-server the scripted stand-in, healthy): a full log
disk, file descriptors run out, a handler that raises.  oracd must stay up and keep serving through each.

The disk is a real 64 KiB tmpfs (mounting needs root, as in CI); the fd limit is a real RLIMIT_NOFILE set
on the oracd process; the failure is injected by a bootstrap that monkeypatches oracd before its main.
"""
from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import pytest

from helpers import stand_in_script, wait_for, Conn, RPCError, fill, log_events, mount_tmpfs, umount_tmpfs, write_tiny_f32

MODEL = "fake.gguf"


@pytest.fixture
def healthy(fresh_oracd, tmp_path):
    """An oracd whose llama-server is the healthy stand-in; Oracd options and llama options as keywords."""
    def make(llama=None, **kw):
        wrapper = stand_in_script(tmp_path, "healthy")
        o = fresh_oracd(models=(), llama={"server_bin": str(wrapper), "default_model": MODEL, **(llama or {})},
                        **kw)
        write_tiny_f32(o.models_dir / MODEL)
        return o
    return make


@pytest.fixture
def tmpfs():
    mounted = []

    def make(directory: Path, size: str = "64k") -> Path:
        mount_tmpfs(directory, size)
        mounted.append(directory)
        return directory
    yield make
    for d in mounted:
        umount_tmpfs(d)




def test_a_full_log_disk_drops_lines_serves_on_and_logging_resumes_when_space_frees(healthy, tmpfs):
    """log_dir on a 64 KiB tmpfs filled to the last byte: 80 generates in a row are all answered, oracd
    stays up, status.logging counts the dropped lines, stderr says once that the file fails, the metric
    counts them; deleting the filler brings new lines into orac.log (the file is retried every 5 s)."""
    o = healthy()
    tmpfs(o.log_dir)
    o.start()
    filler = fill(o.log_dir)
    before = len(log_events(o, "request"))
    with o.conn() as c:
        for i in range(80):
            assert c.call("generate", prompt=f"turn on light {i}", max_tokens=2)["response"] == "hello"
    assert o.proc.poll() is None
    st = o.call("status")["logging"]
    assert st["ok"] is False and st["last_error"].startswith("ENOSPC"), st
    # tmpfs hands out whole pages: the log file's last page took a few more lines before ENOSPC
    in_file = len(log_events(o, "request")) - before
    assert st["dropped_lines"] >= 40 and st["dropped_lines"] + in_file >= 80, (st, in_file)
    assert st["file"] == str(o.log_file) and st["since"] is not None
    assert o.stderr_tail(10_000).count("is failing (ENOSPC") == 1
    text = o.call("metrics")["text"]
    dropped = [ln for ln in text.splitlines() if ln.startswith("oracd_log_lines_dropped_total ")]
    assert dropped and float(dropped[0].split()[1]) >= st["dropped_lines"], dropped
    filler.unlink()
    # the file is retried when a line is due and 5 s have passed: keep the daemon talking meanwhile
    wait_for(lambda: o.call("status") and log_events(o, "log file writable again"), 30, "logging resuming")
    recovered = log_events(o, "log file writable again")[0]
    assert recovered["dropped_lines"] >= st["dropped_lines"] and recovered["last_error"].startswith("ENOSPC")
    o.call("generate", prompt="after", max_tokens=2)
    assert any(r.get("method") == "generate" for r in log_events(o, "request")[-3:])
    assert o.call("status")["logging"]["ok"] is True
    lines = o.log_file.read_text().splitlines()
    cut = [i for i, line in enumerate(lines) if not _is_json(line)]
    assert len(cut) <= 1, [lines[i] for i in cut]       # at most the line ENOSPC cut in half...
    for i in cut:                                        # ...alone on its line, the next one whole
        assert json.loads(lines[i + 1])["event"] == "log file writable again"


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _answered(socks, answered, timeout, quiet=None):
    """Read whatever answers arrive on ``socks`` for up to ``timeout`` s (or until none came for ``quiet`` s);
    the set of answered indexes."""
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    pending = {s.fileno(): i for i, s in enumerate(socks) if i not in answered}
    while pending and time.monotonic() < deadline and (quiet is None or time.monotonic() - last < quiet):
        ready, _, _ = select.select(list(pending), [], [], 0.2)
        last = time.monotonic() if ready else last
        for fd in ready:
            i = pending.pop(fd)
            try:
                if socks[i].recv(65536):
                    answered.add(i)
            except OSError:
                pass
    return answered


def test_out_of_file_descriptors_oracd_pauses_accepting_and_serves_on(healthy):
    """RLIMIT_NOFILE 64 (soft and hard) and 120 clients at once: accept() runs out of descriptors, oracd
    pauses accepting instead of dying, says so in the log and status; once the clients close, a new
    client's generate is answered.  At start it warned that 64 is below what its limits can use."""
    o = healthy(nofile=64).start()
    warned = log_events(o, "file descriptor limit below what oracd's limits can use")
    assert warned and warned[0]["limit"] == 64 and warned[0]["needed"] > 64
    assert o.call("status")["fds"] == {"limit": 64, "needed": warned[0]["needed"], "fits": False}
    socks = []
    try:
        for _ in range(120):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(o.socket))
            s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
            socks.append(s)
        wait_for(lambda: log_events(o, "accept paused"), 30, "accept paused in the log")
        # some were served, the rest wait in the backlog while accepting is paused
        answered = _answered(socks, set(), 30, quiet=1.0)
        assert 0 < len(answered) < 120, len(answered)
        assert log_events(o, "accept paused")[0]["error"] == "EMFILE"
        assert o.proc.poll() is None
    finally:
        for s in socks:
            s.close()
    with Conn(o.socket, timeout=60) as c:
        assert c.call("generate", prompt="after the flood", max_tokens=2)["response"] == "hello"
        st = c.call("status")
    assert st["accept"]["errors"].get("EMFILE", 0) >= 1 and st["accept"]["last_error"] == "EMFILE"
    assert 'oracd_accept_errors_total{error="EMFILE"}' in o.call("metrics")["text"]
    assert o.proc.poll() is None


def test_the_soft_fd_limit_is_raised_to_the_hard_limit_at_start(healthy):
    """Started with soft 64 / hard 8192, oracd runs with 8192 (no privilege needed) and says so."""
    o = healthy(nofile=(64, 8192)).start()
    assert o.call("status")["fds"]["limit"] == 8192 and o.call("status")["fds"]["fits"] is True
    with open(f"/proc/{o.proc.pid}/limits") as fh:
        row = next(line for line in fh if line.startswith("Max open files"))
    assert row.split()[3:5] == ["8192", "8192"], row
    said = log_events(o, "file descriptor limit")
    assert said and said[0]["was"] == 64 and said[0]["limit"] == 8192


BOOTSTRAP = """
import os, oracd.api.connection as conn, oracd.child.http as http
MARK = os.environ["ORACD_TEST_MARK"]

def _armed(what):
    try:
        os.unlink(MARK + "." + what)
        return True
    except FileNotFoundError:
        return False

_peer_of = conn.peer_of
def peer_of(sock):
    if _armed("admit"):
        raise RuntimeError("injected: admitting a connection")
    return _peer_of(sock)
conn.peer_of = peer_of

_take = conn.Connection._take
async def take(self, line):
    if b"BOOM" in bytes(line):
        raise RuntimeError("injected: reading a request")
    await _take(self, line)
conn.Connection._take = take

_close = http.LlamaHTTP.close
async def close(self):
    await _close(self)
    if _armed("close"):
        raise OSError(5, "injected: closing llama-server's HTTP client")
http.LlamaHTTP.close = close
"""


def test_a_handler_that_raises_ends_only_its_own_connection(healthy, tmp_path):
    """Failures injected into three places -- admitting a connection, reading a request, and a supervisor
    helper task (closing the child's HTTP client) -- each end only what they belong to, logged with an
    incident id; another client's open connection and the daemon carry on."""
    mark = tmp_path / "mark"
    o = healthy(bootstrap=BOOTSTRAP, env={"ORACD_TEST_MARK": str(mark)}).start()
    with Conn(o.socket, timeout=60) as other:
        assert other.call("generate", prompt="before", max_tokens=2)["response"] == "hello"

        Path(f"{mark}.admit").touch()                    # the next connection fails while being admitted
        with Conn(o.socket, timeout=30) as victim:
            with pytest.raises(RPCError) as err:
                victim.call("status")
            assert err.value.code == -32603 and len(err.value.data["incident"]) == 12
        assert other.call("status")["pid"] == o.proc.pid

        with Conn(o.socket, timeout=30) as victim:       # a request line that makes the connection fail
            victim.send_raw(b'{"jsonrpc": "2.0", "id": 7, "method": "status", "params": {"x": "BOOM"}}\n')
            answer = json.loads(victim.recv_line())
            assert answer["error"]["code"] == -32603 and answer["error"]["data"]["incident"]
        failed = log_events(o, "connection failed")
        assert len(failed) == 2 and all(f["incident"] for f in failed)
        assert "injected: reading a request" in failed[-1]["exception"]

        Path(f"{mark}.close").touch()                    # the supervisor's helper task raises
        assert other.call("unload_model", timeout=30)["state"] in ("idle", "stopped")
        wait_for(lambda: log_events(o, "closing llama-server's HTTP client failed"), 15, "helper failure logged")
        assert other.call("load_model", timeout=30)["state"] == "ready"
        assert other.call("generate", prompt="after", max_tokens=2)["response"] == "hello"
    assert o.proc.poll() is None
    assert not Path(f"{mark}.admit").exists() and not Path(f"{mark}.close").exists()


def test_a_taken_metrics_port_leaves_oracd_serving_without_its_http_listener(healthy):
    """server.metrics_listen on a port another process holds: oracd starts anyway, says so in the log, and
    the metrics RPC still answers (before, the bind error ended startup)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        o = healthy(server={"metrics_listen": f"127.0.0.1:{port}"}).start()
        failed = log_events(o, "metrics listener failed; serving without it")
        assert failed and failed[0]["address"] == f"127.0.0.1:{port}"
        assert "oracd_requests_total" in o.call("metrics")["text"]
        assert o.call("generate", prompt="hi", max_tokens=2)["response"] == "hello"
        assert o.proc.poll() is None
