"""A second real architecture, Gemma 3 270M (sliding-window attention), beside SmolLM2 (llama).

Why: a swap between two model families is the real case (another tokenizer, chat template and
KV layout), and Gemma 3 is the real case where llama.cpp's slot restore reports success but
keeps nothing unless llama-server runs with ``--swa-full``, which oracd adds when it fits.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from helpers import BIN, GEMMA, MODELS, SMOL, Oracd, free_port, log_events
from oracd.config import load as load_config
from oracd.memory import MiB, estimate, memory_verdict
from oracd.models.gguf import header

SYSTEM = "You turn spoken home commands into one JSON object with device, action and location. " * 8


@pytest.fixture
def root():
    """A short root (Unix socket paths) with a profile per model: the same system prompt for both."""
    r = Path(tempfile.mkdtemp(prefix="oracd-g-", dir="/tmp"))
    profile = 'system_prompt = """{}"""\ntemperature = 0.0\nmax_tokens = 8\n\n'.format(SYSTEM)
    (r / "models.toml").write_text("".join(f'[profiles."{m}"]\n{profile}' for m in (SMOL, GEMMA)))
    yield r
    shutil.rmtree(r, ignore_errors=True)


def cmdline(pid: int) -> list:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_swap_between_two_architectures_restores_both(root):
    """SmolLM2 (llama) and Gemma 3 (sliding window, started with --swa-full): each load after the first
    comes back from disk, verified, across swaps."""
    o = Oracd(root=root, models=[SMOL, GEMMA], llama={"profiles_file": str(root / "models.toml")}).start()
    try:
        listed = {m["name"]: m for m in o.call("list_models")}
        assert listed[SMOL]["architecture"] == "llama" and "sliding_window" not in listed[SMOL]
        assert listed[GEMMA]["architecture"] == "gemma3" and listed[GEMMA]["sliding_window"] > 0
        smol_warm = o.call("status")["child"]["warm"]
        assert smol_warm["how"] == "prefilled" and smol_warm["restore"] == "on", smol_warm
        assert smol_warm["swa"] is None
        assert "--swa-full" not in cmdline(o.call("status")["child"]["pid"])
        entries = sorted((root / "kv").glob("*.kv"))
        assert len(entries) == 1

        r = o.call("generate", model=GEMMA, prompt="Turn on the kitchen lights.", timeout=120)
        assert r["model"] == GEMMA and r["usage"]["completion_tokens"] > 0 and r["response"].strip()
        st = o.call("status")["child"]
        assert st["model"] == GEMMA and st["state"] == "ready"
        w = st["warm"]
        assert w["restore"] == "on" and w["swa"]["mode"] == "full", w
        assert w["swa"]["why"].startswith("for warm restore: fits with it"), w
        assert w["how"] == "prefilled" and w["prompt_tokens"] > 100, w
        assert "--swa-full" in cmdline(st["pid"])
        assert len(sorted((root / "kv").glob("*.kv"))) == 2             # saved for gemma3 too

        back = o.call("generate", model=SMOL, prompt="Turn on the kitchen lights.", timeout=120)
        assert back["model"] == SMOL and back["usage"]["completion_tokens"] > 0
        w = o.call("status")["child"]["warm"]
        assert w["how"] == "restored" and w["restore"] == "on", w
        assert all(n >= 0.9 * w["prompt_tokens"] for n in w["cached_tokens"]), w

        assert o.call("load_model", model=GEMMA)["model"] == GEMMA
        w = o.call("status")["child"]["warm"]
        assert w["how"] == "restored", w                                 # gemma3 now comes back from disk
        assert len(w["cached_tokens"]) == 2 and all(n >= 0.9 * w["prompt_tokens"] for n in w["cached_tokens"]), w
        hows = [(e["model"], e["how"]) for e in log_events(o, "slots warmed")]
        assert hows == [(SMOL, "prefilled"), (GEMMA, "prefilled"), (SMOL, "restored"), (GEMMA, "restored")], hows
    finally:
        o.cleanup()


LONG = ("You turn spoken home commands into one JSON object with the keys device, action and location, "
        "and nothing else. ") * 20
ASK = "Turn off the heating in the bedroom."


def gemma_oracd(root: Path, **llama: Any) -> Oracd:
    (root / "gemma.toml").write_text(f'[profiles."{GEMMA}"]\nsystem_prompt = """{LONG}"""\n'
                                     'temperature = 0.0\nmax_tokens = 12\n')
    return Oracd(root=root, models=[GEMMA], llama={"profiles_file": str(root / "gemma.toml"), "default_model": GEMMA,
                                                   "ctx_size": 4096, **llama})




def test_gemma_crash_restart_restores_the_system_prompt_and_answers_the_same(root):
    """Default settings, a system prompt of several hundred tokens: the crash restart restores every slot
    (verified), the first answer after it reads the system prompt from the cache, and says the same."""
    o = gemma_oracd(root).start(timeout=120)
    try:
        first = o.call("status")["child"]
        assert first["warm"]["how"] == "prefilled" and first["warm"]["restore"] == "on", first["warm"]
        assert first["warm"]["swa"]["mode"] == "full" and "--swa-full" in cmdline(first["pid"])
        before = o.call("generate", prompt=ASK, timeout=120)
        st = o.crash_restart()
        w = st["warm"]
        assert w["how"] == "restored" and w["restore"] == "on" and w["swa"]["mode"] == "full", w
        total = w["prompt_tokens"]
        assert total > 300 and len(w["cached_tokens"]) == 2, w
        assert all(n >= 0.9 * total for n in w["cached_tokens"]), w      # the verification's numbers
        after = o.call("generate", prompt=ASK, timeout=120)
        # the warm-up prompt is the system prompt plus a short user turn ("ok"): the system prompt is cached,
        # exactly as much as after the prefill before the crash
        assert after["usage"]["cached_tokens"] == before["usage"]["cached_tokens"] >= 0.9 * total, \
            (before["usage"], after["usage"], total)
        assert after["response"] == before["response"]                  # greedy: the same state
        assert [e["how"] for e in log_events(o, "slots warmed")] == ["prefilled", "restored"]
        shown = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "sliding window" in shown and "full cache (--swa-full): for warm restore" in shown, shown
    finally:
        o.cleanup()


def test_gemma_that_does_not_fit_with_swa_full_keeps_the_window_prefills_and_says_why(root):
    """A cgroup with room for Gemma 3 at 8192 tokens with its window-sized cache but not with --swa-full:
    it loads without the flag, prefills on every load, and status gives both figures; with more room,
    the next start adds the flag."""
    cg = root / "cgroup"
    cg.mkdir()
    used = 512 * MiB
    o = gemma_oracd(root, cgroup_dir=str(cg), ctx_size=8192, cache_ram_mb=16, memory_margin_mb=16)
    cfg = load_config(o.config)
    meta = header(MODELS / GEMMA)
    need_full = memory_verdict(cfg, GEMMA, meta, 0, swa_full=True).need
    need_window = memory_verdict(cfg, GEMMA, meta, 0).need
    assert need_full - need_window > 64 * MiB, (need_full, need_window)
    room = (need_full + need_window) // 2
    (cg / "memory.current").write_text(f"{used}\n")
    (cg / "memory.max").write_text(f"{used + room}\n")
    o.start(timeout=120)
    try:
        st = o.call("status")["child"]
        w = st["warm"]
        assert st["state"] == "ready" and "--swa-full" not in cmdline(st["pid"])
        why = (f"does not fit with --swa-full: {need_full // MiB} MiB needed with it, {need_window // MiB} MiB "
               f"without, {room // MiB} MiB available; prefills on every load")
        assert w["swa"] == {"mode": "window", "setting": "auto", "why": why, "need_full_bytes": need_full,
                            "need_window_bytes": need_window, "available_bytes": room}, w
        assert w["restore"] == f"unsupported: sliding-window attention (gemma3) without --swa-full ({why})", w
        assert w["how"] == "prefilled" and w["prompt_tokens"] > 300, w
        assert not list((root / "kv").glob("*.kv"))                     # nothing saved: it could not restore
        shown = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "window cache: does not fit with --swa-full" in shown, shown
        assert o.crash_restart()["warm"]["how"] == "prefilled"                   # every load prefills
        (cg / "memory.max").write_text(f"{used + need_full}\n")        # now it fits: the next start adds it
        st = o.crash_restart()
        assert st["warm"]["swa"]["mode"] == "full" and "--swa-full" in cmdline(st["pid"]), st["warm"]
        assert st["warm"]["restore"] == "on" and st["warm"]["how"] == "prefilled", st["warm"]
        assert len(list((root / "kv").glob("*.kv"))) == 1
    finally:
        o.cleanup()


def http(port: int, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@contextmanager
def llama_server(model: str, workdir: Path, *args: str) -> Iterator[int]:
    """A plain llama-server on a free loopback port (its stderr in ``workdir/stderr.log``), until /health 200."""
    workdir.mkdir()
    port = free_port()
    with open(workdir / "stderr.log", "wb") as err:
        proc = subprocess.Popen([str(BIN / "llama-server"), "-m", str(MODELS / model), "--host", "127.0.0.1",
                                 "--port", str(port), "-t", "1", *args], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (workdir / "stderr.log").read_text()[-2000:]
            time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def cached_after_restore(model: str, slots: Path, *args: str) -> Dict[str, int]:
    """Prefill a slot, save it, erase it, restore it; then ask again and read how much came from the cache."""
    with llama_server(model, slots, "-c", "2048", "-np", "1", "--slot-save-path", str(slots), *args) as port:
        ask = {"prompt": SYSTEM, "n_predict": 0, "cache_prompt": True, "id_slot": 0}
        n = http(port, "/completion", ask)["timings"]["prompt_n"]
        saved = http(port, "/slots/0?action=save", {"filename": "s.bin"})["n_saved"]
        http(port, "/slots/0?action=erase", {})
        restored = http(port, "/slots/0?action=restore", {"filename": "s.bin"})["n_restored"]
        again = http(port, "/completion", ask)["timings"]
        return {"prompt": n, "saved": saved, "restored": restored, "cache_n": again["cache_n"]}


def test_llama_cpp_restore_holds_for_sliding_window_slots_only_with_swa_full(tmp_path):
    """The premise of the --swa-full rule, on this build: every restore reports every token, and a
    sliding-window one holds only with --swa-full.  If an upgrade makes the window-sized one hold too,
    this fails and the flag (and its memory) can go."""
    smol = cached_after_restore(SMOL, tmp_path / "a")
    gemma = cached_after_restore(GEMMA, tmp_path / "b")
    gemma_full = cached_after_restore(GEMMA, tmp_path / "c", "--swa-full")
    assert smol["restored"] == smol["saved"] == smol["prompt"] > 100, smol
    assert smol["cache_n"] >= smol["prompt"] - 1, smol
    assert gemma["restored"] == gemma["saved"] == gemma["prompt"] > 100, gemma
    assert gemma["cache_n"] < 0.1 * gemma["prompt"], gemma
    assert gemma_full["restored"] == gemma_full["saved"] == gemma_full["prompt"] > 100, gemma_full
    assert gemma_full["cache_n"] >= gemma_full["prompt"] - 1, gemma_full


@pytest.mark.parametrize("model", [SMOL, GEMMA])
@pytest.mark.parametrize("ctx,parallel,extra", [(8192, 2, ()), (4096, 1, ()), (8192, 4, ("-ub", "256")),
                                                (8192, 2, ("--swa-full",))],
                         ids=["8k-2", "4k-1", "8k-4-ub256", "swa-full"])
def test_memory_estimate_of_the_kv_cache_matches_what_llama_cpp_allocates(model, ctx, parallel, extra, tmp_path):
    """The memory check's KV figure against llama.cpp's own (``llama_kv_cache: size = X MiB`` in its verbose
    log, one line per cache: gemma3 has a full-attention one and a sliding-window one), for one and several
    slots, another ubatch, and ``--swa-full``."""
    meta = header(MODELS / model)
    ubatch = int(extra[1]) if extra[:1] == ("-ub",) else 0
    with llama_server(model, tmp_path / "srv", "-v", "-c", str(ctx), "-np", str(parallel), *extra):
        log = (tmp_path / "srv" / "stderr.log").read_text()
    log = log[log.rindex("constructing llama_context"):]     # the serving context (a first one only sizes -fit)
    reported = [float(m) for m in re.findall(r"llama_kv_cache: size = +([0-9.]+) MiB", log)]
    assert len(reported) == (2 if model == GEMMA else 1), reported
    ours = estimate(meta, ctx, list(extra), 0, parallel, ubatch).kv / 2 ** 20
    assert abs(ours - sum(reported)) <= 0.01 * sum(reported), (ours, reported)
    full = estimate({**meta, "sliding_window": 0}, ctx, [], 0, parallel).kv / 2 ** 20
    if model == GEMMA and "--swa-full" not in extra:
        assert ours < 0.6 * full, (ours, full)          # what counting every layer at full context would say
