"""Faults the real llama-server cannot show on demand, against a scripted stand-in (``llama_server.py``).

No llama.cpp here: oracd is real, its child is the stand-in, the model file a tiny GGUF.
"""
from __future__ import annotations

import sys
import time

import pytest

from helpers import stand_in_script, RPCError, gone, log_events, wait_for, write_tiny_f32

MODEL = "fake.gguf"


@pytest.fixture
def scripted(fresh_oracd, tmp_path):
    """An oracd whose llama-server is the stand-in with ``fault``; extra llama options as keywords."""
    def make(fault: str, **llama):
        wrapper = stand_in_script(tmp_path, fault)
        o = fresh_oracd(models=(), llama={"server_bin": str(wrapper), "default_model": MODEL, "threads": 1,
                                          **llama})
        write_tiny_f32(o.models_dir / MODEL)
        return o
    return make


def test_crash_on_load_is_named_everywhere(scripted):
    """A llama-server that segfaults while loading (the AMX crash) reads "crashed (SIGSEGV)" everywhere."""
    o = scripted("crash-on-load", preload=False).start()
    with pytest.raises(RPCError) as err:
        o.call("load_model", timeout=30)
    assert err.value.code == -32002
    assert err.value.message.startswith(f"llama-server crashed (SIGSEGV) while loading {MODEL}"), err.value.message
    assert err.value.data["signal"] == "SIGSEGV" and err.value.data["returncode"] == -11
    child = o.call("status")["child"]
    assert child["state"] == "failed" and "crashed (SIGSEGV)" in child["last_error"]["message"]
    assert child["last_exit"]["message"] == "llama-server crashed (SIGSEGV)"
    assert child["last_exit"]["signal"] == "SIGSEGV" and child["last_exit"]["reason"] == "load_failed"
    failed = log_events(o, "load failed")
    assert failed and "llama-server crashed (SIGSEGV)" in failed[-1]["error"]
    out = __import__("subprocess").run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                                       capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "llama-server crashed (SIGSEGV)" in out.stdout, out.stdout


def test_hang_mid_decode_is_killed_restarted_and_reported(scripted, tmp_path):
    """The stand-in hangs like a GPU hang: /health stays 200, the decode never returns.  With the generation
    in flight oracd probes /slots, kills the stuck child after hang_timeout, retries once on a fresh one,
    and then fails the request clearly instead of hanging until its timeout."""
    o = scripted("hang-decode", hang_timeout=2, health_interval=0.3, health_timeout=0.5).start()
    first = o.call("status")["child"]
    assert first["state"] == "ready"
    # idle: /health is the probe and answers; probes spanning more than hang_timeout kill nothing
    probes = lambda: (tmp_path / "health.log").read_text().split().count(str(first["pid"]))  # noqa: E731
    after_ready = probes()
    wait_for(lambda: probes() >= after_ready + 2 / 0.3 + 2, 30, "probes spanning more than hang_timeout")
    assert o.call("status")["child"]["pid"] == first["pid"]
    t0 = time.monotonic()
    resp = o.request("generate", prompt="Hello", max_tokens=4, timeout=60)
    took = time.monotonic() - t0
    assert resp["error"]["code"] == -32007, resp
    assert "twice; giving up" in resp["error"]["message"]
    assert took < 30, f"a stuck child held the request for {took:.1f}s"
    hangs = log_events(o, "child hang")
    assert len(hangs) == 2 and all(e["why"].startswith("/slots unanswered") for e in hangs)
    st = o.wait_child_state("ready", 30)
    assert st["pid"] not in (first["pid"], None) and st["last_exit"]["reason"] == "hang"
    assert st["last_exit"]["message"] == "llama-server killed (SIGKILL) (hang)"
    assert gone(first["pid"])


def test_wedged_child_is_restarted_after_the_threshold_and_the_request_retried(scripted):
    """/health says 200 while every completion answers 500 "Compute error." (a wedged child): the first
    threshold-1 generations fail clearly, the one that reaches the threshold restarts the child and is
    retried there, and succeeds; status, the log and the metrics count it."""
    o = scripted("wedged-once", wedge_threshold=3, health_interval=0.3).start()
    first = o.call("status")["child"]
    for _ in range(2):
        resp = o.request("generate", prompt="Hello", max_tokens=4, timeout=30)
        assert resp["error"]["code"] == -32007 and resp["error"]["message"] == "llama-server error 500: Compute error."
    assert o.call("status")["child"]["pid"] == first["pid"]          # below the threshold: no restart
    r = o.call("generate", prompt="Hello", max_tokens=4, timeout=60)  # the third: wedged -> restart -> retried
    assert r["response"] == "hello"
    st = o.call("status")["child"]
    assert st["state"] == "ready" and st["pid"] != first["pid"] and st["restarts_by_reason"] == {"wedged": 1}
    assert st["last_exit"]["reason"] == "wedged" and gone(first["pid"])
    assert [e["failures"] for e in log_events(o, "wedged")] == [3]
    text = o.call("metrics")["text"]
    assert 'oracd_child_restarts_total{reason="wedged"} 1.0' in text
    assert 'oracd_requests_total{method="generate",outcome="-32007"} 2.0' in text
    assert 'oracd_requests_total{method="generate",outcome="ok"} 1.0' in text


def test_client_errors_never_count_as_a_wedge(scripted):
    """4xx answers are the request's fault, not the child's: any number of them restarts nothing."""
    o = scripted("http-400", wedge_threshold=2, health_interval=0.3).start()
    pid = o.call("status")["child"]["pid"]
    for _ in range(5):
        resp = o.request("generate", prompt="Hello", max_tokens=4, timeout=30)
        assert resp["error"]["code"] == -32602 and "bad sampling" in resp["error"]["message"], resp
    st = o.call("status")["child"]
    assert st["pid"] == pid and st["restarts"] == 0 and st["state"] == "ready"


def test_a_request_waiting_for_a_model_that_is_unloaded_is_answered_at_once(scripted):
    """unload_model while a generate waits for its model to load: the generate gets -32006 naming the unload
    (reason "unloaded") right away, instead of waiting in vain until its own timeout."""
    import threading
    o = scripted("slow-load", preload=False).start()
    out = []
    t = threading.Thread(target=lambda: out.append(o.request("generate", prompt="hi", max_tokens=2, timeout=60)))
    t.start()
    o.wait_child_state("starting", timeout=30)
    t0 = time.monotonic()
    assert o.call("unload_model", timeout=30)["state"] == "stopped"
    t.join(30)
    assert out, "the generate never returned"
    err = out[0].get("error")
    assert err and err["code"] == -32006 and err["data"]["reason"] == "unloaded", out[0]
    assert time.monotonic() - t0 < 20        # answered by the unload, not by its 60 s timeout
