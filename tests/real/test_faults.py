"""Fault injection against a real oracd + llama-server + SmolLM2.

Covered here: llama-server SIGKILLed mid-generation (one transparent retry), header-level
corrupt models that must never evict the loaded one, quantize failures that leave nothing
behind (bad type, unusable input, existing output, "disk full" via RLIMIT_FSIZE).

Covered elsewhere (not repeated): a crash loop and SIGTERM with generations in flight
(the supervisor's behaviour, on the stand-in: fake/test_supervisor.py), a stale socket + orphaned llama-server after oracd
is SIGKILLed (test_supervisor.py::test_orphaned_llama_server_cleaned_after_oracd_sigkill),
a second oracd on the same socket (test_rpc.py::test_second_oracd_on_same_socket_refuses),
a truncated-tensor-data model, refused before the warm model is stopped
(test_bad_model.py::test_a_truncated_gguf_is_refused_and_the_same_server_keeps_serving).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from helpers import SMOL, Conn, Oracd, write_tiny_f32, gone, log_events
from llama_direct import busy_slots
from oracd.models.gguf import read_gguf_header
from oracd.models.quota import LEDGER
from oracd_protocol.errors import from_wire

# On a shared 2-core box: one llama.cpp thread (several spin-waiting threads stall badly when
# another process takes a core) and no warm-up pass (it only costs start-up time).
FAST = {"threads": 1, "extra_args": ["--no-warmup"]}


_ids = itertools.count(1)


def creq(c: Conn, method: str, **params: Any) -> Dict[str, Any]:
    """One request on an open connection; the answer with its id (progress notifications skipped)."""
    rid = f"f{next(_ids)}"
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n")
    while True:
        msg = c.recv()
        if isinstance(msg, dict) and "id" not in msg and "method" in msg:
            continue                                  # a notification about the request in flight
        assert isinstance(msg, dict) and msg.get("id") == rid, msg
        return msg


def ccall(c: Conn, method: str, **params: Any) -> Any:
    resp = creq(c, method, **params)
    if "error" in resp:
        raise from_wire(resp["error"])
    return resp["result"]


def req(o: Oracd, method: str, **params: Any) -> Dict[str, Any]:
    with o.conn(timeout=150) as c:
        return creq(c, method, **params)


def call(o: Oracd, method: str, **params: Any) -> Any:
    with o.conn(timeout=150) as c:
        return ccall(c, method, **params)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(d: Path) -> List[str]:
    """Temp files a quantize run could leave behind (``.<name>.<hex>.part``); quantize's ledger is no temp file."""
    return sorted(p.name for p in d.iterdir() if (p.name.endswith(".part") or p.name.startswith("."))
                  and p.name != LEDGER)


@pytest.fixture(scope="module")
def od():
    """One oracd shared by the non-destructive fault tests of this module."""
    o = Oracd(llama=FAST).start()
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    yield o
    o.cleanup()


# ---------------------------------------------------------------------- llama-server killed mid-generation
def test_sigkill_mid_generation_is_retried_once_transparently(od):
    before = call(od, "status")["child"]
    assert before["state"] == "ready"
    endpoint = before["endpoint"]
    prompt = "Write a very long story about a dragon, a knight and a lighthouse."
    out: Dict[str, Any] = {}

    def gen() -> None:
        try:
            with od.conn(timeout=150) as c:
                out["resp"] = creq(c, "generate", prompt=prompt, max_tokens=400, temperature=0.8, timeout=120)
        except Exception as exc:  # reported below
            out["exc"] = exc

    t = threading.Thread(target=gen, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while busy_slots(endpoint) == 0:            # the generation is running inside llama-server
        assert t.is_alive(), out
        assert time.monotonic() < deadline, "generation never started"
        time.sleep(0.01)
    os.kill(before["pid"], signal.SIGKILL)
    t.join(150)
    assert not t.is_alive(), "generate hung after llama-server was killed"
    assert "exc" not in out, out
    resp = out["resp"]
    assert "result" in resp, resp                      # transparent: the client sees a normal answer
    r = resp["result"]
    assert r["prompt"] == prompt and r["model"] == SMOL
    assert 0 < r["usage"]["completion_tokens"] <= 400
    after = call(od, "status")
    child = after["child"]
    assert child["state"] == "ready"
    assert child["restarts"] == before["restarts"] + 1
    assert child["pid"] != before["pid"] and gone(before["pid"])
    assert child["last_exit"]["returncode"] == -9
    assert child["last_exit"]["signal"] == "SIGKILL" and child["last_exit"]["message"] == "llama-server killed (SIGKILL)"
    lost = log_events(od, "child lost")
    assert lost[-1]["message"] == "llama-server killed (SIGKILL)" and lost[-1]["signal"] == "SIGKILL"
    assert after["requests"]["in_flight"] == 0
    retried = log_events(od, "generation failed, retrying once after restart")
    assert retried and retried[-1]["pid"] == before["pid"]
    assert busy_slots(child["endpoint"]) == 0


# ---------------------------------------------------------------------- corrupt models (header level)
def _header_cases(good: bytes) -> Dict[str, bytes]:
    return {
        "zero-bytes": b"",
        "magic-only": b"GGUF",
        "header-cut-at-100": good[:100],              # inside the KV section
        "header-cut-at-64k": good[:65536],            # inside the tokenizer arrays
        "absurd-counts": b"GGUF" + (3).to_bytes(4, "little") + (2 ** 63).to_bytes(8, "little") * 2,
        "not-gguf": b"PK\x03\x04 definitely a zip file" * 50,
    }


@pytest.mark.parametrize("case", list(_header_cases(b"")))
def test_header_level_corrupt_model_never_evicts_loaded_one(od, case):
    good = (od.models_dir / SMOL).read_bytes()
    path = od.models_dir / f"bad-{case}.gguf"
    path.write_bytes(_header_cases(good)[case])
    try:
        before = call(od, "status")["child"]
        for method, params in (("generate", {"model": path.stem, "prompt": "hi", "max_tokens": 2}),
                               ("load_model", {"model": path.name})):
            resp = req(od, method, **params)
            err = resp.get("error")
            assert err and err["code"] == -32002, resp
            assert path.name in err["message"] and "not a loadable GGUF" in err["message"]
            assert err["data"]["reason"] == "not_gguf"
        after = call(od, "status")["child"]
        assert (after["pid"], after["model"], after["state"], after["loads"]) == \
               (before["pid"], SMOL, "ready", before["loads"])          # nothing was even started
        listed = {m["name"]: m for m in call(od, "list_models")}
        assert listed[path.name]["valid"] is False and listed[SMOL]["loaded"] is True
        r = call(od, "generate", prompt="Say hi.", max_tokens=2, temperature=0)
        assert r["usage"]["completion_tokens"] == 2
    finally:
        path.unlink()


def test_special_files_named_like_models_never_block(od):
    """A FIFO or a directory named x.gguf: not found, at once (opening a FIFO would block)."""
    fifo = od.models_dir / "fifo.gguf"
    d = od.models_dir / "dir.gguf"
    os.mkfifo(fifo)
    d.mkdir()
    try:
        pid = od.child_pid()
        with od.conn(timeout=10) as c:
            for name in ("fifo", "dir.gguf"):
                for method, params in (("generate", {"model": name, "prompt": "hi"}),
                                       ("load_model", {"model": name}),
                                       ("quantize_model", {"input_model": name, "output_model": "never"})):
                    resp = creq(c, method, **params)
                    assert resp["error"]["code"] == -32001, (method, name, resp)
            names = [m["name"] for m in ccall(c, "list_models")]
        assert "fifo.gguf" not in names and "dir.gguf" not in names
        assert od.child_pid() == pid
        assert not (od.models_dir / "never.gguf").exists()
    finally:
        fifo.unlink()
        d.rmdir()


# ---------------------------------------------------------------------- quantize failures
def _quantize_fails_cleanly(o: Oracd, params: Dict[str, Any], code: int, watch: List[Path]) -> Dict[str, Any]:
    before = {p: digest(p) for p in watch if p.is_file()}
    pid = o.child_pid()
    out = o.models_dir / (params["output_model"] if params["output_model"].endswith(".gguf")
                          else params["output_model"] + ".gguf")
    existed = out.exists()
    resp = req(o, "quantize_model", **params)
    err = resp.get("error")
    assert err and err["code"] == code, resp
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in json.dumps(resp)
    assert out.exists() == existed                   # no (partial) output appeared
    assert leftovers(o.models_dir) == []             # no .<name>.<hex>.part
    assert {p: digest(p) for p in before} == before  # inputs (and an existing output) byte-identical
    assert o.child_pid() == pid
    return err


def test_quantize_bad_type(od):
    src = od.models_dir / "tiny-f32.gguf"
    err = _quantize_fails_cleanly(od, {"input_model": "tiny-f32", "output_model": "qbad",
                                       "quantization_type": "q9_z"}, -32602, [src])
    assert "q8_0" in err["data"]["allowed"]


@pytest.mark.parametrize("content", ["zero-bytes", "text", "tensor-data-cut"])
def test_quantize_unusable_input(od, content):
    """Inputs that really fail for root too (chmod 000 would not): empty, not GGUF, truncated."""
    data = (od.models_dir / "tiny-f32.gguf").read_bytes()
    src = od.models_dir / f"in-{content}.gguf"
    src.write_bytes({"zero-bytes": b"", "text": b"hello, not a model\n" * 100,
                     "tensor-data-cut": data[: len(data) // 2]}[content])
    try:
        err = _quantize_fails_cleanly(od, {"input_model": src.name, "output_model": f"out-{content}",
                                           "quantization_type": "q8_0"}, -32004, [src])
        assert err["message"].startswith("Quantization error: ")
        assert err["data"]["stderr_tail"]
    finally:
        src.unlink()


def test_quantize_existing_output_refused_and_kept(od):
    """Refused without overwrite, the file byte-identical; overwrite=true replaces it."""
    src = od.models_dir / "tiny-f32.gguf"
    call(od, "quantize_model", input_model="tiny-f32", output_model="keep-me", quantization_type="q4_0")
    out = od.models_dir / "keep-me.gguf"
    err = _quantize_fails_cleanly(od, {"input_model": "tiny-f32", "output_model": "keep-me",
                                       "quantization_type": "q8_0"}, -32011, [src, out])
    assert str(out) in err["message"]
    assert read_gguf_header(out)["quantization"] == "Q4_0"
    call(od, "quantize_model", input_model="tiny-f32", output_model="keep-me", quantization_type="q8_0",
         overwrite=True)
    assert read_gguf_header(out)["quantization"] == "Q8_0" and leftovers(od.models_dir) == []


def test_quantize_output_is_a_directory(od):
    """overwrite=true cannot turn a directory into a model: a clean error, the directory intact."""
    d = od.models_dir / "a-dir.gguf"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    try:
        resp = req(od, "quantize_model", input_model="tiny-f32", output_model="a-dir",
                          quantization_type="q4_0", overwrite=True)
        err = resp.get("error")
        assert err, resp
        assert err["code"] in (-32011, -32008, -32004, -32602), \
            f"expected a domain error, got {err} (-32603 means an unhandled exception in oracd)"
        assert d.is_dir() and (d / "keep.txt").read_text() == "x"
        assert leftovers(od.models_dir) == []
    finally:
        shutil.rmtree(d)


def test_quantize_disk_full_via_rlimit_fsize(fresh_oracd):
    """quantize_max_output_bytes (RLIMIT_FSIZE) makes writes past the limit fail like a full disk."""
    # tiny F32 (200 kB) -> q8_0 is ~55 kB (over the limit), q4_0 ~33 kB (under it)
    o = fresh_oracd(llama={"preload": False, "quantize_max_output_bytes": 40_000}).start()
    src = write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    err = _quantize_fails_cleanly(o, {"input_model": "tiny-f32", "output_model": "too-big",
                                      "quantization_type": "q8_0"}, -32004, [src])
    assert err["message"].startswith("Quantization error: ")
    # an existing output survives a failed overwrite byte for byte (temp file + rename)
    ok = call(o, "quantize_model", input_model="tiny-f32", output_model="fits", quantization_type="q4_0")
    out = o.models_dir / "fits.gguf"
    assert ok["size"] == out.stat().st_size < 40_000
    _quantize_fails_cleanly(o, {"input_model": "tiny-f32", "output_model": "fits", "quantization_type": "q8_0",
                                "overwrite": True}, -32004, [src, out])
    assert read_gguf_header(out)["quantization"] == "Q4_0"
    st = call(o, "status")
    assert st["child"]["state"] == "stopped" and st["requests"]["in_flight"] == 0
