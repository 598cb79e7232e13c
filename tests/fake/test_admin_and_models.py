"""Hardening for everyone, against a real oracd whose llama-server is the scripted stand-in (``llama_server.py``):
who may change state for everyone, the limits that hold for everyone, and a bad model never costing the warm one.

llama-server and llama-quantize are the stand-ins (conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict

import pytest

from helpers import stand_in_script, RPCError, free_port, gone, log_events, write_tiny_f32

MODEL = "fake.gguf"
OTHER_UID = OTHER_GID = 12345          # nobody on this machine


@pytest.fixture
def fake(fresh_oracd, tmp_path):
    """An oracd on the stand-in in ``refuses-broken`` mode: every model whose name has "broken" fails to
    load inside llama-server, the others serve "hello"."""
    def make(server: Dict[str, Any] = None, env: Dict[str, str] = None, **llama):
        wrapper = stand_in_script(tmp_path, "refuses-broken")
        o = fresh_oracd(models=(), server=server, env=env,
                        llama={"server_bin": str(wrapper), "default_model": MODEL, "threads": 1, **llama})
        write_tiny_f32(o.models_dir / MODEL)
        return o
    return make


def as_other_user(o, method: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """One JSON-RPC call from another uid (stdlib only in the child: it cannot read our venv's secrets)."""
    os.chmod(o.root, 0o711)
    os.chmod(o.socket.parent, 0o711)
    code = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': sys.argv[2], "
            "'params': json.loads(sys.argv[3])}).encode() + b'\\n'); f = s.makefile('rb'); print(f.readline().decode())")
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(o.socket), method, json.dumps(params)],
                         user=OTHER_UID, group=OTHER_GID, extra_groups=[], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# ---------------------------------------------------------------------- a bad model never costs the warm one
def test_a_model_that_fails_inside_llama_server_is_followed_by_the_previous_one(fake):
    """load_model of a model llama-server refuses (an unknown architecture, past oracd's cheap checks): the
    error says the previous model is being restored, and it is ready again; status.child.last_exit says so."""
    o = fake(preload=True).start()
    first = o.wait_child_state("ready", 60)
    assert first["model"] == MODEL
    write_tiny_f32(o.models_dir / "broken.gguf")
    with pytest.raises(RPCError) as err:
        o.call("load_model", model="broken", timeout=60)
    assert err.value.code == -32002, err.value
    assert err.value.data["restored_previous"] == MODEL
    assert "unknown model architecture" in err.value.message
    st = o.wait_child_state("ready", 60)
    assert st["model"] == MODEL and st["pid"] != first["pid"]
    assert st["last_exit"]["reason"] == "load_failed" and st["last_exit"]["model"] == "broken.gguf"
    assert st["last_exit"]["restored_previous"] == MODEL
    assert o.call("generate", prompt="hi", max_tokens=4, timeout=30)["response"] == "hello"
    assert [e["model"] for e in log_events(o, "restoring the previous model after a failed load")] == [MODEL]


def test_a_failed_load_from_nothing_restores_nothing(fake):
    """With no model serving before, a failed load leaves oracd stopped-and-failed (no ping-pong)."""
    o = fake(preload=False).start()
    write_tiny_f32(o.models_dir / "broken.gguf")
    with pytest.raises(RPCError) as err:
        o.call("load_model", model="broken", timeout=60)
    assert "restored_previous" not in (err.value.data or {})
    st = o.call("status")["child"]
    assert st["state"] == "failed" and st["model"] is None


# ---------------------------------------------------------------------- the children's environment
def test_a_secret_in_oracds_environment_does_not_reach_llama_server(fake):
    o = fake(env={"SECRET_TOKEN": "s3cret", "CUDA_VISIBLE_DEVICES": "0"}, preload=True).start()
    pid = o.wait_child_state("ready", 60)["pid"]
    with open(f"/proc/{pid}/environ", "rb") as fh:
        env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
    assert b"SECRET_TOKEN" not in env and env[b"CUDA_VISIBLE_DEVICES"] == b"0" and b"PATH" in env


# ---------------------------------------------------------------------- the admin split
def test_only_admins_may_change_state_for_everyone(fake):
    """With admin_uids set, another allowed uid gets -32013 naming the setting for each admin method, and
    may still generate, list and prewarm without persisting."""
    o = fake(server={"socket_mode": "0666", "admin_uids": [4242]}, preload=True).start()
    o.wait_child_state("ready", 60)
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    calls = {"quantize_model": {"input_model": "tiny-f32", "output_model": "x", "quantization_type": "q4_0"},
             "reload": {}, "start_server": {"model": MODEL, "port": free_port()}, "stop_server": {"pid": 1},
             "prewarm": {"prefix": "You are ORAC."}, "clear_prewarm": {}}
    for method, params in calls.items():
        err = as_other_user(o, method, params)["error"]
        assert err["code"] == -32013 and "server.admin_uids" in err["message"], (method, err)
        assert err["data"]["reason"] == "not_admin"
    assert not (o.models_dir / "x.gguf").exists()
    ok = as_other_user(o, "generate", {"prompt": "hi", "max_tokens": 4})
    assert ok["result"]["response"] == "hello"
    warm = as_other_user(o, "prewarm", {"prefix": "You are ORAC.", "persist": False})
    assert warm["result"]["persisted"] is False
    assert o.call("clear_prewarm") == {"cleared": []}          # nothing was kept; oracd's own uid is an admin


# ---------------------------------------------------------------------- quantize's limits
def test_quantize_never_replaces_a_model_in_use(fake):
    o = fake(preload=True, fallback_models=["spare.gguf"]).start()
    o.wait_child_state("ready", 60)
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    for out, reason in ((MODEL, "the_loaded_model"), ("spare", "a_fallback_model")):
        before = (o.models_dir / out if out.endswith(".gguf") else o.models_dir / f"{out}.gguf")
        existed = before.exists()
        with pytest.raises(RPCError) as err:
            o.call("quantize_model", input_model="tiny-f32", output_model=out, quantization_type="q4_0",
                   overwrite=True)
        assert err.value.code == -32011 and err.value.data["reason"] == reason, err.value
        assert before.exists() == existed
    o.call("unload_model")
    with pytest.raises(RPCError) as err:              # not loaded now, but still the default model
        o.call("quantize_model", input_model="tiny-f32", output_model=MODEL, overwrite=True,
               quantization_type="q4_0")
    assert err.value.data["reason"] == "the_default_model"


def test_one_quantize_at_a_time(fake, tmp_path, stand_in_bin):
    """A second quantize while one runs gets -32005 reason quantize_running; after it, quantize works."""
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    slow = tmp_path / "llama-quantize"
    slow.write_text(f'#!/bin/sh\n[ "$1" = --help ] && exec {stand_in_bin / "llama-quantize"} --help\n'
                    f'touch {started}\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n'
                    f'exec {stand_in_bin / "llama-quantize"} "$@"\n')
    slow.chmod(0o755)
    o = fake(preload=False, quantize_bin=str(slow)).start()
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    first: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: first.update(o.request(
        "quantize_model", input_model="tiny-f32", output_model="one", quantization_type="q4_0")))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists()
        second = o.request("quantize_model", input_model="tiny-f32", output_model="two", quantization_type="q4_0")
        assert second["error"]["code"] == -32005 and second["error"]["data"]["reason"] == "quantize_running"
        assert o.call("status")["child"]["state"] == "stopped"     # everything else still answers
    finally:
        gate.touch()
        t.join(60)
    assert first["result"]["name"] == "one.gguf"
    assert o.call("quantize_model", input_model="tiny-f32", output_model="two",
                  quantization_type="q4_0")["name"] == "two.gguf"


def test_quantize_total_cap_counts_only_its_own_outputs(fake):
    """The tiny F32 input (about 200 kB, the operator's) does not count; the first q4_0 output (about 33 kB)
    fits under 60 kB, the second would pass it and fails cleanly, naming the setting."""
    o = fake(preload=False, quantize_max_total_bytes=60_000).start()
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    first = o.call("quantize_model", input_model="tiny-f32", output_model="q1", quantization_type="q4_0")
    assert first["size"] < 60_000
    with pytest.raises(RPCError) as err:
        o.call("quantize_model", input_model="tiny-f32", output_model="q2", quantization_type="q4_0")
    assert err.value.code == -32004 and err.value.data["setting"] == "llama.quantize_max_total_bytes", err.value
    assert not (o.models_dir / "q2.gguf").exists()
    assert not [p for p in os.listdir(o.models_dir) if p.endswith(".part")]
    o.call("quantize_model", input_model="tiny-f32", output_model="q1", quantization_type="q4_0", overwrite=True)
    (o.models_dir / "q1.gguf").unlink()                              # room again
    o.call("quantize_model", input_model="tiny-f32", output_model="q2", quantization_type="q4_0")


def test_quantize_keeps_the_free_space_floor(fake):
    o = fake(preload=False, quantize_min_free_bytes=2 ** 60).start()
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    with pytest.raises(RPCError) as err:
        o.call("quantize_model", input_model="tiny-f32", output_model="q1", quantization_type="q4_0")
    assert err.value.code == -32004 and err.value.data["reason"] == "disk_budget"
    assert err.value.data["setting"] == "llama.quantize_min_free_bytes"
    assert not (o.models_dir / "q1.gguf").exists()


# ---------------------------------------------------------------------- prewarm: capped, and clearable
def test_prewarm_prefix_is_capped_and_targets_can_be_cleared(fake):
    o = fake(preload=True, prewarm_max_prefix_bytes=1000).start()
    o.wait_child_state("ready", 60)
    with pytest.raises(RPCError) as err:
        o.call("prewarm", prefix="x" * 1001)
    assert err.value.code == -32602 and err.value.data["reason"] == "prefix_too_long"
    targets = o.root / "kv" / "prewarm.json"
    o.call("prewarm", prefix="You are ORAC. " * 10)
    assert MODEL in json.loads(targets.read_text())
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "prewarm", "--clear"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"cleared the prewarm target of {MODEL}" in out.stdout, out
    assert json.loads(targets.read_text()) == {}
    assert o.call("clear_prewarm", model=MODEL) == {"cleared": []}


# ---------------------------------------------------------------------- extra servers
def test_extra_servers_are_capped_and_keyed(fake):
    o = fake(preload=False, max_extra_servers=1).start()
    first = o.call("start_server", model=MODEL, port=free_port(), timeout=60)
    assert first["running"] and len(first["api_key"]) >= 24
    assert first["api_key"] not in json.dumps(o.call("server_info", pid=first["pid"]))
    with open(f"/proc/{first['pid']}/environ", "rb") as fh:      # by environment, never argv
        assert f"LLAMA_API_KEY={first['api_key']}".encode() in fh.read().split(b"\0")
    assert first["api_key"] not in " ".join(first["args"])
    with pytest.raises(RPCError) as err:
        o.call("start_server", model=MODEL, port=free_port(), timeout=60)
    assert err.value.code == -32005 and err.value.data["reason"] == "max_extra_servers"
    o.call("stop_server", pid=first["pid"])
    assert gone(first["pid"])
    again = o.call("start_server", model=MODEL, port=free_port(), timeout=60)
    o.call("stop_server", pid=again["pid"])


def test_keyless_extra_servers_are_an_explicit_opt_in(fake):
    """llama.extra_servers_keyless = true: the old keyless server, no key in the result or the environment."""
    o = fake(preload=False, extra_servers_keyless=True).start()
    info = o.call("start_server", model=MODEL, port=free_port(), timeout=60)
    try:
        assert info["api_key"] is None
        with open(f"/proc/{info['pid']}/environ", "rb") as fh:
            assert not [kv for kv in fh.read().split(b"\0") if kv.startswith(b"LLAMA_API_KEY=")]
    finally:
        o.call("stop_server", pid=info["pid"])


def test_concurrent_start_servers_cannot_pass_the_cap_together(fake):
    """Starts in flight count against max_extra_servers: of four at once with a cap of 1, one starts."""
    o = fake(preload=False, max_extra_servers=1).start()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        o.request("start_server", model=MODEL, port=free_port(), timeout=60))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    started = [r["result"] for r in results if "result" in r]
    refused = [r["error"] for r in results if "error" in r]
    assert len(started) == 1 and len(refused) == 3, results
    assert all(e["code"] == -32005 and e["data"]["reason"] == "max_extra_servers" for e in refused)
    o.call("stop_server", pid=started[0]["pid"])
