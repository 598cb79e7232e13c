"""A batch-invariant CPU child: when it is wanted, which flags and environment it gets, and the build it needs."""
from __future__ import annotations

from pathlib import Path

import pytest

from oracd.child.command import (BATCH_INVARIANT_ARGS, BATCH_INVARIANT_ENV, batch_invariant_args, build_command,
                                 child_env)
from oracd.child.http import LlamaEndpoint
from oracd.config import ConfigError, from_dict
from oracd.provision.flavors import COMMON_FLAGS


def cfg(profiles=None, **llama):
    data = {"llama": llama}
    if profiles:
        data["profiles"] = profiles
    return from_dict(data, Path("/tmp"))


def test_auto_is_on_for_a_cpu_child_and_off_where_a_gpu_or_rpc_workers_take_layers():
    assert cfg().batch_invariant_for("m.gguf") is True
    assert cfg(n_gpu_layers=99).batch_invariant_for("m.gguf") is False
    assert cfg(rpc_workers=["10.0.0.2:50052"]).batch_invariant_for("m.gguf") is False
    c = cfg({"gpu.gguf": {"n_gpu_layers": 99}})
    assert c.batch_invariant_for("gpu.gguf") is False and c.batch_invariant_for("cpu.gguf") is True
    assert cfg(batch_invariant=False).batch_invariant_for("m.gguf") is False
    assert cfg(batch_invariant=True, n_gpu_layers=99).batch_invariant_for("m.gguf") is True


@pytest.mark.parametrize("bad", ["yes", 1, None, ["auto"]])
def test_batch_invariant_setting_is_validated(bad):
    with pytest.raises(ConfigError, match="batch_invariant"):
        cfg(batch_invariant=bad)


def _binary(tmp_path: Path, help_text: str) -> str:
    b = tmp_path / "llama-server"
    b.write_text(f"#!/bin/sh\ncat <<'EOF'\n{help_text}\nEOF\n")
    b.chmod(0o755)
    return str(b)


def test_the_flags_are_added_only_where_the_build_has_them(tmp_path: Path):
    new = _binary(tmp_path, "-fa, --flash-attn [on|off|auto]  set Flash Attention use\n-nr, --no-repack  disable weight repacking")
    assert tuple(batch_invariant_args(cfg(), new, "m.gguf")) == BATCH_INVARIANT_ARGS
    assert tuple(batch_invariant_args(cfg(batch_invariant=False), new, "m.gguf")) == ()
    old = tmp_path / "old"
    old.mkdir()
    # an older build: -fa is a bare switch and there is no --no-repack; "off" would fail its start
    assert batch_invariant_args(cfg(), _binary(old, "-fa, --flash-attn  enable Flash Attention"), "m.gguf") is None


def test_the_flags_go_before_extra_args_which_may_override_them(tmp_path: Path):
    c = cfg(extra_args=["--flash-attn", "on"])
    cmd = build_command(c, "llama-server", tmp_path / "m.gguf", LlamaEndpoint(port=8080), name="m.gguf",
                        invariant=BATCH_INVARIANT_ARGS)
    at = cmd.index("--no-repack")
    assert cmd[at - 2:at + 1] == list(BATCH_INVARIANT_ARGS)
    assert cmd[-2:] == ["--flash-attn", "on"] and cmd.index("--flash-attn") < at
    plain = build_command(c, "llama-server", tmp_path / "m.gguf", LlamaEndpoint(port=8080), name="m.gguf")
    assert "--no-repack" not in plain


def test_only_a_batch_invariant_child_gets_the_tiled_matmul_switched_off(monkeypatch):
    monkeypatch.delenv("GGML_CPU_TILED_MM", raising=False)
    assert child_env(batch_invariant=True).items() >= BATCH_INVARIANT_ENV.items()
    assert "GGML_CPU_TILED_MM" not in child_env()


def test_oracds_own_builds_leave_llamafiles_sgemm_out():
    assert "-DGGML_LLAMAFILE=OFF" in COMMON_FLAGS


def test_the_memory_check_counts_the_attention_scores_that_flash_attention_would_not_hold():
    from oracd.memory import COMPUTE_MIN, MiB, estimate, flash_attn_off, memory_verdict
    assert flash_attn_off(["--flash-attn", "off"]) and not flash_attn_off(["-fa", "off", "-fa", "on"])
    assert not flash_attn_off([]) and not flash_attn_off(["-fa"])
    smol = {"weights_bytes": 100 * MiB, "block_count": 30, "head_count": 9, "head_count_kv": 3,
            "embedding_length": 576}
    # llama-server's own figures for SmolLM2 without flash attention (ubatch 512): 86 MiB at 8192, 166 at 16384
    assert estimate(smol, 8192, ["-fa", "off"], 0, 2).compute >= 86 * MiB
    assert estimate(smol, 16384, ["-fa", "off"], 0, 2).compute >= 166 * MiB
    assert estimate(smol, 16384, [], 0, 2).compute == COMPUTE_MIN           # flash attention: 18 MiB at 8192
    room = 10 * 2 ** 30
    on = memory_verdict(cfg(ctx_size=16384), "m.gguf", smol, room).footprint.compute
    off = memory_verdict(cfg(ctx_size=16384, batch_invariant=False), "m.gguf", smol, room).footprint.compute
    assert on > off == COMPUTE_MIN
    # extra_args may turn flash attention back on (they come after the batch-invariant flags)
    back = memory_verdict(cfg(ctx_size=16384, extra_args=["-fa", "on"]), "m.gguf", smol, room).footprint.compute
    assert back == COMPUTE_MIN
