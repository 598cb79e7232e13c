"""The warm-up phase: the first request after a load with no warm-up, a prefill warm-up and a warm restore.

Why: a long few-shot system prompt costs a small model seconds of prefill on a CPU.  Warm-up pays it
before ``ready`` (prefill), or loads the saved KV cache from disk instead (restore); this
measures what each costs at the load and saves on the first request.  Three oracd run side by side on
the same model and profile (``WARM_SETTINGS``); each round unloads and loads the model on each (the
order rotating) and times the load, the first generate after it and a second one (the steady state).
Then the prefill and restore daemons each get a crash restart: SIGKILL llama-server, time until status
says ready with a new pid, then the first answer.  Every measured load must have been warmed the
variant's way (status.child.warm.how, ``EXPECTED_HOW``); one that was not is a failure, left out.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from .clients import Rpc
from .daemons import GEMMA, SMOL, Oracd, started, toml_value
from .figures import CRASH_VARIANTS, EXPECTED_HOW, WARM_LABELS, warm_results
from .harness import FAILED, Phase, Timeouts

# A long few-shot system prompt (~600 SmolLM2 tokens): the kind of prompt a small model needs to parse
# commands, and the kind whose prefill warm-up saves.
FEWSHOT_EXAMPLES = [
    ("switch on the hallway lights", "lights", "on", "hallway", None),
    ("dim the living room lights to 40 percent", "lights", "set", "living room", 40),
    ("make the kitchen lights red", "lights", "set", "kitchen", "red"),
    ("set the living room heating to 22 degrees", "heating", "set", "living room", 22),
    ("make it cooler in the kitchen", "heating", "decrease", "kitchen", None),
    ("set the thermostat to 19", "thermostat", "set", None, 19),
    ("open the bedroom blinds", "blinds", "open", "bedroom", None),
    ("turn on the fan in the office", "fan", "on", "office", None),
    ("play some rock music in the living room", "music", "play", "living room", "rock"),
    ("turn the volume down", "volume", "decrease", None, None),
    ("activate the dinner party scene", "scene", "activate", None, "dinner party"),
    ("lock the back door", "door", "lock", "back", None),
    ("what's the weather today", "none", "none", None, None),
]
FEWSHOT_SYSTEM = (
    "You are the command parser of a smart home. You turn one spoken command into one JSON object with "
    "exactly the keys device, action, location and value, and you reply with that object only.\n"
    "device: lights, heating, thermostat, blinds, fan, tv, music, volume, scene, door, an appliance, "
    "or none.\naction: on, off, toggle, set, increase, decrease, open, close, play, pause, stop, "
    "activate, lock, unlock, or none.\nlocation: the room as said, or null. value: a number without "
    "units, a word such as a colour or a scene name, or null.\nQuestions and chit-chat are not commands: "
    "device none, action none, location null, value null.\nExamples:\n"
    + "\n".join(f'"{t}" -> ' + json.dumps({"device": d, "action": a, "location": loc, "value": v})
                for t, d, a, loc, v in FEWSHOT_EXAMPLES))
PROMPTS = ("Turn off the kitchen lights", "Set the bedroom heating to 20 degrees")
CONFIG = {"warmup off": {"warmup": False}, "warmup on": {"warmup": True, "warm_restore": False},
          "restore": {"warmup": True, "warm_restore": True}}
PARALLEL = 2
RESTART_BACKOFF_S = 0.2      # restart_backoff_initial: part of every crash restart's kill-to-ready time
POLL_S = 0.01                # status polling while a crash restart is under way


def warmup_units(loads: int) -> int:
    """The phase's progress total: one priming load per daemon, then per round a load on each and two crashes."""
    return len(CONFIG) + loads * (len(CONFIG) + len(CRASH_VARIANTS))


def write_profile(path: Path, model: str = SMOL) -> Path:
    path.write_text(f'[profiles."{model}"]\nsystem_prompt = {toml_value(FEWSHOT_SYSTEM)}\n'
                    'temperature = 0.0\nmax_tokens = 64\njson_schema = "command"\n')
    return path


@dataclass
class Variant:
    """One daemon of the phase, its connection and its samples."""
    name: str
    o: Oracd
    rpc: Rpc
    model: str = SMOL
    times: Dict[str, List[float]] = field(default_factory=dict)
    crash: Dict[str, List[float]] = field(default_factory=dict)
    cached: Dict[str, List[float]] = field(default_factory=dict)   # usage.cached_tokens: first, second, crash
    warm: Dict[str, Any] = field(default_factory=dict)       # status.child.warm after the last load
    prompt_tokens: Optional[int] = None

    @staticmethod
    def add(into: Dict[str, List[float]], **samples: Optional[float]) -> None:
        for k, v in samples.items():
            if v is not None:
                into.setdefault(k, []).append(v)


async def timed(ph: Phase, key: str, fn: Callable[[], Awaitable[Any]]) -> Tuple[Optional[float], Any]:
    """(milliseconds, result) of ``await fn()``, or (None, None) with the failure recorded under ``key``."""
    box: Dict[str, Any] = {}

    async def run() -> None:
        box["r"] = await fn()

    return await ph.timed(key, run), box.get("r")


def generate(v: Variant, t: Timeouts, prompt: str) -> Awaitable[Any]:
    return v.rpc.call("generate", {"prompt": prompt, "model": v.model}, timeout=t.generate)


def cached_tokens(res: Any) -> Optional[int]:
    """How many of a generate's prompt tokens llama-server found in the slot's cache (usage.cached_tokens)."""
    return res["usage"].get("cached_tokens") if isinstance(res, dict) and "usage" in res else None


async def warmed(ph: Phase, key: str, v: Variant) -> bool:
    """Read status.child.warm; True if this load was warmed the variant's way (else a failure of ``key``)."""
    st = await ph.attempt_async(key, lambda: v.rpc.call("status"))
    if st is FAILED:
        return False
    v.warm = st["child"].get("warm") or {}
    how, want = v.warm.get("how"), EXPECTED_HOW[v.name]
    if how != want:
        note = f" ({v.warm['note']})" if v.warm.get("note") else ""
        ph.fail(key, f"status.child.warm.how is {how!r}, not {want!r}{note}: left out of the figures")
        return False
    return True


async def prime(ph: Phase, t: Timeouts, v: Variant) -> None:
    """An unmeasured first load on each daemon (the model file in the page cache for all alike); for
    restore it is the prefill that saves the cache entry every measured load then restores."""
    key = v.name
    if await ph.attempt_async(key, lambda: v.rpc.call("load_model", {"model": v.model}, timeout=t.load)) is FAILED:
        return
    st = await ph.attempt_async(key, lambda: v.rpc.call("status"))
    if st is not FAILED and v.name == "restore":
        warm = st["child"].get("warm") or {}
        if not warm.get("outcomes", {}).get("saved"):
            ph.fail(key, f"the priming load saved no cache entry (warm: {warm}); restore loads will prefill")


async def load_round(ph: Phase, t: Timeouts, v: Variant) -> None:
    """Unload, load, first and second generate, status.  A failed step ends the round (its later steps
    would measure something else); what succeeded before is kept, unless the load was not warmed the
    variant's way."""
    key = v.name
    if await ph.attempt_async(key, lambda: v.rpc.call("unload_model", timeout=t.load)) is FAILED:
        return
    load, _ = await timed(ph, key, lambda: v.rpc.call("load_model", {"model": v.model}, timeout=t.load))
    if load is None:
        return
    first, res = await timed(ph, key, lambda: generate(v, t, PROMPTS[0]))
    second, res2 = (None, None) if first is None else await timed(ph, key, lambda: generate(v, t, PROMPTS[1]))
    if not await warmed(ph, key, v):
        return
    v.add(v.times, load_ms=load, first_ms=first, load_plus_first_ms=None if first is None else load + first,
          second_ms=second, warmup_ms=v.warm.get("ms"))
    v.add(v.cached, first=cached_tokens(res), second=cached_tokens(res2))
    if res is not None:
        v.prompt_tokens = res["usage"]["prompt_tokens"]


async def killed_and_back(v: Variant, t: Timeouts, pid: int) -> None:
    """SIGKILL llama-server (``pid``) and wait until status says ready with a new pid."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + t.load
    while True:
        child = (await v.rpc.call("status"))["child"]
        if child["state"] == "ready" and child["pid"] not in (pid, None):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready again within {t.load:g} s of the kill (state {child['state']})")
        await asyncio.sleep(POLL_S)


async def crash_round(ph: Phase, t: Timeouts, v: Variant) -> None:
    """A crash restart: kill to ready with a new pid, then the first answer."""
    key = f"{v.name} crash restart"
    st = await ph.attempt_async(key, lambda: v.rpc.call("status"))
    if st is FAILED:
        return
    if st["child"]["state"] != "ready" or st["child"]["pid"] is None:
        ph.fail(key, f"no ready llama-server to kill (state {st['child']['state']})")
        return
    ready = await ph.timed(key, lambda: killed_and_back(v, t, st["child"]["pid"]))
    if ready is None:
        return
    first, res = await timed(ph, key, lambda: generate(v, t, PROMPTS[0]))
    if await warmed(ph, key, v):
        v.add(v.crash, ready_ms=ready, first_ms=first, ready_plus_first_ms=None if first is None else ready + first,
              warmup_ms=v.warm.get("ms"))
        v.add(v.cached, crash_first=cached_tokens(res))


async def _rounds(ph: Phase, t: Timeouts, loads: int, variants: Dict[str, Variant]) -> None:
    for v in variants.values():
        await prime(ph, t, v)
        ph.advance()
    names = list(variants)
    for i in range(loads):
        for name in names[i % len(names):] + names[:i % len(names)]:       # each goes first in turn
            await load_round(ph, t, variants[name])
            ph.advance()
        for name in (CRASH_VARIANTS if i % 2 == 0 else CRASH_VARIANTS[::-1]):
            await crash_round(ph, t, variants[name])
            ph.advance()


async def bench_warmup(ph: Phase, t: Timeouts, loads: int, model: str = SMOL) -> Dict[str, Any]:
    """The phase for ``model`` (SmolLM2; Gemma 3 too, a sliding-window model restored with --swa-full)."""
    root = Path(tempfile.mkdtemp(prefix="bench-w-", dir="/tmp"))
    common = {"threads": 0, "profiles_file": str(write_profile(root / "models.toml", model)), "preload": False,
              "ctx_size": 4096, "parallel": PARALLEL, "restart_backoff_initial": RESTART_BACKOFF_S,
              "default_model": model}
    variants: Dict[str, Variant] = {}
    try:
        with ExitStack() as stack:
            for name in WARM_LABELS:
                o = stack.enter_context(started(t, models=[model], llama={**common, **CONFIG[name]}))
                variants[name] = Variant(name, o, Rpc(o.socket, t), model)
            try:
                await _rounds(ph, t, loads, variants)
            finally:
                for v in variants.values():
                    await v.rpc.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tokens = next((v.prompt_tokens for v in variants.values() if v.prompt_tokens), None)
    warm = variants["restore"].warm if "restore" in variants else {}
    entry = {k: warm.get(k) for k in ("prompt_tokens", "cached_tokens", "cache_dir_bytes", "outcomes")}
    return {"model": model, **warm_results(loads, {n: v.times for n, v in variants.items()}, {n: v.crash for n, v in variants.items()},
                        ph.failures.get, first_request_prompt_tokens=tokens, parallel=PARALLEL,
                        restart_backoff_s=RESTART_BACKOFF_S, restore_entry=entry,
                        cached_prompt_tokens={n: v.cached for n, v in variants.items()})}
