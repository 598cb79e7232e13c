"""llama.cpp RPC workers through oracd: real rpc-server processes on loopback, the real llama-server.

Covers: the model's layers really land on the workers (their memory grows by
the model's size), generate works, status shows the workers; a worker down at
load fails naming it, or falls back to local with rpc_fallback_local; a worker
killed mid-generation fails that generation clearly and the child restarts by
the same rule; a worker killed while idle is noticed before the next request.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

import pytest

from helpers import Oracd, RpcWorker as Worker, free_port, gone, log_events, wait_for
from llama_direct import busy_slots
from oracd.workers.hello import hello

MB = 1024 * 1024


@pytest.fixture
def workers():
    made: List[Worker] = []

    def make(n: int) -> List[Worker]:
        ws = [Worker() for _ in range(n)]
        made.extend(ws)
        return ws

    yield make
    for w in made:
        w.cleanup()


def long_generate_in_background(o: Oracd, max_tokens: int) -> Tuple[threading.Thread, dict]:
    """A generation that runs for seconds, in a thread; its response lands in out["resp"]."""
    out: dict = {}

    def run() -> None:
        out["resp"] = o.request("generate", prompt="Write a very long story about a knight.",
                                max_tokens=max_tokens, temperature=0, timeout=120)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_two_workers_hold_the_model_and_generate_works(fresh_oracd, workers):
    w1, w2 = workers(2)
    before = [w.rss() for w in (w1, w2)]
    o = fresh_oracd(llama={"rpc_workers": [w1.address, w2.address], "tensor_split": [1, 1]}).start()
    st = o.call("status")["child"]
    assert st["state"] == "ready"
    cmd = " ".join(log_events(o, "child spawned")[-1]["cmd"].split())
    assert f"--rpc {w1.address},{w2.address}" in cmd and "-ts 1,1" in cmd and "-ngl 999" in cmd
    grown = [w.rss() - b for w, b in zip((w1, w2), before)]
    # SmolLM2's weights (92 MiB) plus KV cache are split between the two workers
    assert all(g > 20 * MB for g in grown) and sum(grown) > 100 * MB, grown
    r = o.call("generate", prompt="Turn on the kitchen lights.", max_tokens=8, temperature=0)
    assert r["usage"]["completion_tokens"] > 0 and r["response"].strip()
    rows = {w["address"]: w for w in st["rpc"]["workers"]}
    assert set(rows) == {w1.address, w2.address}
    for w in rows.values():
        assert w["in_use"] and w["attached"] is True and w["answers"] is True and w["version"] == "7.0.0"
    assert st["rpc"]["fallback_local"] is None and st["rpc"]["tensor_split"] == [1.0, 1.0]
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for w in (w1, w2):
        assert f"{w.address} in use, attached; answers (RPC 7.0.0)" in out.stdout


def test_worker_down_at_load_fails_naming_it(fresh_oracd, workers):
    (w,) = workers(1)
    dead = f"127.0.0.1:{free_port()}"
    o = fresh_oracd(llama={"rpc_workers": [w.address, dead], "preload": False}).start()
    t0 = time.monotonic()
    resp = o.request("load_model")
    assert time.monotonic() - t0 < 10
    err = resp["error"]
    assert err["code"] == -32002 and dead in err["message"] and "not answering" in err["message"]
    assert w.address not in err["message"]
    assert err["data"]["reason"] == "rpc_worker_down"
    st = o.call("status")["child"]
    assert st["state"] == "failed" and st["pid"] is None
    rows = {r["address"]: r for r in st["rpc"]["workers"]}
    assert rows[dead]["answers"] is False and "cannot connect" in rows[dead]["error"]
    assert rows[w.address]["answers"] is True
    # the live worker was probed and released: it still answers and holds no model
    assert hello(w.address).answers and w.rss() < 50 * MB


def test_worker_down_at_load_falls_back_to_local(fresh_oracd):
    dead = f"127.0.0.1:{free_port()}"
    o = fresh_oracd(llama={"rpc_workers": [dead], "rpc_fallback_local": True}).start()
    st = o.call("status")["child"]
    assert st["state"] == "ready"
    cmd = log_events(o, "child spawned")[-1]["cmd"]
    assert "--rpc" not in cmd
    fb = st["rpc"]["fallback_local"]
    assert fb["workers"] == [dead] and dead in fb["reason"]
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                         capture_output=True, text=True, timeout=30)
    assert f"{dead} not answering: cannot connect" in out.stdout and "running locally" in out.stdout
    assert log_events(o, "rpc fallback: loading without workers")
    r = o.call("generate", prompt="Hi", max_tokens=2, temperature=0)
    assert r["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("fallback", [False, True], ids=["no-fallback", "fallback"])
def test_worker_killed_mid_generation(fresh_oracd, workers, fallback):
    (w,) = workers(1)
    o = fresh_oracd(llama={"rpc_workers": [w.address], "rpc_fallback_local": fallback}).start()
    first = o.call("status")["child"]
    t, out = long_generate_in_background(o, max_tokens=400)
    wait_for(lambda: busy_slots(first["endpoint"]), 30, "the generation to be under way on the worker")
    w.kill()
    t0 = time.monotonic()
    t.join(60)
    assert not t.is_alive(), "the generation hung after its worker died"
    assert time.monotonic() - t0 < 20
    err = out["resp"]["error"]
    assert err["code"] == -32007 and "RPC worker was lost" in err["message"], err
    assert err["data"]["reason"] == "rpc_worker_lost"
    assert gone(first["pid"])
    if fallback:
        st = o.wait_child_state("ready", 30)
        assert st["pid"] != first["pid"] and st["rpc"]["fallback_local"]["workers"] == [w.address]
        assert st["last_exit"]["reason"] == "rpc_worker_lost"
        assert o.call("generate", prompt="Hi", max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2
    else:
        deadline = time.monotonic() + 30
        st = o.call("status")["child"]
        while not (st["last_error"] and w.address in st["last_error"]["message"]):
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
            st = o.call("status")["child"]
        assert st["state"] in ("backoff", "starting", "stopped", "failed") and st["pid"] is None
        assert st["last_exit"]["reason"] == "rpc_worker_lost"
        resp = o.request("generate", prompt="Hi", max_tokens=2, timeout=5)
        assert resp["error"]["code"] in (-32002, -32006, -32003), resp


def test_worker_killed_while_idle_is_noticed_before_the_next_request(fresh_oracd, workers):
    (w,) = workers(1)
    o = fresh_oracd(llama={"rpc_workers": [w.address], "rpc_fallback_local": True}).start()
    first = o.call("status")["child"]
    assert first["rpc"]["workers"][0]["attached"] is True
    w.kill()
    st: Optional[dict] = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = o.call("status")["child"]
        if st["state"] == "ready" and st["pid"] != first["pid"]:
            break
        time.sleep(0.1)
    assert st and st["state"] == "ready" and st["pid"] != first["pid"], st
    assert st["last_exit"]["reason"] == "rpc_worker_lost"
    assert st["rpc"]["fallback_local"]["workers"] == [w.address]
    assert log_events(o, "rpc worker lost")[0]["workers"] == [w.address]
    r = o.call("generate", prompt="Hi", max_tokens=2, temperature=0)
    assert r["usage"]["completion_tokens"] == 2


def test_frozen_worker_is_caught_by_the_slots_probe_and_named_at_restart(fresh_oracd, workers):
    """SIGSTOP: the worker's connection stays up, llama-server's decode loop waits forever."""
    (w,) = workers(1)
    o = fresh_oracd(llama={"rpc_workers": [w.address], "rpc_fallback_local": True, "hang_timeout": 3,
                           "health_interval": 0.5, "health_timeout": 1}).start()
    first = o.call("status")["child"]
    t, out = long_generate_in_background(o, max_tokens=200)
    wait_for(lambda: busy_slots(first["endpoint"]), 30, "the generation to be under way on the worker")
    w.kill(signal.SIGSTOP)
    t.join(60)
    assert not t.is_alive(), "the generation hung on a frozen worker"
    # killed for the hang, restarted locally (the frozen worker does not answer HELLO),
    # and the interrupted generation was retried there
    assert out["resp"]["result"]["usage"]["completion_tokens"] > 0, out["resp"]
    st = o.call("status")["child"]
    assert st["pid"] != first["pid"] and st["last_exit"]["reason"] == "hang"
    fb = st["rpc"]["fallback_local"]
    assert fb["workers"] == [w.address] and "no HELLO answer" in fb["reason"]
    w.kill(signal.SIGCONT)
    assert w.proc.poll() is None          # the abandoned probe (closed with a reset) did not kill it


def test_reload_to_no_workers_makes_the_next_load_local_with_the_old_worker_gone(fresh_oracd, workers, tmp_path):
    """A reload that sets the profile's rpc_workers = [] moves the worker pre-flight (and extra servers) to
    the new config: the restart no longer requires the removed worker."""
    from helpers import SMOL
    (w,) = workers(1)
    pfile = tmp_path / "models.toml"
    pfile.write_text(f'[profiles."{SMOL}"]\nmax_tokens = 8\nrpc_workers = ["{w.address}"]\n')
    o = fresh_oracd(llama={"profiles_file": str(pfile)}).start()
    first = o.call("status")["child"]
    assert first["state"] == "ready" and f"--rpc {w.address}" in log_events(o, "child spawned")[-1]["cmd"]
    tmp = tmp_path / "models.toml.tmp"
    tmp.write_text(f'[profiles."{SMOL}"]\nmax_tokens = 8\nrpc_workers = []\n')
    tmp.replace(pfile)
    assert o.call("reload")["restarted"] is True
    deadline = time.monotonic() + 60
    while True:
        st = o.call("status")["child"]
        if st["state"] == "ready" and st["pid"] != first["pid"]:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert "--rpc" not in log_events(o, "child spawned")[-1]["cmd"]
    assert "rpc" not in st or not st["rpc"]["workers"], st.get("rpc")
    w.kill()                                   # the old worker is gone: nothing here needs it
    r = o.call("generate", prompt="Turn on the kitchen lights.", temperature=0)
    assert r["usage"]["completion_tokens"] > 0
    after = o.call("status")["child"]
    assert after["pid"] == st["pid"] and after["restarts"] == 0 and after["last_error"] is None
    assert not [e for e in log_events(o, "load failed") if "rpc worker" in e["error"]]
