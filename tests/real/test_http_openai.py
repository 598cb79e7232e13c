"""OpenAI's API on oracd's HTTP front door, called with the real ``openai`` library, against the real llama-server.

One oracd for the module, listening on loopback TCP (with an API key) and on a Unix socket
that applies the JSON-RPC socket's allow-list.
"""
from __future__ import annotations

import json
import os
import socket
import time

import aiohttp
import anyio
import openai
import pytest

from helpers import SMOL, Oracd, free_port

KEY = "test-key-0123456789"
STEM = SMOL[:-len(".gguf")]
USER = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def o():
    port = free_port()
    d = Oracd(http={"listen": [f"127.0.0.1:{port}", "unix:/tmp/oracd-h5-{}.sock".format(port)], "api_key": KEY,
                    "max_body_bytes": 65536},
              server={"allowed_uids": [os.getuid()]})
    d.http_unix = f"/tmp/oracd-h5-{port}.sock"
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def client(o):
    return openai.OpenAI(base_url=o.http_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def raw_post(o, path: str, body: bytes, key: str = KEY, headers=None) -> tuple:
    """(status, JSON body) of a POST with exactly these bytes."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(o.http_url + path, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---------------------------------------------------------------- models
def test_models_lists_every_model_under_its_file_name(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [SMOL]
    assert client.models.retrieve(STEM).id == STEM


# ---------------------------------------------------------------- chat
def test_chat_not_streamed_answers_with_usage_and_the_model_as_named(client):
    r = client.chat.completions.create(model=STEM, messages=USER, max_tokens=8, temperature=0)
    assert r.model == STEM and r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_long_non_streamed_answer_is_fetched_streamed_and_answered_whole(client):
    """max_tokens above llama.stream_above_tokens: oracd streams from llama-server (so a hang-up stops it at
    once) and answers in one piece, the same answer as a streamed request gets."""
    kw = dict(model=SMOL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=600, temperature=0,
              seed=9)
    whole = client.chat.completions.create(**kw)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                       if c.choices)
    assert whole.choices[0].message.content == streamed and streamed
    assert whole.object == "chat.completion" and whole.model == SMOL and whole.usage.completion_tokens > 0
    assert whole.choices[0].finish_reason in ("stop", "length")
    raw = client.completions.create(model=SMOL, prompt="1, 2, 3,", max_tokens=600, temperature=0, stop=[" 6"])
    assert raw.choices[0].text.startswith(" 4") and raw.object == "text_completion" and raw.usage.total_tokens


def test_max_tokens_and_max_completion_tokens_bound_the_answer(client):
    long = [{"role": "user", "content": "Write a long story about a dragon."}]
    r = client.chat.completions.create(model=SMOL, messages=long, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model=SMOL, messages=long, max_completion_tokens=2, max_tokens=50,
                                       temperature=0)
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_seed_and_temperature_reach_the_sampler(client):
    kw = dict(model=SMOL, messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=12,
              temperature=1.5, top_p=1.0)
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3, 4)}
    assert others - {a}, "four other seeds all gave the same text: the seed did not reach llama-server"


def test_chat_streamed_with_usage(client):
    full = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=10, temperature=0, seed=5)
    chunks = list(client.chat.completions.create(model=SMOL, messages=USER, max_tokens=10, temperature=0, seed=5,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert all(c.model == SMOL and c.object == "chat.completion.chunk" for c in chunks)
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason][0].choices[0].finish_reason \
        == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    plain = list(client.chat.completions.create(model=SMOL, messages=USER, max_tokens=4, stream=True))
    assert plain and all(c.usage is None for c in plain)


def test_stop_strings(client):
    r = client.completions.create(model=SMOL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=20, temperature=0,
                                  stop=[" 9"])
    assert " 7" in r.choices[0].text and " 9" not in r.choices[0].text and r.choices[0].finish_reason == "stop"


def test_response_format_json_schema_and_json_object(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    r = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=40, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "c", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert list(obj) == ["colour"] and isinstance(obj["colour"], str)
    r = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content       # an object (SmolLM2 left alone answers in prose), maybe cut off
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    plain = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=10, temperature=0)
    assert not plain.choices[0].message.content.lstrip().startswith("{")


def test_an_inline_grammar_per_request_and_never_a_file(client):
    r = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Is the sky blue?"}],
                                       max_tokens=5, extra_body={"grammar": 'root ::= "yes" | "no"'})
    assert r.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=USER, extra_body={"grammar": "/etc/passwd"})
    assert err.value.body["param"] == "grammar" and "file paths are not accepted" in err.value.body["message"]


def test_tools_and_tool_choice_are_accepted(client):
    tools = [{"type": "function", "function": {"name": "turn_on", "description": "Turn on a light",
                                               "parameters": {"type": "object",
                                                              "properties": {"room": {"type": "string"}}}}}]
    r = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=8, tools=tools, tool_choice="auto")
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_raw_completions_not_streamed_and_streamed(client):
    prompt = "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=6, temperature=0)
    assert r.model == SMOL and r.choices[0].text and r.usage.completion_tokens <= 6
    chunks = list(client.completions.create(model=SMOL, prompt=prompt, max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


# ---------------------------------------------------------------- errors and auth
def test_an_unknown_model_is_404_in_openais_shape_without_oracds_paths(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    body = err.value.body
    assert body["code"] == "model_not_found" and body["type"] == "invalid_request_error"
    assert "'gpt-4o' not found" in body["message"] and "/tmp" not in json.dumps(body)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="../etc/passwd", messages=USER)


def test_bad_input_is_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=[{"role": "wizard", "content": "x"}])
    assert err.value.status_code == 400 and err.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=USER, temperature=99)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])
    assert "vision projector" in err.value.body["message"]


def test_a_wrong_or_missing_key_is_401(o):
    for key in ("wrong-key-000000", ""):
        c = openai.OpenAI(base_url=o.http_url + "/v1", api_key=key or "none", max_retries=0)
        if not key:
            c = openai.OpenAI(base_url=o.http_url + "/v1", api_key="x", max_retries=0,
                              default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as err:
            c.models.list()
        assert err.value.status_code == 401
        assert err.value.body["type"] == "authentication_error" and err.value.body["code"] == "invalid_api_key"
    status, body = raw_post(o, "/api/chat", b"{}", key="wrong-key-000000")
    assert status == 401 and set(body) == {"error"} and isinstance(body["error"], str)    # Ollama's shape


def test_bad_bodies_get_400_and_nothing_breaks_for_other_clients(o, client):
    cases = {
        b'{"model": "x", "messages": [{"role": "user", "content": "hi"}': "not valid JSON",     # truncated
        b'{"messages": "\xff\xfe"}': "not valid UTF-8",
        b'': "empty",
        b'[1, 2, 3]': "expected a JSON object",
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}': "max_tokens",
        b'[' * 100_00 + b']' * 100_00: "nests too deeply",
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}': "NaN is not a JSON number",
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": '
        b'{"name": "f", "parameters": {"maximum": Infinity}}}]}': "Infinity is not a JSON number",
    }
    for body, words in cases.items():
        status, reply = raw_post(o, "/v1/chat/completions", body)
        assert status == 400, (body[:40], status, reply)
        assert words in reply["error"]["message"], reply
    status, reply = raw_post(o, "/v1/chat/completions", b'{"x": "' + b"a" * 70_000 + b'"}')
    assert status == 413 and reply["error"]["code"] == "request_too_large"
    status, reply = raw_post(o, "/v1/nothing", b"{}")
    assert status == 404 and "no such route" in reply["error"]["message"]
    r = client.chat.completions.create(model=SMOL, messages=USER, max_tokens=3)
    assert r.choices[0].message.content
    assert o.call("status")["pid"] == o.proc.pid and o.proc.poll() is None


def test_the_unix_listener_applies_the_allow_list_and_serves_allowed_peers(o):
    async def get() -> tuple:
        conn = aiohttp.UnixConnector(path=o.http_unix)
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.get("http://oracd/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as resp:
                return resp.status, await resp.json()
    status, body = anyio.run(get)
    assert status == 200 and body["data"][0]["id"] == SMOL
    assert oct(os.stat(o.http_unix).st_mode & 0o777) == oct(0o660)


def test_a_peer_outside_the_allow_list_is_refused_on_the_unix_listener(fresh_oracd, tmp_path):
    path = f"/tmp/oracd-h5-deny-{os.getpid()}.sock"
    d = fresh_oracd(http={"listen": [f"unix:{path}"]}, server={"allowed_uids": [os.getuid() + 4242]},
                    llama={"preload": False}).start(wait=False)

    async def get() -> tuple:
        conn = aiohttp.UnixConnector(path=path)
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.get("http://oracd/api/tags") as resp:
                return resp.status, await resp.json()

    deadline = time.monotonic() + 60
    while True:
        try:
            status, body = anyio.run(get)
            break
        except (aiohttp.ClientError, OSError):
            assert time.monotonic() < deadline and d.proc.poll() is None, d.stderr_tail()
            time.sleep(0.1)
    assert status == 403 and "is not allowed" in body["error"]


def test_a_client_that_hangs_up_mid_stream_stops_the_generation(o, client):
    """Cancel-on-disconnect: the request leaves oracd (and llama-server's slot) well before its 2000 tokens."""
    s = socket.create_connection(("127.0.0.1", int(o.http_url.rsplit(":", 1)[1])))
    body = json.dumps({"model": SMOL, "messages": [{"role": "user", "content": "Write a very long story."}],
                       "max_tokens": 2000, "stream": True, "temperature": 1.0}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(65536)
    assert b"200 OK" in got and o.call("status")["requests"]["in_flight"] == 1
    s.close()
    deadline = time.monotonic() + 20
    while o.call("status")["requests"]["in_flight"] != 0:
        assert time.monotonic() < deadline, "the generation went on after its client hung up"
        time.sleep(0.1)
    deadline = time.monotonic() + 20
    while True:           # and llama-server's slots are idle again, long before 2000 tokens could be done
        with o.conn() as c:
            metrics = c.call("metrics")["text"]
        busy = [ln for ln in metrics.splitlines() if ln.startswith("llamacpp:requests_processing")]
        if busy and float(busy[0].split()[-1]) == 0:
            break
        assert time.monotonic() < deadline, busy
        time.sleep(0.2)
    assert client.chat.completions.create(model=SMOL, messages=USER, max_tokens=2).choices[0].message.content


def test_status_shows_the_listeners_and_request_counts(o):
    http = o.call("status")["http"]
    assert http["listen"][0].startswith("127.0.0.1:") and http["listen"][1].startswith("unix:")
    assert http["auth"] is True and http["requests"]["openai"]["200"] >= 5
    assert http["requests"]["openai"]["401"] >= 2 and http["requests"]["openai"]["400"] >= 1
    text = o.call("metrics")["text"]
    assert 'oracd_http_requests_total{api="openai",route="/v1/chat/completions",status="200"}' in text
    assert 'oracd_http_generate_seconds_count{api="openai"}' in text


def test_oracctl_status_shows_the_http_listeners(o):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                         capture_output=True, text=True, timeout=60)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("http apis")]
    assert out.returncode == 0 and line, out.stdout
    assert o.http_url.split("//")[1] in line[0] and "key required" in line[0] and "x 200" in line[0]


def test_sigterm_lets_an_http_stream_finish_then_closes_the_listener(fresh_oracd):
    """SIGTERM with a stream in flight: the stream ends normally ([DONE], usage), oracd exits 0, and the
    port no longer accepts connections."""
    import signal
    import threading
    port = free_port()
    d = fresh_oracd(http={"listen": [f"127.0.0.1:{port}"]}).start()
    c = openai.OpenAI(base_url=d.http_url + "/v1", api_key="none", max_retries=0, timeout=120)
    chunks: list = []
    started = threading.Event()

    def stream() -> None:
        for ch in c.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Tell a story."}],
                                            max_tokens=60, temperature=0.8, stream=True,
                                            stream_options={"include_usage": True}):
            chunks.append(ch)
            started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    d.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert not t.is_alive() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert d.proc.wait(60) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_model_that_cannot_load_is_refused_and_the_warm_model_keeps_serving(o, client):
    bad = o.models_dir / "broken.gguf"
    bad.write_bytes(b"this is not a model file at all")
    pid = o.child_pid()
    try:
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="broken", messages=USER, max_tokens=2)
        assert err.value.status_code == 500 and err.value.body["code"] == "not_gguf"
        assert "not a loadable GGUF model" in err.value.body["message"]
        assert client.chat.completions.create(model=SMOL, messages=USER, max_tokens=2).choices[0].message.content
        assert o.child_pid() == pid
    finally:
        bad.unlink()
