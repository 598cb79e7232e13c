"""Hostile clients, against a real oracd (the scripted stand-in as llama-server): nothing a client names is
read from disk, and no client starves the others (batches, blank lines, connections per uid, the log)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from helpers import stand_in_script, Conn, log_events, wait_for, write_tiny_f32

MODEL = "fake.gguf"


@pytest.fixture
def healthy(fresh_oracd, tmp_path):
    """An oracd whose llama-server is the stand-in answering "hello"; extra [server] settings as keywords."""
    def make(preload: bool = True, **server):
        wrapper = stand_in_script(tmp_path, "healthy")
        o = fresh_oracd(models=(), server=server,
                        llama={"server_bin": str(wrapper), "default_model": MODEL, "threads": 1, "preload": preload})
        write_tiny_f32(o.models_dir / MODEL)
        return o.start()
    return make


class StatusProbe:
    """Another client asking ``status`` in a loop on its own connection: every round trip's latency."""

    def __init__(self, o):
        self.o = o
        self.latencies: List[float] = []
        self.failures: List[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Conn(self.o.socket, timeout=15) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    c.call("status")
                except Exception as exc:          # a timeout here is the daemon frozen
                    self.failures.append(repr(exc))
                    return
                self.latencies.append(time.monotonic() - t0)
                time.sleep(0.01)

    def __enter__(self) -> "StatusProbe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def _rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


def test_files_named_in_grammar_or_json_schema_are_refused_and_status_keeps_answering(healthy, tmp_path):
    """A FIFO, a 0600 file, a symlink, a path outside the models dir, a relative path and a NUL: all -32602
    with one message (no path oracle), the FIFO is never opened, and status from another client answers
    throughout (max latency is a hang detector here, not a benchmark)."""
    o = healthy()
    secret = tmp_path / "creds.json"
    secret.write_text('{"type": "object", "properties": {"pw": {"const": "hunter2"}}}')
    secret.chmod(0o600)
    gbnf = o.models_dir / "secret.gbnf"
    gbnf.write_text('root ::= "hunter2"')
    gbnf.chmod(0o600)
    fifo = tmp_path / "x.gbnf"
    os.mkfifo(fifo)
    fifo_json = tmp_path / "y.json"
    os.mkfifo(fifo_json)
    link = tmp_path / "link.gbnf"
    link.symlink_to(gbnf)
    hostile = [("grammar", str(fifo)), ("grammar", str(gbnf)), ("grammar", str(link)), ("grammar", "secret.gbnf"),
               ("grammar", "../../../" + str(gbnf)), ("grammar", str(tmp_path / "missing.gbnf")),
               ("json_schema", str(secret)), ("json_schema", str(fifo_json)),
               ("json_schema", "../../../" + str(secret)), ("json_schema", str(tmp_path / "missing.json"))]
    messages = set()
    with StatusProbe(o) as probe, o.conn(timeout=30) as c:
        wait_for(lambda: probe.latencies or probe.failures, 10, "the status probe to be running")
        rounds = 0
        while rounds < 3 or (len(probe.latencies) < 5 and rounds < 500):    # status probed while they run
            rounds += 1
            for param, value in hostile:
                resp = c.request("generate", prompt="turn on the lights", max_tokens=4, **{param: value})
                assert resp["error"]["code"] == -32602, (param, value, resp)
                assert resp["error"]["data"] == {"param": param, "reason": "path_not_allowed"}, resp
                assert "hunter2" not in json.dumps(resp)
                messages.add(resp["error"]["message"].replace(param, "P"))
        nul = c.request("generate", prompt="hi", grammar=str(fifo) + "\x00.gbnf")
        assert nul["error"]["code"] == -32602 and nul["error"]["data"]["reason"] == "nul_byte", nul
    assert not probe.failures, probe.failures
    assert len(probe.latencies) >= 5
    worst = max(probe.latencies)
    print(f"status round trips during hostile requests: n={len(probe.latencies)} max={worst * 1000:.1f} ms "
          f"median={sorted(probe.latencies)[len(probe.latencies) // 2] * 1000:.1f} ms")
    # a FIFO opened on the event loop would block it for good: status answers at all (no latency bound: a
    # loaded 2-core box stretches round trips)
    assert worst < 10, f"status took {worst:.2f}s while hostile requests ran"
    assert len(messages) == 1, messages
    for f in (fifo, fifo_json):               # no reader ever held the FIFO open: a writer finds none
        with pytest.raises(OSError):
            os.open(f, os.O_WRONLY | os.O_NONBLOCK)


def test_inline_grammar_and_schema_still_work(healthy):
    o = healthy()
    with o.conn(timeout=60) as c:
        assert c.call("generate", prompt="hi", max_tokens=4, grammar='root ::= "hello"')["response"] == "hello"
        assert c.call("generate", prompt="hi", max_tokens=4, grammar="json")["response"] == "hello"
        # (compact output, the default for "command", takes llama-server's /apply-template and token paths,
        # which the stand-in does not speak: tests/real/test_fast_forward.py covers it on the real server)
        assert c.call("generate", prompt="hi", max_tokens=4, json_schema="command",
                      compact_json=False)["response"] == "hello"
        assert c.call("generate", prompt="hi", max_tokens=4, json_schema={"type": "object"})["response"] == "hello"
        big = c.request("generate", prompt="hi", grammar='root ::= "' + "x" * 70_000 + '"')
        assert big["error"]["code"] == -32602 and big["error"]["data"]["reason"] == "too_large", big["error"]


@pytest.mark.parametrize("params, param", [
    ({"prompt": "a\x00b"}, "prompt"),
    ({"prompt": "hi", "system_prompt": "s\x00"}, "system_prompt"),
    ({"prompt": "hi", "prefill": "{\x00"}, "prefill"),
    ({"prompt": "hi", "stop": ["\x00"]}, "stop"),
    ({"prompt": "hi", "grammar": "\x00"}, "grammar"),
    ({"prompt": "hi", "json_schema": ["x"]}, "json_schema"),
    ({"prompt": "hi", "json_schema": 3}, "json_schema"),
    ({"prompt": "hi", "grammar": 3}, "grammar"),
    ({"prompt": "hi", "stop": "x"}, "stop"),
    ({"prompt": 5}, "prompt"),
])
def test_bad_text_params_get_invalid_params_never_internal_error(healthy, params, param):
    o = healthy(preload=False)
    resp = o.request("generate", **params)
    assert resp["error"]["code"] == -32602, resp
    data = resp["error"].get("data")
    assert param in (data["param"] if isinstance(data, dict) else data), resp


def test_a_1000_item_batch_is_capped_and_costs_little_memory(healthy):
    """One line of 1,000 status calls: max_batch_items run, the rest -32005 batch_too_large (notifications
    unanswered), and oracd's RSS (and peak) grows by less than 20 MB."""
    o = healthy(preload=False, max_batch_items=16, max_pending_per_connection=8)
    pid = o.proc.pid
    with o.conn(timeout=60) as c:
        c.call("status")
        before = _rss_kb(pid)
        peak_before = _rss_kb(pid, "VmHWM")
        items = [{"jsonrpc": "2.0", "method": "status", "id": i} for i in range(990)]
        items += [{"jsonrpc": "2.0", "method": "status"} for _ in range(10)]
        c.send_raw(json.dumps(items).encode() + b"\n")
        out = json.loads(c.recv_line())
        after, peak = _rss_kb(pid), _rss_kb(pid, "VmHWM")
        assert "child" in c.call("status")                       # the connection still serves
    ok = [r for r in out if "result" in r]
    busy = [r for r in out if "error" in r]
    assert len(ok) == 16 and len(busy) == 974, (len(ok), len(busy))
    assert all(r["error"]["code"] == -32005 and r["error"]["data"] == {"reason": "batch_too_large", "limit": 16}
               for r in busy)
    print(f"RSS before {before} kB, after {after} kB, peak {peak_before} -> {peak} kB")
    assert after - before < 20 * 1024 and peak - max(peak_before, before) < 20 * 1024


def test_batched_generations_wait_for_room_like_single_requests(healthy):
    """A batch of generates on a connection with max_pending_per_connection = 2 is answered in full (each
    item took a slot; none is lost), and single requests on the same connection still get answers."""
    o = healthy(max_batch_items=12, max_pending_per_connection=2)
    with o.conn(timeout=120) as c:
        batch = [{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": f"n{i}", "max_tokens": 2}, "id": i}
                 for i in range(12)]
        c.send_raw(json.dumps(batch).encode() + b"\n"
                   + json.dumps({"jsonrpc": "2.0", "method": "status", "id": "s"}).encode() + b"\n")
        got: Dict[str, object] = {}
        while len(got) < 2:
            msg = json.loads(c.recv_line())
            got["batch" if isinstance(msg, list) else msg["id"]] = msg
    assert sorted(r["id"] for r in got["batch"]) == list(range(12))
    assert all(r["result"]["response"] == "hello" for r in got["batch"])
    assert "result" in got["s"]


def test_blank_lines_do_not_keep_a_connection_open(healthy):
    o = healthy(preload=False, idle_timeout=1.5)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(o.socket))
    s.settimeout(0.3)
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 20 and not closed:
        try:
            s.sendall(b"\n")
            closed = s.recv(100) == b""
        except socket.timeout:
            continue
        except OSError:
            closed = True
    s.close()
    assert closed, "a client sending only blank lines was never closed"
    assert log_events(o, "closing idle connection")


def test_connections_per_uid_are_capped(healthy):
    o = healthy(preload=False, max_connections_per_uid=3)
    held = [o.conn(timeout=10) for _ in range(3)]
    try:
        for c in held:
            c.call("status")
        with Conn(o.socket, timeout=10) as extra:
            msg = json.loads(extra.recv_line())
        assert msg["error"]["code"] == -32005, msg
        assert "server.max_connections_per_uid" in msg["error"]["message"]
        assert msg["error"]["data"] == {"reason": "uid_connection_limit", "limit": 3}
        assert log_events(o, "connection refused: per-uid limit reached")
    finally:
        held.pop().close()
    deadline = time.monotonic() + 15
    while True:                                # a slot freed: the uid may connect again
        try:
            with Conn(o.socket, timeout=10) as again:
                again.call("status")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    for c in held:
        c.close()


def test_client_fields_are_clipped_and_request_lines_rate_limited_in_the_log(healthy):
    o = healthy(preload=False, request_log_rate=1, request_log_burst=5)
    with o.conn(timeout=60) as c:
        for i in range(3):
            resp = c.request("m" * 1_000_000, )
            assert resp["error"]["code"] == -32601
        for _ in range(60):
            c.call("status")
    size = sum(p.stat().st_size for p in o.log_dir.glob("orac.log*"))
    assert size < 200_000, f"the log grew {size} bytes"
    reqs = log_events(o, "request")
    long = [r for r in reqs if r["method"].startswith("mmm")]
    assert long and all(r["method"].endswith("...[1000000 chars]") and len(r["method"]) < 230 for r in long)
    mine = [r for r in reqs if r["peer_pid"] == os.getpid()]
    assert len(mine) < 20, len(mine)
    deadline = time.monotonic() + 15
    while not log_events(o, "request log lines suppressed") and time.monotonic() < deadline:
        time.sleep(0.1)                        # written when the connection closes
    summary = log_events(o, "request log lines suppressed")
    assert summary and sum(e["suppressed"] for e in summary) + len(mine) >= 63, (summary, len(mine))
