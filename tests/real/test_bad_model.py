"""A bad model never costs the warm one, and an extra llama-server is no open door: against the real
llama-server and SmolLM2 (the scripted twin of the restore is tests/fake/test_admin_and_models.py)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from helpers import SMOL, RPCError, free_port, gone, write_tiny_f32, write_unknown_architecture

FAST = {"threads": 1}
SYSTEM = "You parse spoken home commands into JSON objects. " * 8


def test_a_truncated_gguf_is_refused_and_the_same_server_keeps_serving(fresh_oracd):
    """Tensor data cut off (an interrupted copy): refused with -32002 reason "truncated" before the warm
    model is stopped; the same llama-server pid serves on."""
    o = fresh_oracd(llama=FAST).start()
    before = o.wait_child_state("ready", 120)
    path = write_tiny_f32(o.models_dir / "cut.gguf")
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 10_000)
    with pytest.raises(RPCError) as err:
        o.call("load_model", model="cut", timeout=60)
    assert err.value.code == -32002 and err.value.data["reason"] == "truncated", err.value
    assert err.value.data["expected_size"] > err.value.data["size"]
    st = o.call("status")["child"]
    assert st["state"] == "ready" and st["pid"] == before["pid"] and st["model"] == SMOL
    assert st["restarts"] == 0 and st["loads"] == before["loads"]
    assert o.call("generate", prompt="Say hi.", max_tokens=4, temperature=0)["response"] is not None


def test_a_model_llama_server_refuses_is_followed_by_the_previous_one_ready_and_warm(fresh_oracd):
    """An unknown architecture passes oracd's checks and fails inside llama-server: the model that was serving
    comes back at once, its slots restored from disk (warm), and the error and status say so."""
    o = fresh_oracd(llama=FAST).start()
    o.wait_child_state("ready", 120)
    o.call("prewarm", system_prompt=SYSTEM, timeout=120)           # kept: every later load of SMOL is warm
    first = o.call("status")["child"]
    write_unknown_architecture(o.models_dir / "alien.gguf")
    t0 = time.monotonic()
    with pytest.raises(RPCError) as err:
        o.call("load_model", model="alien", timeout=120)
    assert err.value.code == -32002 and err.value.data["restored_previous"] == SMOL, err.value
    assert "architecture" in err.value.message
    deadline = time.monotonic() + 120
    while True:
        st = o.call("status")["child"]
        if st["state"] == "ready" and st["pid"] not in (first["pid"], None):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    assert st["model"] == SMOL and gone(first["pid"])
    assert st["warm"]["how"] == "restored", st["warm"]
    assert st["last_exit"]["restored_previous"] == SMOL and st["last_exit"]["model"] == "alien.gguf"
    print(f"failed load + restore of the previous model: {time.monotonic() - t0:.1f} s")
    assert o.call("generate", prompt="Turn on the lights.", system_prompt=SYSTEM, max_tokens=4,
                  temperature=0)["usage"]["cached_tokens"] > 0


def _post(port: int, headers: dict) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", method="POST", headers=headers,
                                 data=json.dumps({"prompt": "Hi", "n_predict": 1}).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_extra_llama_server_answers_only_with_its_api_key(fresh_oracd):
    o = fresh_oracd(llama={**FAST, "preload": False}).start()
    port = free_port()
    info = o.call("start_server", model=SMOL, port=port, timeout=120)
    try:
        assert _post(port, {}) == 401
        assert _post(port, {"Authorization": "Bearer wrong"}) == 401
        assert _post(port, {"Authorization": f"Bearer {info['api_key']}"}) == 200
    finally:
        o.call("stop_server", pid=info["pid"])
