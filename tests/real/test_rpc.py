"""JSON-RPC 2.0 over the Unix socket: framing, every error path, pipelining, batches, limits."""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from helpers import SMOL, Conn, Oracd, log_events, wait_for


def raw_lines(o: Oracd, payload: bytes, n: int, timeout: float = 60) -> list:
    """Send raw bytes, read n response lines."""
    with Conn(o.socket, timeout) as c:
        c.send_raw(payload)
        return [c.recv() for _ in range(n)]


def test_socket_mode_and_status(oracd):
    st = os.stat(oracd.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    s = oracd.call("status")
    assert s["child"]["state"] == "ready"
    assert s["child"]["model"] == SMOL
    assert s["socket"] == str(oracd.socket)
    assert s["log_file"].endswith("orac.log")
    assert s["child"]["pid"] > 0 and s["child"]["rss_bytes"] > 0
    import psutil
    alive = time.time() - psutil.Process(s["pid"]).create_time()     # how long the oracd process has existed
    assert s["version"] and 0 < s["uptime_s"] <= alive + 0.05
    wait_for(lambda: oracd.call("status")["uptime_s"] - s["uptime_s"] >= 0.3, 5, "uptime to advance")


@pytest.mark.parametrize("payload, code", [
    (b"not json\n", -32700),
    (b'{"jsonrpc": "2.0", "method": "status", "id": 1\n', -32700),     # truncated object
    (b'\xff\xfe\x00garbage\n', -32700),                                 # invalid UTF-8
    (b'[]\n', -32600),                                                  # empty batch
    (b'42\n', -32600),
    (b'{"jsonrpc": "1.0", "method": "status", "id": 1}\n', -32600),
    (b'{"jsonrpc": "2.0", "id": 1}\n', -32600),
    (b'{"jsonrpc": "2.0", "method": 5, "id": 1}\n', -32600),
    (b'{"jsonrpc": "2.0", "method": "status", "params": "x", "id": 1}\n', -32600),
    (b'{"jsonrpc": "2.0", "method": "status", "id": {"a": 1}}\n', -32600),
    (b'{"jsonrpc": "2.0", "method": "no_such_method", "id": 1}\n', -32601),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": 5}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "bogus": 1}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": ["positional"], "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "   "}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "temperature": "hot"}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "top_p": 7}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "max_tokens": true}, "id": 1}\n', -32602),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "model": "nope"}, "id": 1}\n', -32001),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "model": "../x"}, "id": 1}\n', -32008),
    (b'{"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "hi", "model": "/etc/passwd"}, "id": 1}\n', -32008),
    (b'{"jsonrpc": "2.0", "method": "load_model", "params": {"model": "a\\u0000b"}, "id": 1}\n', -32008),
    (b'{"jsonrpc": "2.0", "method": "list_models", "params": {"models_path": "/tmp"}, "id": 1}\n', -32008),
    (b'{"jsonrpc": "2.0", "method": "quantize_model", "params": {"input_model": "nope", "output_model": "x"}, "id": 1}\n', -32001),
])
def test_error_paths(oracd, payload, code):
    (resp,) = raw_lines(oracd, payload, 1)
    assert resp["jsonrpc"] == "2.0"
    assert resp["error"]["code"] == code, resp
    assert isinstance(resp["error"]["message"], str) and resp["error"]["message"]
    assert "Traceback" not in json.dumps(resp)
    # the daemon is still fine afterwards
    assert oracd.call("status")["child"]["state"] == "ready"


def test_error_ids_echo_request(oracd):
    (resp,) = raw_lines(oracd, b'{"jsonrpc":"2.0","method":"nope","id":"abc"}\n', 1)
    assert resp["id"] == "abc"
    (resp,) = raw_lines(oracd, b'not json\n', 1)
    assert resp["id"] is None


def test_model_not_found_names_path(oracd):
    resp = oracd.request("generate", prompt="hi", model="missing-model")
    assert resp["error"]["message"] == f"Model not found: {oracd.models_dir / 'missing-model.gguf'}"


def test_notifications_get_no_reply(oracd):
    with oracd.conn(timeout=10) as c:
        c.send_raw(b'{"jsonrpc":"2.0","method":"status"}\n{"jsonrpc":"2.0","method":"status","id":7}\n')
        resp = c.recv()
        assert resp["id"] == 7          # the notification produced nothing before it
        c.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.recv()


def test_batch(oracd):
    batch = [
        {"jsonrpc": "2.0", "method": "status", "id": 1},
        {"jsonrpc": "2.0", "method": "status"},                         # notification: no entry
        {"jsonrpc": "2.0", "method": "list_models", "id": "two"},
        {"jsonrpc": "2.0", "method": "nope", "id": 3},
        {"bad": True},
    ]
    (resp,) = raw_lines(oracd, json.dumps(batch).encode() + b"\n", 1)
    assert isinstance(resp, list) and len(resp) == 4
    by_id = {r.get("id"): r for r in resp}
    assert by_id[1]["result"]["child"]["state"] == "ready"
    assert by_id["two"]["result"][0]["name"] == SMOL
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600


def test_batch_of_notifications_sends_nothing(oracd):
    with oracd.conn(timeout=10) as c:
        c.send_raw(b'[{"jsonrpc":"2.0","method":"status"},{"jsonrpc":"2.0","method":"status"}]\n'
                   b'{"jsonrpc":"2.0","method":"status","id":9}\n')
        assert c.recv()["id"] == 9


def test_pipelining_answers_by_id_concurrently(oracd):
    """A slow generate and fast status calls pipelined on one connection: status answers first."""
    with oracd.conn() as c:
        lines = [json.dumps({"jsonrpc": "2.0", "method": "generate", "id": "gen",
                             "params": {"prompt": "Count from one to twenty.", "max_tokens": 48,
                                        "temperature": 0, "timeout": 120}})]
        lines += [json.dumps({"jsonrpc": "2.0", "method": "status", "id": i}) for i in range(5)]
        c.send_raw(("\n".join(lines) + "\n").encode())
        got = [c.recv() for _ in range(6)]
    ids = [r["id"] for r in got]
    assert sorted(ids, key=str) == sorted(["gen", 0, 1, 2, 3, 4], key=str)
    assert ids[-1] == "gen"                     # processed concurrently, not in line order
    gen = next(r for r in got if r["id"] == "gen")["result"]
    assert gen["usage"]["completion_tokens"] > 0


def test_oversized_line_gets_error_and_connection_survives(oracd):
    big = b'{"jsonrpc":"2.0","method":"status","id":1,"params":{"x":"' + b"a" * (1024 * 1024 + 10) + b'"}}\n'
    with oracd.conn() as c:
        c.send_raw(big + b'{"jsonrpc":"2.0","method":"status","id":2}\n')
        first = c.recv()
        assert first["error"]["code"] == -32010
        assert "1048576" in first["error"]["data"]
        assert c.recv()["id"] == 2
    assert oracd.call("status")["child"]["state"] == "ready"


def test_many_connections_concurrently(oracd):
    results, errors = [], []

    def worker(i: int) -> None:
        try:
            with oracd.conn(timeout=30) as c:
                for j in range(5):
                    r = c.request("status")
                    results.append(r["result"]["child"]["state"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == ["ready"] * 100


def test_socat_and_jq_from_a_shell(oracd):
    import subprocess
    out = subprocess.run(
        f"echo '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}}' | socat -t 30 - UNIX-CONNECT:{oracd.socket} "
        "| jq -r .result.child.state", shell=True, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ready"


def test_second_oracd_on_same_socket_refuses(oracd):
    other = Oracd(server={"socket": str(oracd.socket)})
    other.start(wait=False)
    try:
        rc = other.proc.wait(60)
        tail = other.stderr_tail()
    finally:
        other.cleanup()
    assert rc == 1
    assert "another oracd" in tail or "already serving" in tail
    assert oracd.call("status")["child"]["state"] == "ready"      # the first one is untouched
    assert oracd.socket.exists()


def test_list_models_fields(oracd):
    (item,) = [m for m in oracd.call("list_models") if m["name"] == SMOL]
    path = oracd.models_dir / SMOL
    assert item["size"] == path.stat().st_size
    assert item["modified"] == path.stat().st_mtime
    assert item["backend"] == "llama_cpp"
    assert item["loaded"] is True
    assert item["architecture"] == "llama" and item["quantization"] == "Q4_1"
    assert item["context_length"] == 8192 and item["valid"] is True
    # the models dir itself is accepted as models_path; hidden and non-gguf files are not listed
    (oracd.models_dir / "notes.txt").write_text("x")
    (oracd.models_dir / ".partial.gguf").write_text("x")
    names = [m["name"] for m in oracd.call("list_models", models_path=str(oracd.models_dir))]
    assert "notes.txt" not in names and ".partial.gguf" not in names


@pytest.mark.parametrize("choice,expected", [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_event_loop_choice(fresh_oracd, choice, expected):
    """uvloop is a dependency on Linux, so "auto" runs on it; "asyncio" forces the stdlib loop."""
    o = fresh_oracd(server={"event_loop": choice}, llama={"preload": False}).start()
    assert o.call("status")["child"]["state"] == "stopped"
    assert [e["event_loop"] for e in log_events(o, "oracd ready")] == [expected]
