"""generate against the real llama-server + SmolLM2 through oracd."""
from __future__ import annotations

import json
import socket
import time

import pytest

from helpers import SMOL, Conn, Oracd
from llama_direct import busy_slots, wait_slots_idle


@pytest.fixture(scope="module")
def oracd():
    """A big context (4096 tokens a slot), so a 2000-token generation cannot end early by itself."""
    o = Oracd(llama={"ctx_size": 8192}).start()
    yield o
    o.cleanup()


def test_generate_fields_and_usage(oracd):
    r = oracd.call("generate", model=SMOL, prompt="Turn on the kitchen lights.", max_tokens=4, temperature=0)
    assert set(r) == {"response", "elapsed_ms", "model", "prompt", "finish_reason", "usage", "raw"}
    assert r["raw"] is False
    assert r["response"].strip()
    assert r["model"] == SMOL and r["prompt"] == "Turn on the kitchen lights."
    assert r["elapsed_ms"] > 0
    assert r["finish_reason"] == "length"
    u = r["usage"]
    assert u["completion_tokens"] == 4
    assert u["prompt_tokens"] > 5
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert set(u) == {"prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "sampled_tokens",
                      "forced_tokens"}
    assert u["sampled_tokens"] == 4 and u["forced_tokens"] == 0         # no fast-forward: every token sampled
    again = oracd.call("generate", model=SMOL, prompt="Turn on the kitchen lights.", max_tokens=4, temperature=0)
    assert again["usage"]["cached_tokens"] >= u["prompt_tokens"] - 2      # the same prompt: from the slot's cache


def test_model_name_without_suffix_and_default_model(oracd):
    a = oracd.call("generate", model=SMOL[:-5], prompt="Say hello.", max_tokens=8, temperature=0)
    b = oracd.call("generate", prompt="Say hello.", max_tokens=8, temperature=0)   # default_model
    assert a["response"] == b["response"]          # temperature 0: same model, same answer
    assert a["model"] == SMOL[:-5]


def test_max_tokens_none_means_512(oracd):
    r = oracd.call("generate", prompt="Reply with the single word: ok", max_tokens=None, temperature=0)
    assert r["usage"]["completion_tokens"] <= 512
    assert r["finish_reason"] in ("stop", "length")


def test_grammar_constrains_output(oracd):
    r = oracd.call("generate", prompt="Is the sky blue? Answer yes or no.", max_tokens=8, temperature=0.7,
                   grammar='root ::= "yes" | "no"')
    assert r["response"] in ("yes", "no")


def test_json_schema_gives_valid_json(oracd):
    schema = {"type": "object", "properties": {"device": {"type": "string"}, "on": {"type": "boolean"}},
              "required": ["device", "on"]}
    r = oracd.call("generate", prompt="Turn on the kitchen lights. Reply as JSON.", max_tokens=64,
                   temperature=0, json_schema=schema, timeout=120)
    obj = json.loads(r["response"])
    assert isinstance(obj["device"], str) and isinstance(obj["on"], bool)


def test_system_prompt_and_stop(oracd):
    r = oracd.call("generate", prompt="List three colours, one per line.", max_tokens=64, temperature=0,
                   system_prompt="You are terse.", stop=["\n"])
    assert "\n" not in r["response"]
    assert r["finish_reason"] == "stop"


def test_bad_grammar_is_invalid_params_not_a_crash(oracd):
    resp = oracd.request("generate", prompt="hi", max_tokens=4, grammar="root ::= (((")
    assert resp["error"]["code"] == -32602
    assert oracd.call("status")["child"]["state"] == "ready"


def test_timeout_aborts_upstream_generation(oracd):
    endpoint = oracd.call("status")["child"]["endpoint"]
    resp = oracd.request("generate", prompt="Write a very long story about a dragon.", max_tokens=2000,
                         temperature=0.8, timeout=0.3)
    assert resp["error"]["code"] == -32003
    assert resp["error"]["message"] == "Generation timed out after 0.3 seconds"
    wait_slots_idle(endpoint, 10)     # 2000 tokens take > 30 s here; the slot is freed at once


def test_client_disconnect_aborts_upstream_generation(oracd):
    endpoint = oracd.call("status")["child"]["endpoint"]
    c = Conn(oracd.socket)
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "generate",
                           "params": {"prompt": "Write a very long story about a knight.", "max_tokens": 2000,
                                      "temperature": 0.8, "timeout": 120}}).encode() + b"\n")
    deadline = time.monotonic() + 10
    while busy_slots(endpoint) == 0:           # generation under way
        assert time.monotonic() < deadline
        time.sleep(0.02)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    wait_slots_idle(endpoint, 10)
    assert oracd.call("status")["child"]["state"] == "ready"


COUNT_PROMPT = "Write the numbers from 1 to 3000 separated by commas, with no other text."


@pytest.mark.parametrize("stream_above_tokens", [0, 100_000], ids=["streamed", "one-response"])
def test_disconnect_frees_the_slot_on_both_upstream_paths(fresh_oracd, stream_above_tokens):
    """Above stream_above_tokens oracd streams from llama-server and a hang-up stops the
    generation at once; at or below it the answer comes in one response, and llama-server
    drops the orphan when its queue has been quiet for a second.  This prompt runs to 3000
    tokens (about a minute here), so only an abort can free the slot in time."""
    o = fresh_oracd(llama={"ctx_size": 8192, "stream_above_tokens": stream_above_tokens}).start()
    endpoint = o.call("status")["child"]["endpoint"]
    c = Conn(o.socket)
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "generate",
                           "params": {"prompt": COUNT_PROMPT, "max_tokens": 3000, "temperature": 0,
                                      "timeout": 120}}).encode() + b"\n")
    deadline = time.monotonic() + 10
    while busy_slots(endpoint) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # poll gently: every answer llama-server sends restarts the one-response path's quiet second
    took = wait_slots_idle(endpoint, 8, every=1.5)
    assert took < 8
    assert o.call("generate", prompt="Hi", max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2


def test_half_closed_client_still_gets_answer(oracd):
    """Shell pipes (socat) send EOF after the request but still read the answer."""
    c = Conn(oracd.socket)
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "generate",
                           "params": {"prompt": "Say hi.", "max_tokens": 8, "temperature": 0}}).encode() + b"\n")
    c.sock.shutdown(socket.SHUT_WR)
    r = c.recv()
    c.close()
    assert r["id"] == 5 and r["result"]["usage"]["completion_tokens"] > 0


def test_connections_to_llama_server_stay_within_its_fixed_http_threads(oracd):
    """16 concurrent generates on 2 slots: oracd holds at most `parallel` generation connections
    plus one probe connection to llama-server.  More kept-alive connections than llama-server's
    fixed HTTP threads (parallel + 4) left requests waiting for seconds, some for good."""
    import threading

    import psutil
    child = psutil.Process(oracd.child_pid())
    sock = oracd.call("status")["child"]["endpoint"][len("unix:"):]
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        oracd.call("generate", prompt=f"Say the number {i}.", max_tokens=8, temperature=0)))
        for i in range(16)]
    for t in threads:
        t.start()
    most = 0
    while any(t.is_alive() for t in threads):
        held = [c for c in child.net_connections(kind="unix") if c.laddr == sock]
        most = max(most, len(held) - 1)          # minus the listening socket
        time.sleep(0.005)
    for t in threads:
        t.join(60)
    assert len(results) == 16 and all(r["usage"]["completion_tokens"] > 0 for r in results)
    assert 2 <= most <= 2 + 1, most
