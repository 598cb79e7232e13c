"""The warm-up phase: the first request after a load, with and without slot warm-up (llama.warmup).

Why: a long few-shot system prompt costs a small model seconds of prefill on a CPU; warm-up pays it
before ``ready``.  Two oracd run side by side on the same model and long few-shot profile, one with
warm-up, one without; each round unloads and loads the model on both (order alternating) and times
the load, the first generate after it and a second one (the steady state).  The first request pays
for the whole system prompt unless warm-up already prefilled it into the slot's KV cache.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from .clients import Rpc
from .daemons import SMOL, started, toml_value
from .harness import FAILED, Phase, Timeouts, div, sub, summary

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
WARMUP_PROMPTS = ("Turn off the kitchen lights", "Set the bedroom heating to 20 degrees")


async def _warmup_round(ph: Phase, t: Timeouts, name: str, rpc: Rpc, times: Dict[str, List[float]]) -> Optional[int]:
    """Unload, load, first and second generate, status, on one daemon: whatever succeeded is kept; a
    failed step ends the round (its later steps would measure something else).  The prompt's tokens."""
    if await ph.attempt_async(name, lambda: rpc.call("unload_model", timeout=t.load)) is FAILED:
        return None
    load = await ph.timed(name, lambda: rpc.call("load_model", {"model": SMOL}, timeout=t.load))
    if load is None:
        return None
    times["load_ms"].append(load)
    first_res: Dict[str, Any] = {}

    async def first() -> None:
        first_res.update(await rpc.call("generate", {"prompt": WARMUP_PROMPTS[0], "model": SMOL}, timeout=t.generate))

    first_ms = await ph.timed(name, first)
    if first_ms is None:
        return None
    times["first_ms"].append(first_ms)
    times["load_plus_first_ms"].append(load + first_ms)
    await ph.sample(times, name, lambda: rpc.call("generate", {"prompt": WARMUP_PROMPTS[1], "model": SMOL},
                                                  timeout=t.generate), into_key="second_ms")
    st = await ph.attempt_async(name, lambda: rpc.call("status"))
    if st is not FAILED and st["child"].get("warmup_ms") is not None:
        times["warmup_ms"].append(st["child"]["warmup_ms"])
    return first_res["usage"]["prompt_tokens"]


async def _warmup_rounds(ph: Phase, t: Timeouts, loads: int, common: Dict[str, Any]) -> Any:
    times: Dict[str, Dict[str, List[float]]] = {}
    prompt_tokens = None
    with started(t, llama={**common, "warmup": True}) as on, started(t, llama={**common, "warmup": False}) as off:
        variants = {"warmup on": on, "warmup off": off}
        conns = {name: Rpc(o.socket, t) for name, o in variants.items()}
        for name in variants:
            times[name] = {"load_ms": [], "first_ms": [], "load_plus_first_ms": [], "second_ms": [],
                           "warmup_ms": []}
        try:
            for i in range(loads):
                order = list(variants) if i % 2 == 0 else list(reversed(variants))
                for name in order:
                    prompt_tokens = await _warmup_round(ph, t, name, conns[name], times[name]) or prompt_tokens
                    ph.advance()
        finally:
            for c in conns.values():
                await c.close()
    return times, prompt_tokens


async def bench_warmup(ph: Phase, t: Timeouts, loads: int) -> Dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-w-", dir="/tmp"))
    prof = root / "models.toml"
    prof.write_text(f'[profiles."{SMOL}"]\nsystem_prompt = {toml_value(FEWSHOT_SYSTEM)}\n'
                    'temperature = 0.0\nmax_tokens = 64\njson_schema = "command"\n')
    common = {"threads": 0, "profiles_file": str(prof), "preload": False, "ctx_size": 4096, "parallel": 2}
    try:
        times, prompt_tokens = await _warmup_rounds(ph, t, loads, common)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res: Dict[str, Any] = {"loads": loads, "first_request_prompt_tokens": prompt_tokens, "parallel": 2}
    for name, tm in times.items():
        res[name] = {k: summary(v) for k, v in tm.items() if v}
        res[name]["failures"] = ph.failures.get(name)
        res[name]["_raw"] = tm
    p50 = {(name, k): res[name].get(k, {}).get("p50") for name in times for k in ("first_ms", "load_plus_first_ms")}
    on_first, off_first = p50["warmup on", "first_ms"], p50["warmup off", "first_ms"]
    res["first_request_saving_ms_p50"] = sub(off_first, on_first)
    res["first_request_speedup_p50"] = div(off_first, on_first, 2)
    res["load_plus_first_saving_ms_p50"] = sub(p50["warmup off", "load_plus_first_ms"],
                                               p50["warmup on", "load_plus_first_ms"])
    return res
