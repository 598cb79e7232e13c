"""oracd_protocol.blocking against a scripted JSON-RPC peer on a Unix socket (a thread; no oracd)."""
from __future__ import annotations

import errno
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from oracd_protocol.blocking import BlockingClient, LineTooLong, call_sync
from oracd_protocol.errors import Busy, CallTimeout, ConnectionLost, InvalidParams, ModelNotFound, OracdUnavailable


def read_request(conn: socket.socket) -> Dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    return json.loads(buf)


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class Peer:
    """Accepts one connection and runs ``script(conn)`` on it in a thread."""

    def __init__(self, path: Path, script: Callable[[socket.socket], None]):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.errors: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script: Callable[[socket.socket], None]) -> None:
        conn, _ = self.listener.accept()
        try:
            script(conn)
        except BaseException as exc:   # reported by the test, not lost in the thread
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()
        assert not self.errors, self.errors


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="proto-", dir="/tmp"))      # short: Unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def peer(sock_dir):
    made: List[Peer] = []

    def start(script: Callable[[socket.socket], None]) -> Path:
        p = Peer(sock_dir / f"s{len(made)}.sock", script)
        made.append(p)
        return p.path

    yield start
    for p in made:
        p.close()


def test_call_sync_routes_its_notifications_and_skips_everything_else(peer):
    def script(conn: socket.socket) -> None:
        req = read_request(conn)
        rid = req["id"]
        assert req["method"] == "quantize_model" and req["params"] == {"input_model": "a"}
        conn.sendall(b"not json\n" + line([1, 2]) + line({"jsonrpc": "2.0", "id": rid + 1000, "result": "other"})
                     + line({"jsonrpc": "2.0", "method": "quantize.progress", "params": {"id": rid + 1, "done": 9}}))
        for done in (1, 2):   # split lines across sends
            msg = line({"jsonrpc": "2.0", "method": "quantize.progress", "params": {"id": rid, "done": done}})
            conn.sendall(msg[:7])
            time.sleep(0.01)
            conn.sendall(msg[7:])
        conn.sendall(line({"jsonrpc": "2.0", "id": rid, "result": {"ok": True}}))

    path = peer(script)
    seen = []
    r = call_sync("quantize_model", {"input_model": "a"}, socket_path=str(path), timeout=10,
                  on_notify=lambda m, p: seen.append((m, p["done"])))
    assert r == {"ok": True}
    assert seen == [("quantize.progress", 1), ("quantize.progress", 2)]


def test_call_sync_raises_the_named_error_with_the_detail(peer):
    def script(conn: socket.socket) -> None:
        rid = read_request(conn)["id"]
        conn.sendall(line({"jsonrpc": "2.0", "id": rid,
                           "error": {"code": -32602, "message": "Invalid params", "data": "top_k: expected integer"}}))

    path = peer(script)
    with pytest.raises(InvalidParams) as ei:
        call_sync("generate", {"prompt": "x"}, socket_path=str(path), timeout=10)
    assert ei.value.message == "Invalid params: top_k: expected integer"


def test_an_id_less_error_line_on_connect_is_raised(peer):
    """oracd refuses a connection (Busy) by writing one error line and closing, maybe before reading ours."""
    def script(conn: socket.socket) -> None:
        conn.sendall(line({"jsonrpc": "2.0", "id": None, "error": {"code": -32005, "message": "too many"}}))

    path = peer(script)
    with pytest.raises(Busy, match="too many"):
        call_sync("status", socket_path=str(path), timeout=10)


def test_a_connection_closed_before_the_answer_is_connection_lost(peer):
    def script(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b'{"jsonrpc":"2.0","id":')           # half a line, then gone

    path = peer(script)
    with pytest.raises(ConnectionLost) as ei:
        call_sync("status", socket_path=str(path), timeout=10)
    assert str(ei.value) == f"connection to oracd at {path} closed before it answered status"
    assert ei.value.socket_path == str(path)


def test_no_answer_in_time_is_call_timeout_after_the_whole_bound(peer):
    release = threading.Event()

    def script(conn: socket.socket) -> None:
        read_request(conn)
        for _ in range(4):                 # notifications keep coming: they must not extend the deadline
            conn.sendall(line({"jsonrpc": "2.0", "method": "load.progress", "params": {"id": 0}}))
            time.sleep(0.1)
        release.wait(10)

    path = peer(script)
    t0 = time.monotonic()
    with pytest.raises(CallTimeout) as ei:
        call_sync("load_model", socket_path=str(path), timeout=0.6)
    took = time.monotonic() - t0
    release.set()
    assert str(ei.value) == "oracd did not answer load_model within 0.6 seconds"
    assert 0.55 <= took < 3, took


def test_no_daemon_is_oracd_unavailable_naming_the_socket(sock_dir):
    path = sock_dir / "nobody.sock"
    with pytest.raises(OracdUnavailable) as ei:
        call_sync("status", socket_path=str(path), timeout=5)
    assert ei.value.errno == errno.ENOENT and ei.value.socket_path == str(path)
    msg = str(ei.value)
    assert msg.startswith(f"cannot connect to oracd at {path}: No such file or directory. Is oracd running?")
    assert "ORACD_SOCKET" in msg


def test_blocking_client_request_keeps_notifications_and_returns_errors_whole(peer):
    def script(conn: socket.socket) -> None:
        rid = read_request(conn)["id"]
        conn.sendall(line({"jsonrpc": "2.0", "method": "load.progress", "params": {"id": rid, "state": "loading"}})
                     + line({"jsonrpc": "2.0", "id": rid, "error": {"code": -32001, "message": "Model not found: m"}}))
        rid = read_request(conn)["id"]
        conn.sendall(line({"jsonrpc": "2.0", "id": rid, "error": {"code": -32001, "message": "Model not found: n"}}))
        assert read_request(conn)["params"] == {"raw": True}
        conn.sendall(b'{"a":1}\n' + b"x" * 200 + b"\n" + b'{"b":2}\n')

    path = peer(script)
    with BlockingClient(path, timeout=10) as c:
        resp = c.request("load_model", {"model": "m"})
        assert resp["error"]["code"] == -32001 and "result" not in resp
        assert [n["params"]["state"] for n in c.notifications] == ["loading"]
        with pytest.raises(ModelNotFound, match="Model not found: n"):
            c.call("load_model", {"model": "n"})
        assert c.notifications == []                 # only the last request's
        c.send_raw(b'{"jsonrpc":"2.0","method":"x","params":{"raw":true}}\n')
        assert c.recv() == {"a": 1}
        assert c.recv_line() == b"x" * 200 and c.recv() == {"b": 2}
    assert c.sock.fileno() == -1                     # closed by the with block


def test_over_long_answer_line_is_skipped_with_an_error(peer):
    def script(conn: socket.socket) -> None:
        conn.sendall(b"x" * 200 + b"\n" + b'{"b":2}\n')
        time.sleep(0.2)

    path = peer(script)
    with BlockingClient(path, timeout=10, max_line=100) as c:
        with pytest.raises(LineTooLong):
            c.recv_line()
        assert c.recv() == {"b": 2}                  # the connection is still in sync


def test_kernel_timeouts_mean_no_python_timeout_and_still_a_call_timeout(peer):
    release = threading.Event()

    def script(conn: socket.socket) -> None:
        read_request(conn)
        release.wait(10)

    path = peer(script)
    with BlockingClient(path, timeout=0.3, kernel_timeouts=True) as c:
        assert c.sock.gettimeout() is None            # blocking socket: no poll() per call
        t0 = time.monotonic()
        with pytest.raises(CallTimeout):
            c.call("status")
        assert 0.25 <= time.monotonic() - t0 < 3
        with pytest.raises(ValueError):
            c.call("status", timeout=1)               # per-call deadlines need Python timeouts
    release.set()


def test_an_on_notify_exception_is_the_callers_and_closes_the_connection(peer):
    hung_up = threading.Event()

    def script(conn: socket.socket) -> None:
        rid = read_request(conn)["id"]
        conn.sendall(line({"jsonrpc": "2.0", "method": "generate.chunk", "params": {"id": rid, "text": "hi"}}))
        conn.settimeout(5)
        if conn.recv(100) == b"":      # what makes oracd abort the generation
            hung_up.set()

    def boom(method: str, params: Dict[str, Any]) -> None:
        raise KeyboardInterrupt

    path = peer(script)
    with pytest.raises(KeyboardInterrupt):
        call_sync("generate", {"prompt": "x", "stream": True}, socket_path=str(path), timeout=10, on_notify=boom)
    assert hung_up.wait(5)
