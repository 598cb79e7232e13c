"""Self-healing beyond /health, against the real llama-server: the memory budget, returning to the default
model, and the Prometheus metrics.  An OOM kill named and backed off is the supervisor's behaviour, on the
stand-in: fake/test_supervisor.py."""
from __future__ import annotations

import os
import shutil
import struct
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import GEMMA, SMOL, Oracd, RPCError, free_port, log_events
from prometheus_client.parser import text_string_to_metric_families

GiB = 2 ** 30


def oracctl(o: Oracd, *args: str) -> str:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def huge_gguf(path: Path, declared: int = 200 * GiB) -> Path:
    """A GGUF whose header declares one F32 tensor of ``declared`` bytes, as a sparse file of that size."""
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b
    kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
    kv += s("llama.block_count") + struct.pack("<I", 4) + struct.pack("<I", 2)
    elements = declared // 4
    tensor = s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", elements // 1024, 1024)
    tensor += struct.pack("<I", 0) + struct.pack("<Q", 0)         # F32, offset 0
    with open(path, "wb") as fh:
        fh.write(b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + kv + tensor)
    os.truncate(path, declared + 4096)                             # sparse: no disk used
    return path


def test_a_model_that_cannot_fit_is_refused_before_anything_is_stopped(fresh_oracd):
    o = fresh_oracd().start()
    huge_gguf(o.models_dir / "huge.gguf")
    before = o.call("status")["child"]
    for method, params in (("load_model", {"model": "huge"}), ("generate", {"model": "huge", "prompt": "hi"})):
        with pytest.raises(RPCError) as err:
            o.call(method, **params)
        e = err.value
        assert e.code == -32002 and e.data["reason"] == "insufficient_memory", e
        assert e.data["required_bytes"] > 200 * GiB > e.data["available_bytes"] > 0
        assert f"needs about {e.data['required_bytes'] // 2 ** 20} MiB" in e.message
        assert f"only {e.data['available_bytes'] // 2 ** 20} MiB is available" in e.message
    after = o.call("status")
    assert after["child"]["pid"] == before["pid"] and after["child"]["state"] == "ready"
    assert after["child"]["loads"] == before["loads"]
    assert after["memory"]["model"] == "huge.gguf"
    assert o.call("generate", prompt="Say hi.", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_memory_check_can_be_turned_off_and_llama_server_gets_cache_ram(fresh_oracd):
    o = fresh_oracd(llama={"memory_check": False, "cache_ram_mb": 64}).start()
    pid = o.call("status")["child"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--cache-ram") + 1] == b"64" and b"--metrics" in cmdline
    huge_gguf(o.models_dir / "huge.gguf")
    with pytest.raises(RPCError) as err:           # no estimate now: llama-server itself refuses it
        o.call("load_model", model="huge", timeout=60)
    assert err.value.code == -32002 and err.value.data.get("reason") != "insufficient_memory"


def test_fit_ctx_shrinks_the_context_to_the_memory_there_is_and_says_so(fresh_oracd, tmp_path):
    """A cgroup with room for SmolLM2 at about 1,800 positions, not the configured 8192: fit_ctx loads it
    with 1792 (7 x 256), on llama-server's command line and in status; a model that fits at no context is
    still refused, naming fit_ctx, with the warm model serving on."""
    MiB = 2 ** 20
    cg = tmp_path / "cgroup"
    cg.mkdir()
    used = 512 * MiB
    per_token = 30 * 3 * 64 * 2 * 2                                 # SmolLM2: f16 K and V per position
    room = 96576768 + 64 * MiB + 16 * MiB + 16 * MiB + 1800 * per_token   # weights, compute, cache_ram, margin
    (cg / "memory.current").write_text(f"{used}\n")
    (cg / "memory.max").write_text(f"{used + room}\n")
    o = fresh_oracd(models=[SMOL, GEMMA], llama={
        "cgroup_dir": str(cg), "fit_ctx": True, "ctx_size": 8192, "cache_ram_mb": 16, "memory_margin_mb": 16})
    o.start()
    st = o.call("status")["child"]
    assert st["ctx_fit"] == {"model": SMOL, "ctx_size": 1792, "configured_ctx_size": 8192,
                             "required_bytes": st["ctx_fit"]["required_bytes"], "available_bytes": room}, st
    assert st["ctx_fit"]["required_bytes"] <= room
    cmdline = Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"-c") + 1] == b"1792"
    [event] = log_events(o, "context shrunk to fit memory")
    assert event["ctx_size"] == 1792 and event["configured"] == 8192
    assert o.call("generate", prompt="Say hi.", max_tokens=2)["usage"]["completion_tokens"] == 2
    assert "1792 tokens, shrunk from 8192 to fit" in oracctl(o, "status")
    (cg / "memory.max").write_text(f"{used}\n")                     # no room left but what SmolLM2 frees
    with pytest.raises(RPCError) as err:
        o.call("load_model", model=GEMMA)
    e = err.value
    assert e.data["reason"] == "insufficient_memory" and "fit_ctx found no context of at least 512" in e.message, e
    after = o.call("status")["child"]
    assert after["pid"] == st["pid"] and after["state"] == "ready" and after["model"] == SMOL


def test_idle_on_another_model_returns_to_the_default_but_not_while_busy(fresh_oracd):
    o = fresh_oracd(llama={"return_to_default_after": 2, "health_interval": 0.3})
    shutil.copyfile(o.models_dir / SMOL, o.models_dir / "other.gguf")
    o.start()
    assert o.call("load_model", model="other")["model"] == "other.gguf"
    # a long generation on "other": no return while it runs, however long
    out = {}
    # counting never reaches an end of its own: the generation runs to max_tokens, several seconds
    t = threading.Thread(target=lambda: out.update(r=o.call("generate", model="other", prompt="1, 2, 3, 4, 5, 6, 7,",
                                                            raw=True, max_tokens=400, temperature=0, timeout=120)))
    t.start()
    t0 = time.monotonic()
    while t.is_alive():
        assert o.call("status")["child"]["model"] == "other.gguf"
        time.sleep(0.2)
    t.join()
    busy_for = time.monotonic() - t0
    assert busy_for > 2.5 and out["r"]["usage"]["completion_tokens"] == 400, (busy_for, out)
    st = o.wait_child_state("ready", 5)
    assert st["model"] == "other.gguf"
    deadline = time.monotonic() + 15
    while o.call("status")["child"]["model"] != SMOL:
        assert time.monotonic() < deadline, "did not return to the default model"
        time.sleep(0.1)
    st = o.wait_child_state("ready", 30)
    assert st["model"] == SMOL
    back = log_events(o, "returning to the default model")
    assert len(back) == 1 and back[0]["previous"] == "other.gguf" and back[0]["idle_s"] >= 2


def test_metrics_parse_move_with_traffic_and_carry_llama_servers_series(fresh_oracd):
    port = free_port()
    o = fresh_oracd(server={"metrics_listen": f"127.0.0.1:{port}"}).start()

    def families(text):
        return {f.name: f for f in text_string_to_metric_families(text)}

    def value(fams, name, **labels):
        return next((s.value for s in fams[name].samples
                     if s.name == name + ("_total" if fams[name].type == "counter" else "")
                     and all(s.labels.get(k) == v for k, v in labels.items())), 0.0)

    before = families(o.call("metrics")["text"])
    for _ in range(3):
        o.call("generate", prompt="Say hi.", max_tokens=2)
    o.request("generate", prompt=" ")                       # one error
    after = families(o.call("metrics")["text"])
    assert value(after, "oracd_requests", method="generate", outcome="ok") == \
        value(before, "oracd_requests", method="generate", outcome="ok") + 3
    assert value(after, "oracd_requests", method="generate", outcome="-32602") == 1
    gen = {s.name: s.value for s in after["oracd_generate_seconds"].samples if not s.labels.get("le")}
    assert gen["oracd_generate_seconds_count"] == 3 and gen["oracd_generate_seconds_sum"] > 0
    assert value(after, "oracd_child_state", state="ready") == 1.0
    assert value(after, "oracd_child_loads") == 1 and value(after, "oracd_warm", outcome="none") == 1   # no profile
    assert after["oracd_rss_bytes"].samples[0].value > 10e6
    llama = [s for f in after.values() if f.name.startswith("llamacpp:") for s in f.samples]
    assert llama and all(s.labels["model"] == SMOL for s in llama)
    assert any(s.name == "llamacpp:tokens_predicted_total" and s.value >= 6 for s in llama)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        http_fams = families(resp.read().decode())
    assert value(http_fams, "oracd_requests", method="generate", outcome="ok") >= 3
