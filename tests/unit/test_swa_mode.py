"""Sliding-window models and warm restore: when llama-server gets --swa-full, and what status says.

Pure decisions (``child/swa.py``), the command line, the warm-restore key and the config keys, in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from oracd.child.command import build_command
from oracd.child.http import LlamaEndpoint
from oracd.child.kvstore import entry_key, kv_relevant_args
from oracd.child.swa import SwaPlan, choose, memory_kind, plan, plan_for_start
from oracd.child.warmup import WarmReport, restore_support
from oracd.config import Config, ConfigError, LlamaConfig, from_dict, load_options_changed
from oracd.memory import MiB, memory_verdict
from oracd_client.cli.status import swa_line

#: Gemma 3 270M's shape (18 layers, 3 of them full attention, a 512-token window)
GEMMA = {"valid": True, "architecture": "gemma3", "block_count": 18, "sliding_window": 512, "head_count": 4,
         "head_count_kv": 1, "key_length": 256, "value_length": 256, "weights_bytes": 240 * MiB,
         "context_length": 32768}
LLAMA = {"valid": True, "architecture": "llama", "block_count": 30, "head_count": 9, "head_count_kv": 3,
         "embedding_length": 576, "weights_bytes": 100 * MiB}


def cfg(profile=None, **llama):
    data = {"llama": {"ctx_size": 8192, "memory_margin_mb": 16, "cache_ram_mb": 0, **llama}}
    if profile is not None:
        data["profiles"] = {"g.gguf": profile}
    return from_dict(data, Path("/tmp"))


def test_memory_kind_names_what_llama_cpp_can_and_cannot_restore():
    assert memory_kind(GEMMA) == "sliding-window"
    assert memory_kind({"architecture": "gemma2", "block_count": 26}) == "sliding-window"   # 4096 by default
    assert memory_kind(LLAMA) == "full"
    assert memory_kind({**GEMMA, "sliding_window": 0}) == "full"
    assert memory_kind({"architecture": "mamba2", "block_count": 24}) == "recurrent"
    assert memory_kind({"architecture": "rwkv7", "block_count": 24}) == "recurrent"
    assert memory_kind({"architecture": "lfm2", "block_count": 16}) == "hybrid"
    assert memory_kind({"architecture": "qwen3next", "block_count": 48}) == "hybrid"


def test_auto_adds_swa_full_only_when_it_fits_and_says_why_with_both_figures():
    fits = choose("auto", False, True, need_full=600 * MiB, need_window=500 * MiB, room=700 * MiB)
    assert fits.full and fits.mode == "full" and "fits with it" in fits.why
    tight = choose("auto", False, True, need_full=800 * MiB, need_window=500 * MiB, room=700 * MiB)
    assert not tight.full and tight.mode == "window"
    assert tight.why == ("does not fit with --swa-full: 800 MiB needed with it, 500 MiB without, 700 MiB "
                         "available; prefills on every load")
    assert tight.as_dict() == {"mode": "window", "setting": "auto", "why": tight.why,
                               "need_full_bytes": 800 * MiB, "need_window_bytes": 500 * MiB,
                               "available_bytes": 700 * MiB}
    assert choose("auto", False, True, None, None, None).full            # memory not checked: restore wins
    no_restore = choose("auto", False, False, 600 * MiB, 500 * MiB, 700 * MiB)
    assert not no_restore.full and "warm restore is not used" in no_restore.why


def test_a_setting_or_extra_args_forces_either_choice():
    assert choose(True, False, False, 800 * MiB, 500 * MiB, 700 * MiB).full           # forced, even tight
    assert choose(True, False, True, None, None, None).why == "swa_full = true"
    off = choose(False, False, True, 600 * MiB, 500 * MiB, 7000 * MiB)
    assert not off.full and off.why == "swa_full = false"
    assert choose(False, True, True, None, None, None).full                            # the user's own flag


def test_plan_uses_the_models_options_and_the_estimate_at_the_configured_context():
    c = cfg()
    need_full = memory_verdict(c, "g.gguf", GEMMA, 0, swa_full=True, fit_ctx=False).need
    need_window = memory_verdict(c, "g.gguf", GEMMA, 0, fit_ctx=False).need
    assert need_full - need_window == 2 * 256 * 2 * 15 * (8192 - 2 * 1024)   # 15 SWA layers: full ctx vs 2 x 1024
    p = plan(c, "g.gguf", GEMMA, need_full, restore_wanted=True)
    assert p.full and (p.need_full, p.need_window, p.available) == (need_full, need_window, need_full)
    p = plan(c, "g.gguf", GEMMA, need_full - 1, restore_wanted=True)
    assert not p.full and p.need_full == need_full
    fit = cfg(fit_ctx=True)          # fit_ctx does not shrink the context to make --swa-full fit
    assert not plan(fit, "g.gguf", GEMMA, need_full - 1, restore_wanted=True).full
    assert plan(c, "l.gguf", LLAMA, 10 ** 12, restore_wanted=True) is None          # no sliding window
    assert plan(c, "g.gguf", {"valid": False}, 10 ** 12, True) is None
    unchecked = plan(cfg(memory_check=False), "g.gguf", GEMMA, 1, restore_wanted=True)
    assert unchecked.full and unchecked.available is None
    assert not plan(cfg({"swa_full": False}, swa_full=True), "g.gguf", GEMMA, 10 ** 12, True).full   # profile wins
    assert plan(cfg({"swa_full": True}), "g.gguf", GEMMA, 1, True).full
    assert plan(cfg({"extra_args": ["--swa-full"]}), "g.gguf", GEMMA, 1, True).why == "--swa-full is in extra_args"


def test_the_command_line_and_the_restore_key_carry_swa_full(tmp_path):
    c = cfg({"extra_args": ["-fa", "on"]})
    model, binary = tmp_path / "g.gguf", tmp_path / "llama-server"
    model.write_bytes(b"GGUF" + bytes(64))
    binary.write_bytes(b"#!")
    ep = LlamaEndpoint(unix_path="/run/x.sock")
    plain = build_command(c, str(binary), model, ep)
    full = build_command(c, str(binary), model, ep, swa_full=True)
    assert "--swa-full" not in plain and full.count("--swa-full") == 1 and full[-2:] == ["-fa", "on"]
    own = build_command(cfg({"extra_args": ["--swa-full"]}), str(binary), model, ep, swa_full=True)
    assert own.count("--swa-full") == 1
    assert "--swa-full" in kv_relevant_args(full)
    assert entry_key(model, str(binary), plain, "p") != entry_key(model, str(binary), full, "p")


def test_restore_support_follows_the_cache_mode_and_the_architecture():
    c = Config(llama=LlamaConfig(warm_restore=True))
    full = SwaPlan(True, "auto", "for warm restore")
    window = choose("auto", False, True, 800 * MiB, 500 * MiB, 700 * MiB)
    assert restore_support(c, GEMMA, full) == "on"
    assert restore_support(c, GEMMA, window) == \
        "unsupported: sliding-window attention (gemma3) without --swa-full (" + window.why + ")"
    assert restore_support(c, LLAMA) == "on"
    assert restore_support(c, {"architecture": "mamba"}).startswith("unsupported: recurrent model (mamba)")
    assert restore_support(c, {"architecture": "jamba"}).startswith("unsupported: hybrid model (jamba)")
    assert restore_support(Config(llama=LlamaConfig(warm_restore=False)), GEMMA, full) == "off"
    assert WarmReport(swa=window).as_dict(None, {})["swa"]["mode"] == "window"
    assert WarmReport().as_dict(None, {})["swa"] is None


def test_swa_full_is_validated_in_llama_and_in_profiles_and_a_change_restarts_the_model():
    assert cfg().llama.swa_full == "auto" and cfg(swa_full=False).llama.swa_full is False
    with pytest.raises(ConfigError, match=r'llama.swa_full: expected "auto", true or false, got \'yes\''):
        cfg(swa_full="yes")
    with pytest.raises(ConfigError, match=r'profiles."g.gguf".swa_full: expected "auto", true or false, got 1'):
        cfg({"swa_full": 1})
    assert load_options_changed(cfg({"swa_full": True}), cfg({"swa_full": False}), "g.gguf")
    assert not load_options_changed(cfg({"swa_full": True}), cfg({"swa_full": True}), "g.gguf")


def test_oracctl_shows_the_mode():
    assert swa_line({"mode": "full", "why": "for warm restore"}) == "full cache (--swa-full): for warm restore"
    assert swa_line({"mode": "window", "why": "swa_full = false"}) == "window cache: swa_full = false"


def test_a_model_file_gone_before_the_start_leaves_the_decision_to_llama_server(tmp_path):
    assert plan_for_start(cfg(), "g.gguf", tmp_path / "g.gguf", None, True) is None
