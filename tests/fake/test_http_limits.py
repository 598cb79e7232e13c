"""The HTTP listener's limits and key handling, on a real oracd whose llama-server is the scripted stand-in.

Slow bodies, idle and slow-header connections, the concurrent-request bound, the key file, and a
non-loopback address without a key: none of it needs a real model.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from helpers import stand_in_script, REPO, free_port, log_events, wait_for, write_tiny_f32

MODEL = "fake.gguf"


@pytest.fixture
def stand_in(fresh_oracd, tmp_path):
    def make(start: bool = True, server=None, **http):
        wrapper = stand_in_script(tmp_path, "tool-calls")
        o = fresh_oracd(models=(), server=server, llama={"server_bin": str(wrapper), "default_model": MODEL},
                        http={"listen": [f"127.0.0.1:{free_port()}"], **http})
        write_tiny_f32(o.models_dir / MODEL)
        o.port = int(o.http_url.rsplit(":", 1)[1])
        return o.start() if start else o
    return make


def get(o, path: str, key: str = "") -> tuple:
    req = urllib.request.Request(o.http_url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_slow_bodies_idle_connections_and_the_request_bound(stand_in):
    o = stand_in(read_timeout=1, idle_timeout=2, max_requests=1)
    # a body that never finishes arriving: 408, and it held the one request slot meanwhile
    slow = socket.create_connection(("127.0.0.1", o.port))
    slow.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":")
    deadline = time.monotonic() + 5
    while o.call("status")["http"]["in_flight"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, body = get(o, "/v1/models")
    assert status == 503 and body["error"]["code"] == "busy" and "http.max_requests" in body["error"]["message"]
    slow.settimeout(15)
    reply = slow.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply
    slow.close()
    assert get(o, "/api/tags")[0] == 200
    # idle, and slow headers: closed after idle_timeout
    for first in (b"", b"GET /api/tags HTTP/1.1\r\nHo"):
        s = socket.create_connection(("127.0.0.1", o.port))
        s.sendall(first)
        s.settimeout(15)
        t0 = time.monotonic()
        assert s.recv(65536) == b"", "the server should have closed the connection"
        assert time.monotonic() - t0 < 14
        s.close()
    assert get(o, "/api/tags")[0] == 200


def test_a_key_file_is_read_at_start_and_required(stand_in, tmp_path):
    key = tmp_path / "http.key"
    key.write_text("file-key-0123456789\n")
    o = stand_in(api_key_file=str(key))
    assert get(o, "/api/tags")[0] == 401
    status, body = get(o, "/v1/models", key="wrong-key-000")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert get(o, "/api/tags", key="file-key-0123456789")[0] == 200


def test_an_unreadable_key_file_stops_oracd_with_a_message(stand_in, tmp_path):
    o = stand_in(start=False, api_key_file=str(tmp_path / "missing.key"))
    o.start(wait=False)
    assert o.proc.wait(60) == 1
    assert "http.api_key_file: cannot read" in o.stderr_tail()


def test_a_lan_address_without_a_key_refuses_to_start(tmp_path):
    cfg = tmp_path / "oracd.toml"
    cfg.write_text('[http]\nlisten = ["0.0.0.0:11434"]\n')
    out = subprocess.run([sys.executable, "-m", "oracd", "--config", str(cfg), "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "0.0.0.0:11434 is not a loopback address, and no api_key or api_key_file is set" in out.stderr



def test_every_http_request_is_one_log_line_without_the_key(stand_in, tmp_path):
    from helpers import log_events
    o = stand_in(api_key="log-key-0123456789")
    assert get(o, "/api/tags", key="log-key-0123456789")[0] == 200
    assert get(o, "/v1/models")[0] == 401
    deadline = time.monotonic() + 10
    while len(lines := log_events(o, "http request")) < 2:
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    assert [(e["api"], e["route"], e["status"]) for e in lines[-2:]] == [("ollama", "/api/tags", 200),
                                                                         ("openai", "/v1/models", 401)]
    assert lines[-1]["peer"] == "127.0.0.1" and "ms" in lines[-1]
    assert "log-key-0123456789" not in o.log_file.read_text()


def test_a_port_in_use_stops_oracd_with_a_message(stand_in):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        o = stand_in(start=False)
        o.config.write_text(o.config.read_text().replace(f"127.0.0.1:{o.port}", f"127.0.0.1:{port}"))
        o.start(wait=False)
        assert o.proc.wait(60) == 1
        assert f"http.listen: cannot listen on 127.0.0.1:{port}" in o.stderr_tail()
    finally:
        taken.close()


def test_a_streaming_client_that_stops_reading_is_dropped_and_others_are_served(stand_in):
    """A stream whose client reads nothing for ``server.send_timeout`` ends: oracd closes the connection (and
    so llama-server's), instead of buffering the answer or waiting forever; other clients are served meanwhile."""
    o = stand_in(server={"send_timeout": 2})
    pieces = 50000                  # 50 MB of answer: far more than the sockets' buffers hold (a few MB on loopback)
    body = json.dumps({"model": MODEL, "stream": True,
                       "messages": [{"role": "user", "content": f"LONG {pieces}"}]}).encode()
    s = socket.create_connection(("127.0.0.1", o.port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    # not reading; meanwhile another client is answered
    assert get(o, "/v1/models")[0] == 200
    wait_for(lambda: any(r.get("route") == "/v1/chat/completions" for r in log_events(o, "http request")),
             timeout=60, what="the stalled stream's request line")
    got = bytearray()
    while True:                                       # what was in flight, then the end oracd made
        try:
            chunk = s.recv(1 << 16)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        got += chunk
    s.close()
    assert len(got) < pieces * 1000 // 2, len(got)    # cut off: most of the answer was never sent
    assert b"[DONE]" not in got
    assert get(o, "/v1/models")[0] == 200
