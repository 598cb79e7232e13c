"""The supervisor's behaviour, in seconds, on the scripted stand-in (``llama_server.py``): swap order, drain,
crash restart, crash-loop fail-fast, the hang watchdog, SIGTERM.  No llama.cpp: oracd is real, its child the
stand-in.  The real llama-server's main paths (generate, stream, swap, restore, HTTP) stay in tests/real."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Dict, List

import pytest

from helpers import Conn, gone, log_events, wait_for

A, B = "a.gguf", "b.gguf"


def oracctl(o, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def served(o) -> List[str]:
    """``<model> <prompt>`` per completion the stand-in received, in the order it received them."""
    p = o.state / "served.log"
    return p.read_text().splitlines() if p.exists() else []


def in_flight(o) -> int:
    return o.call("status")["requests"]["in_flight"]


class Asker:
    """Generations sent one by one from threads, each waiting until oracd counts it in flight (arrival order)."""

    def __init__(self, o) -> None:
        self.o, self.threads, self.out = o, [], {}

    def ask(self, model: str, prompt: str, **kw: Any) -> None:
        n = in_flight(self.o)

        def run() -> None:
            try:
                self.out[prompt] = self.o.request("generate", model=model, prompt=prompt, max_tokens=2,
                                                  timeout=60, **kw)
            except Exception as exc:      # reported by the test
                self.out[prompt] = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        wait_for(lambda: in_flight(self.o) > n, 30, f"{prompt} to be in flight")

    def join(self) -> Dict[str, Any]:
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), self.out
        return self.out


# ---------------------------------------------------------------------- swap order and drain
def test_a_swap_drains_the_current_model_and_serves_each_model_in_arrival_order(stand_in):
    """Requests for two models, interleaved (a1 b1 a2 b2 a3, a1 still generating): a1 finishes (drain: the
    swap waits for it), then B serves every request that waits for it (b1 b2), then A the rest (a2 a3): each
    model in arrival order, three loads for five requests.  No ping-pong: once B is asked for, a later request
    for A does not jump ahead of it (B cannot starve), and it waits with A's batch."""
    o = stand_in("healthy", "--gated", models=(A, B), parallel=1).start()
    first = o.call("status")["child"]
    assert first["model"] == A
    asker = Asker(o)
    asker.ask("a", "a1")
    wait_for(lambda: served(o) == [f"{A} a1"], 30, "a1 to reach the stand-in")
    for p in ("b1", "a2", "b2", "a3"):
        asker.ask(p[0], p)
    st = o.call("status")["child"]                  # drain: B waits, A's generation is not cut short
    assert (st["pid"], st["model"], st["state"]) == (first["pid"], A, "ready"), st
    assert served(o) == [f"{A} a1"]
    (o.state / "release").touch()
    out = asker.join()
    for p in ("a1", "a2", "a3", "b1", "b2"):
        assert out[p].get("result", {}).get("response") == "hello", (p, out[p])
    assert served(o) == [f"{A} a1", f"{B} b1", f"{B} b2", f"{A} a2", f"{A} a3"], served(o)
    st = o.call("status")["child"]
    assert st["model"] == A and st["loads"] == 3 and st["pid"] != first["pid"]
    assert gone(first["pid"])


# ---------------------------------------------------------------------- crash restart
def test_a_crash_mid_generation_is_retried_once_on_a_restarted_child(stand_in):
    """The stand-in dies on its first completion: oracd restarts it and retries the generation there, once;
    the client sees a normal answer.  A child that dies on every request fails the request clearly."""
    o = stand_in("healthy", "--crash-after", "1").start()
    before = o.call("status")["child"]
    resp = o.request("generate", prompt="hi", max_tokens=2, timeout=60)
    assert resp["error"]["code"] == -32007 and "twice" in resp["error"]["message"], resp
    st = wait_for(lambda: (lambda c: c if c["state"] == "ready" and c["restarts"] >= 2 else None)(
        o.call("status")["child"]), 30, "the child restarted twice")
    assert st["pid"] != before["pid"] and st["last_exit"]["returncode"] == 1
    assert [e["pid"] for e in log_events(o, "generation failed, retrying once after restart")] == [before["pid"]]
    assert served(o) == ["fake.gguf hi", "fake.gguf hi"]


def test_a_killed_idle_child_is_restarted_and_the_next_generate_succeeds(stand_in):
    o = stand_in("healthy").start()
    pid = o.child_pid()
    st = o.crash_restart(30)
    assert st["restarts"] == 1 and st["last_exit"]["returncode"] == -9 and st["last_exit"]["signal"] == "SIGKILL"
    assert log_events(o, "child lost")[-1]["pid"] == pid
    assert o.call("generate", prompt="hi", max_tokens=2)["response"] == "hello"


def test_an_oom_kill_is_named_counted_and_backed_off(stand_in, tmp_path):
    """A SIGKILL while the cgroup's oom_kill count grew is an OOM kill: named, counted, backed off 4x longer;
    a SIGKILL without it is a plain crash."""
    cg = tmp_path / "cgroup"
    cg.mkdir()
    events = cg / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    o = stand_in("healthy", cgroup_dir=str(cg), restart_backoff_initial=0.2).start()
    first = o.call("status")["child"]
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")   # what the kernel does when it picks it
    os.kill(first["pid"], signal.SIGKILL)
    st = wait_for(lambda: (lambda c: c if c["restarts"] == 1 else None)(o.call("status")["child"]), 30,
                  "the loss to be counted")
    assert st["state"] == "backoff" and st["retry_in_s"] > 3, st    # 4x the normal delay, at least 5 s
    assert st["last_exit"]["reason"] == "out_of_memory" and st["last_exit"]["signal"] == "SIGKILL"
    assert st["last_exit"]["message"] == "llama-server killed (SIGKILL) (out_of_memory)"
    assert st["restarts_by_reason"] == {"out_of_memory": 1}
    assert [e["reason"] for e in log_events(o, "child lost")] == ["out_of_memory"]
    st = o.wait_child_state("ready", 30)
    assert st["pid"] != first["pid"]
    assert 'oracd_child_restarts_total{reason="out_of_memory"} 1.0' in o.call("metrics")["text"]
    shown = oracctl(o, "status")
    assert "1 restart (1 out_of_memory)" in shown and "killed (SIGKILL) (out_of_memory)" in shown, shown
    assert 'oracd_child_restarts_total{reason="out_of_memory"} 1.0' in oracctl(o, "metrics")
    # a SIGKILL with no oom_kill increase is a plain crash
    os.kill(st["pid"], signal.SIGKILL)
    st = wait_for(lambda: (lambda c: c if c["restarts"] == 2 else None)(o.call("status")["child"]), 30,
                  "the second loss to be counted")
    assert st["last_exit"]["reason"] == "crash" and st["restarts_by_reason"] == {"out_of_memory": 1, "crash": 1}


# ---------------------------------------------------------------------- crash loop
def test_crash_loop_backs_off_fails_fast_and_recovers(stand_in):
    """A model that stops loading (the stand-in's ``refuse-load``): restarts back off exponentially up to
    restart_backoff_max, status keeps answering, past crash_loop_threshold every generate for it fails fast
    with -32006 "crash loop"; once the model loads again the next attempt serves."""
    threshold = 3
    o = stand_in("healthy", restart_backoff_initial=0.2, restart_backoff_max=1.6,
                 crash_loop_threshold=threshold).start()
    first = o.call("status")["child"]
    (o.state / "refuse-load").touch()
    os.kill(first["pid"], signal.SIGKILL)
    seen = []

    def looping():
        st = o.call("status")["child"]
        seen.append(st)
        return st if st["consecutive_failures"] >= threshold + 2 and st["state"] == "backoff" else None
    st = wait_for(looping, 60, "a crash loop")
    assert st["model"] is None and st["pid"] is None and st["wanted_model"] == "fake.gguf"
    assert 0 <= st["retry_in_s"] <= 1.6 and "fake.gguf" in st["last_error"]["message"]
    fails = [s["consecutive_failures"] for s in seen]
    assert fails == sorted(fails)                   # only ever grows while the loop lasts
    delays = [rec["retry_in_s"] for rec in log_events(o, "child state")
              if rec.get("state") == "backoff" and rec.get("model") == "fake.gguf"]
    assert delays[0] == pytest.approx(0.2)
    for a, b in zip(delays, delays[1:]):
        assert b == pytest.approx(min(2 * a, 1.6)), delays     # exponential, capped at restart_backoff_max
    # past the threshold every generate fails fast, whatever phase of the restart cycle it lands in
    with o.conn(timeout=30) as c:
        for _ in range(20):
            resp = c.request("generate", prompt="hi", max_tokens=2, timeout=30)
            assert resp["error"]["code"] == -32006 and "crash loop" in resp["error"]["message"], resp
            assert c.call("status")["child"]["consecutive_failures"] >= threshold
    (o.state / "refuse-load").unlink()
    st = o.wait_child_state("ready", 30)
    assert st["pid"] not in (first["pid"], None) and st["restarts"] >= threshold + 2
    assert o.call("generate", prompt="hi", max_tokens=2)["response"] == "hello"


# ---------------------------------------------------------------------- the hang watchdog
@pytest.mark.parametrize("how", [signal.SIGUSR1, signal.SIGUSR2], ids=["frozen-no-cpu", "busy-loop"])
def test_a_hung_idle_child_is_killed_restarted_and_the_next_generate_served(stand_in, how):
    """The stand-in stops answering /health while idle (frozen, or spinning a core): after hang_timeout the
    watchdog kills it (SIGKILL) and starts a new one; a generate sent meanwhile is served there."""
    o = stand_in("healthy", hang_timeout=1.5, health_interval=0.3, health_timeout=0.5).start()
    before = o.call("status")["child"]
    os.kill(before["pid"], how)
    r = o.call("generate", prompt="hi", max_tokens=2, timeout=60)
    assert r["response"] == "hello"
    st = o.call("status")["child"]
    assert st["pid"] != before["pid"] and st["restarts"] == before["restarts"] + 1
    assert st["last_exit"]["reason"] == "hang" and st["last_exit"]["signal"] == "SIGKILL"
    assert log_events(o, "child hang") and gone(before["pid"])


# ---------------------------------------------------------------------- SIGTERM
def test_sigterm_lets_in_flight_generations_finish_refuses_new_work_and_exits_0(stand_in):
    """SIGTERM with four generations in flight: new work is refused (-32009 on a live connection, a new
    connection refused) while the four finish with their own answers; llama-server is stopped, the socket
    removed, oracd exits 0 without abandoning anything."""
    o = stand_in("healthy", "--gated", parallel=4, server={"shutdown_grace": 60}).start()
    child = o.child_pid()
    late = o.conn(timeout=30)                       # an idle connection opened before the signal
    asker = Asker(o)
    for i in range(4):
        asker.ask("fake", f"p{i}")
    wait_for(lambda: len(served(o)) == 4, 30, "the four generations inside the stand-in")
    o.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: log_events(o, "signal received, shutting down"), 30, "oracd to take the signal")
    resp = late.request("generate", prompt="too late", max_tokens=2)
    assert resp["error"]["code"] == -32009, resp
    late.close()
    with pytest.raises(OSError):
        Conn(o.socket, timeout=5).close()
    (o.state / "release").touch()
    out = asker.join()
    assert {p: r["result"]["response"] for p, r in out.items()} == {f"p{i}": "hello" for i in range(4)}
    assert o.proc.wait(60) == 0
    assert not o.socket.exists() and gone(child)
    assert not log_events(o, "shutdown grace over, abandoning requests")
