"""quantize_model with the real llama-quantize on a tiny F32 GGUF: what succeeds.  Failures that must leave nothing
behind (bad type, unusable input, existing output, disk full) are test_faults.py's quantize section."""
from __future__ import annotations

import shutil

import pytest

from helpers import write_tiny_f32
from oracd.models.quota import LEDGER
from oracd.models.gguf import read_gguf_header


@pytest.fixture(scope="module")
def qd(oracd):
    write_tiny_f32(oracd.models_dir / "tiny-f32.gguf")
    return oracd


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if (p.name.startswith(".") or p.suffix == ".part") and p.name != LEDGER)


@pytest.mark.parametrize("qtype, expect", [("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("Q4_K", "Q4_K_M")])
def test_quantize_tiny_model(qd, qtype, expect):
    src = qd.models_dir / "tiny-f32.gguf"
    before = src.read_bytes()
    out = f"tiny-{qtype.lower()}.gguf"
    r = qd.call("quantize_model", input_model="tiny-f32", output_model=out, quantization_type=qtype)
    assert r["ok"] is True and r["path"] == str(qd.models_dir / out)
    path = qd.models_dir / out
    assert path.stat().st_size == r["size"] < src.stat().st_size
    meta = read_gguf_header(path)
    assert meta["valid"] and meta["quantization"].startswith(expect.split("_M")[0])
    assert src.read_bytes() == before                      # input untouched
    assert out in [m["name"] for m in qd.call("list_models")]
    assert leftovers(qd.models_dir) == []


def test_default_type_is_q4_k(qd):
    r = qd.call("quantize_model", input_model="tiny-f32.gguf", output_model="tiny-default")
    assert r["quantization_type"] == "q4_k"
    assert r["name"] == "tiny-default.gguf"


def test_missing_input(qd):
    resp = qd.request("quantize_model", input_model="nope", output_model="x2")
    assert resp["error"]["code"] == -32001
    assert resp["error"]["message"] == f"Input model not found: {qd.models_dir / 'nope.gguf'}"


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "sub/dir", ".hidden"])
def test_output_name_confined(qd, name):
    resp = qd.request("quantize_model", input_model="tiny-f32", output_model=name, quantization_type="q8_0")
    assert resp["error"]["code"] == -32008


def test_symlinked_input_followed_unless_confined(qd, tmp_path):
    """A model linked in from another disk is a valid quantize input; the output is a new regular file."""
    outside = tmp_path / "outside.gguf"
    shutil.copyfile(qd.models_dir / "tiny-f32.gguf", outside)
    (qd.models_dir / "linked.gguf").symlink_to(outside)
    try:
        r = qd.call("quantize_model", input_model="linked", output_model="linked-q8", quantization_type="q8_0")
        out = qd.models_dir / "linked-q8.gguf"
        assert r["name"] == "linked-q8.gguf" and out.is_file() and not out.is_symlink()
        assert "linked.gguf" in [m["name"] for m in qd.call("list_models")]
        assert outside.read_bytes() == (qd.models_dir / "tiny-f32.gguf").read_bytes()    # input untouched
    finally:
        (qd.models_dir / "linked.gguf").unlink()
        (qd.models_dir / "linked-q8.gguf").unlink(missing_ok=True)
