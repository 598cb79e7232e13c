"""The supervised llama-server: load/unload, swap, bad models, orphans.

Crash restart, the hang watchdog, swap order and SIGTERM are the supervisor's behaviour, tested on the
stand-in in seconds: fake/test_supervisor.py."""
from __future__ import annotations

import os
import threading

import psutil

from helpers import SMOL, Oracd, gone

SMOL_B = "smol-b.gguf"   # the same weights under another name: a real swap, cheaply


def test_preload_off_loads_on_first_request_and_unload(fresh_oracd):
    o = fresh_oracd(llama={"preload": False}).start()
    st = o.call("status")["child"]
    assert st["state"] == "stopped" and st["pid"] is None
    r = o.call("generate", prompt="Hi", max_tokens=2, temperature=0)
    assert r["usage"]["completion_tokens"] == 2
    st = o.call("status")["child"]
    assert st["state"] == "ready" and st["model"] == SMOL
    pid = st["pid"]
    u = o.call("unload_model")
    assert u == {"unloaded": SMOL, "state": "stopped"}
    assert gone(pid)
    assert o.call("status")["child"]["pid"] is None
    loaded = o.call("load_model", model=SMOL)
    assert loaded["model"] == SMOL and loaded["state"] == "ready" and loaded["pid"] != pid


def test_swap_between_models_serves_every_request(fresh_oracd):
    o = fresh_oracd()
    os.link(o.models_dir / SMOL, o.models_dir / SMOL_B)
    o.start()
    pid_a = o.child_pid()
    results, errors = [], []

    def ask(model: str, i: int) -> None:
        try:
            r = o.call("generate", model=model, prompt=f"Say the number {i}.", max_tokens=4, temperature=0,
                       timeout=120)
            results.append((model, r["model"], r["prompt"]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(SMOL if i % 2 else SMOL_B, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 8
    assert all(m == echoed for m, echoed, _ in results)
    st = o.call("status")["child"]
    assert st["loads"] >= 2                       # at least one real swap happened
    assert gone(pid_a) or st["pid"] == pid_a
    o.call("load_model", model=SMOL_B)
    st = o.call("status")["child"]
    assert st["model"] == SMOL_B and st["state"] == "ready"
    assert [m["name"] for m in o.call("list_models") if m["loaded"]] == [SMOL_B]


def test_not_a_gguf_keeps_current_model(oracd):
    pid = oracd.child_pid()
    (oracd.models_dir / "junk.gguf").write_bytes(b"this is not a model" * 100)
    resp = oracd.request("generate", model="junk", prompt="hi", max_tokens=2)
    assert resp["error"]["code"] == -32002
    assert "not a loadable GGUF" in resp["error"]["message"]
    st = oracd.call("status")["child"]
    assert st["pid"] == pid and st["model"] == SMOL and st["state"] == "ready"


def test_missing_binary_is_a_clear_error(fresh_oracd):
    o = fresh_oracd(llama={"server_bin": "/nonexistent/llama-server", "preload": False}).start()
    resp = o.request("generate", prompt="hi", max_tokens=2)
    assert resp["error"]["code"] == -32002
    assert "/nonexistent/llama-server" in resp["error"]["message"]
    assert o.call("status")["child"]["state"] == "failed"


def test_orphaned_llama_server_cleaned_after_oracd_sigkill(fresh_oracd):
    o = fresh_oracd().start()
    child = o.child_pid()
    o.proc.kill()                               # oracd dies; its llama-server (own session) survives
    o.proc.wait(10)
    assert psutil.pid_exists(child)
    assert o.socket.exists()                    # stale socket left behind
    again = Oracd(root=o.root)                  # same config, same socket and runtime dir
    again.start()
    try:
        assert gone(child)
        st = again.call("status")["child"]
        assert st["state"] == "ready" and st["pid"] != child
    finally:
        again.stop()
    assert not o.socket.exists()
