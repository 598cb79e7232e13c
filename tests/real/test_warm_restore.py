"""Warm restore against the real llama-server and SmolLM2: the prefilled system prompt comes back from disk,
verified, at every load; anything that does not fit falls back to prefill and replaces the entry."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Dict, List

import pytest

from helpers import SMOL, Oracd, log_events

PROMPT = "Turn on the kitchen lights."


def profile(path: Path, system: str, **extra) -> Path:
    lines = [f'[profiles."{SMOL}"]', f'system_prompt = """{system}"""', "temperature = 0.0", "max_tokens = 16"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


SYSTEM_A = "You parse spoken home commands into JSON objects. " * 24
SYSTEM_B = "You translate voice commands for a smart home into JSON. " * 24


def entries(kv: Path) -> List[str]:
    return sorted(p.name[:-3] for p in kv.glob("*.kv"))


def warm(o: Oracd) -> Dict:
    return o.call("status")["child"]["warm"]




@pytest.fixture
def shared_root(tmp_path_factory):
    """One root (models, kv cache) kept across several oracd runs in a test."""
    root = Path(__import__("tempfile").mkdtemp(prefix="oracd-w-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run(root: Path, **llama) -> Oracd:
    o = Oracd(root=root, llama={"profiles_file": str(root / "models.toml"), **llama})
    return o.start()


def test_crash_restart_restores_and_answers_exactly_like_after_the_first_warm_up(shared_root):
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root)
    try:
        first = warm(o)
        assert first["how"] == "prefilled" and first["restore"] == "on", first
        assert first["outcomes"] == {"prefilled": 1, "saved": 1}
        assert len(entries(shared_root / "kv")) == 1 and first["cache_dir_bytes"] > 1_000_000
        assert oct((shared_root / "kv").stat().st_mode & 0o777) == "0o700"
        answer = o.call("generate", prompt=PROMPT)["response"]
        st = o.crash_restart(60)
        again = st["warm"]
        assert again["how"] == "restored", again
        total = again["prompt_tokens"]
        assert total > 200 and all(n >= 0.9 * total for n in again["cached_tokens"]), again
        assert len(again["cached_tokens"]) == 2                  # every slot (parallel = 2)
        assert again["ms"] < first["ms"]
        assert o.call("generate", prompt=PROMPT)["response"] == answer    # greedy: the same warmed state
        assert [e["how"] for e in log_events(o, "slots warmed")] == ["prefilled", "restored"]
        import subprocess
        import sys
        shown = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "restored in" in shown and f"/{total} tokens cached in 2 slots; restore on, cache" in shown, shown
        assert "(1 prefilled, 1 restored, 1 saved)" in shown
    finally:
        o.stop()
    # an oracd restart restores too
    o = run(shared_root)
    try:
        assert warm(o)["how"] == "restored"
        assert o.call("generate", prompt=PROMPT)["response"] == answer
    finally:
        o.cleanup()


def test_changed_prompt_ctx_or_parallel_never_gets_an_old_entry(shared_root):
    kv = shared_root / "kv"
    seen = []
    for system, llama in ((SYSTEM_A, {}), (SYSTEM_B, {}), (SYSTEM_A, {"ctx_size": 2048}),
                          (SYSTEM_A, {"parallel": 1})):
        profile(shared_root / "models.toml", system)
        o = run(shared_root, **llama)
        try:
            w = warm(o)
            assert w["how"] == "prefilled", (system[:20], llama, w)
            seen.append(entries(kv))
        finally:
            o.stop()
    assert [len(s) for s in seen] == [1, 2, 3, 4]                 # each change made a new entry
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root)                                          # the original settings find theirs
    try:
        assert warm(o)["how"] == "restored"
    finally:
        o.cleanup()


@pytest.mark.parametrize("damage", ["truncate", "flip-kv-bytes"])
def test_corrupt_or_truncated_entry_is_detected_prefilled_and_replaced(shared_root, damage):
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root)
    try:
        (key,) = entries(shared_root / "kv")
        path = shared_root / "kv" / f"{key}.kv"
        good = path.read_bytes()
        if damage == "truncate":
            bad = good[: len(good) // 2]
        else:                                 # flip 16 bytes in the KV data: llama-server restores it happily
            at = len(good) * 3 // 4
            bad = good[:at] + bytes(b ^ 0xFF for b in good[at:at + 16]) + good[at + 16:]
        path.write_bytes(bad)
        st = o.crash_restart(60)
        w = st["warm"]
        assert w["how"] == "prefilled" and w["outcomes"]["restore_failed"] == 1, w
        # a truncated file is refused by llama-server; flipped KV bytes only the checksum sees
        assert ("checksum" in w["note"]) == (damage == "flip-kv-bytes"), w["note"]
        assert entries(shared_root / "kv") == [key] and path.read_bytes() != bad              # saved anew
        assert len(path.read_bytes()) == len(good)
        assert o.crash_restart(60)["warm"]["how"] == "restored"
        assert o.call("generate", prompt=PROMPT)["usage"]["completion_tokens"] > 0
    finally:
        o.cleanup()


def test_a_restore_that_does_not_verify_falls_back_to_prefill(shared_root):
    """An entry saved for prompt A under prompt B's key (its checksum intact): llama-server restores it
    happily, and only the verification notices that the cached tokens are not B's."""
    kv = shared_root / "kv"
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root)
    o.stop()
    (key_a,) = entries(kv)
    profile(shared_root / "models.toml", SYSTEM_B)
    o = run(shared_root)
    try:
        (key_b,) = set(entries(kv)) - {key_a}
        wrong = (kv / f"{key_a}.kv").read_bytes()
        for suffix in (".kv", ".sha256"):
            shutil.copyfile(kv / f"{key_a}{suffix}", kv / f"{key_b}{suffix}")
        w = o.crash_restart(60)["warm"]
        assert w["how"] == "prefilled" and w["outcomes"]["verify_failed"] == 1, w
        # the slots verify concurrently: whichever fails first is named; it reused almost nothing
        m = re.fullmatch(r"restore did not verify: slot [01] reused (\d+) of (\d+) prompt tokens", w["note"])
        assert m and int(m[1]) < 0.1 * int(m[2]), w["note"]
        # the wrong state was replaced by a new save (KV bytes of two prefills need not be identical:
        # batching changes the float rounding), and that one restores and verifies
        assert (kv / f"{key_b}.kv").read_bytes() != wrong
        assert o.crash_restart(60)["warm"]["how"] == "restored"
    finally:
        o.cleanup()


def test_size_limit_evicts_the_least_recently_used_entries(shared_root):
    kv = shared_root / "kv"
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root)
    size_mb = warm(o)["cache_dir_bytes"] / 2 ** 20
    o.stop()
    limit = max(1, int(size_mb * 2.5))                            # room for two entries, not three
    order = []
    for system in (SYSTEM_B, SYSTEM_A + "Be brief. ", SYSTEM_B + "Be brief. "):
        profile(shared_root / "models.toml", system)
        o = run(shared_root, kv_cache_max_mb=limit)
        try:
            assert warm(o)["how"] == "prefilled"
            order.append(set(entries(kv)))
        finally:
            o.stop()
        time.sleep(0.05)                                          # distinct mtimes
    assert [len(s) for s in order] == [2, 2, 2], order
    total = sum(p.stat().st_size for p in kv.glob("*.kv"))
    assert total <= limit * 2 ** 20
    # the two newest survive: the first (SYSTEM_A) and then SYSTEM_B went, oldest first
    assert order[1] - order[0] and order[2] - order[1] and not (order[0] & order[2])
    shutil.rmtree(shared_root / "logs", ignore_errors=True)


def test_warm_restore_off_and_sliding_window_models_prefill_and_say_why(shared_root):
    from oracd.child.warmup import restore_support
    from oracd.config import Config, LlamaConfig
    cfg = Config(llama=LlamaConfig(warm_restore=True))
    assert restore_support(cfg, {"architecture": "gemma3", "sliding_window": 512}) == \
        "unsupported: sliding-window attention (gemma3) without --swa-full"
    assert restore_support(cfg, {"architecture": "llama"}) == "on"
    profile(shared_root / "models.toml", SYSTEM_A)
    o = run(shared_root, warm_restore=False)
    try:
        w = warm(o)
        assert w["how"] == "prefilled" and w["restore"] == "off" and "cache_dir" not in w
        assert not (shared_root / "kv").exists()
        assert "--slot-save-path" not in log_events(o, "child spawned")[-1]["cmd"]
    finally:
        o.cleanup()
