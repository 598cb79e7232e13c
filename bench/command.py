"""The ``command`` phase: one spoken command in, one command object out, three ways, on both real models.

(a) llama-server directly, the ``command`` schema as ``response_format`` (its own grammar: whitespace allowed);
(b) oracd, compact output (``fast_forward=false``: oracd's grammar, no optional whitespace);
(c) oracd, fast-forward (oracd writes the forced text, the model samples the values);
(b2) (b) again: the noise floor, how often the same compact request gives another object when the slot's
     prompt cache is in another state (llama.cpp's results depend on how a prompt was batched, unless the
     child is batch-invariant: ``[llama] batch_invariant``, on by default for a CPU child, reported).

Then a controlled pass on its own daemon with one slot: before each of (b), (c) and (b2), the same reset
request puts the slot's cache in the same state, so (b) and (b2) agree, and what differs between (b) and (c)
is fast-forward's own doing (its forced spans evaluated as a batch, where sampling evaluates them one by one).

Same few-shot system prompt (bench.warmup's), greedy, over the eval corpus's commands; the variants are
interleaved command by command, in a rotating order, so machine noise hits them alike.  Before timing,
(c) answers a few commands untimed: its exactness check and the spans it learns from the model's own
answers are made once per (model, schema) by a running daemon, not per request.  Reports p50/p95 latency,
sampled tokens per answer, and the share of commands where (c) gives the same object as (b), listing
every difference.  ``python -m bench --only-command`` runs this phase alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from oracd_protocol.schemas import COMMAND_SCHEMA

from .clients import Rpc, direct_session
from .daemons import SMOL, started
from .harness import FAILED, Phase, Timeouts, pct
from .warmup import FEWSHOT_SYSTEM

GEMMA = "gemma-3-270m-q4_k_m.gguf"
CORPUS = Path(__file__).resolve().parent.parent / "client" / "oracd_client" / "cli" / "data" / "commands.jsonl"
VARIANTS = ("a direct response_format", "b oracd compact", "c oracd fast-forward", "b2 oracd compact again")
MAX_TOKENS = 96
PRIME = 8               # untimed fast-forward answers per model before the timed runs
CONTROLLED = 20         # commands in the controlled pass (each answered (b), (c), (b2), a reset before each)
RESET = "Hello."        # the reset request's command: the slot then holds the system prompt and this


def corpus(limit: Optional[int] = None) -> List[str]:
    lines = [json.loads(x) for x in CORPUS.read_text().splitlines() if x.strip()]
    return [x["text"] for x in lines][:limit]


def command_units(n_commands: int) -> int:
    return 2 * (PRIME + n_commands * len(VARIANTS)) + 2 * (PRIME + min(n_commands, CONTROLLED))


async def _direct(session: Any, text: str) -> Dict[str, Any]:
    body = {"messages": [{"role": "system", "content": FEWSHOT_SYSTEM}, {"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "top_p": 0.7, "top_k": 40,
            "response_format": {"type": "json_schema", "json_schema": {"name": "command", "schema": COMMAND_SCHEMA}}}
    async with session.post("/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"llama-server answered HTTP {resp.status}: {(await resp.text())[:200]}")
        data = await resp.json()
    n = int(data["usage"]["completion_tokens"])
    return {"text": data["choices"][0]["message"]["content"], "sampled": n}


async def _oracd(rpc: Rpc, model: str, text: str, ff: bool, t: Timeouts) -> Dict[str, Any]:
    r = await rpc.call("generate", {"model": model, "prompt": text, "system_prompt": FEWSHOT_SYSTEM,
                                    "json_schema": "command", "temperature": 0.0, "max_tokens": MAX_TOKENS,
                                    "fast_forward": ff}, timeout=t.generate)
    return {"text": r["response"], "sampled": r["usage"]["sampled_tokens"], "forced": r["usage"]["forced_tokens"],
            "fast_forward": r["json_output"]["fast_forward"]}


def _obj(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"invalid": text}


async def _model(ph: Phase, o: Any, model: str, texts: List[str], t: Timeouts) -> Dict[str, Any]:
    rpc = Rpc(o.socket, t)
    try:
        await rpc.call("load_model", {"model": model}, timeout=t.load)
        endpoint = (await rpc.call("status"))["child"]["endpoint"]
        for text in texts[:PRIME]:
            await ph.attempt_async("prime", lambda text=text: _oracd(rpc, model, text, True, t))
            ph.advance()
        ms: Dict[str, List[float]] = {v: [] for v in VARIANTS}
        out: Dict[str, List[Any]] = {v: [] for v in VARIANTS}
        async with direct_session(endpoint, t) as session:
            for n, text in enumerate(texts):
                order = VARIANTS[n % len(VARIANTS):] + VARIANTS[:n % len(VARIANTS)]
                for v in order:
                    def call(v: str = v, text: str = text) -> Any:
                        if v.startswith("a"):
                            return _direct(session, text)
                        return _oracd(rpc, model, text, v.startswith("c "), t)
                    t0 = time.perf_counter()
                    r = await ph.attempt_async(v, call)
                    if r is FAILED:
                        r = None
                    else:
                        ms[v].append((time.perf_counter() - t0) * 1000)
                    out[v].append(r)
                    ph.advance()
    finally:
        await rpc.close()
    return _figures(texts, ms, out)


async def _controlled(ph: Phase, o: Any, model: str, texts: List[str], t: Timeouts) -> Dict[str, Any]:
    """(b), (c) and (b2) for each command, the one slot reset to the same state before each: same objects?"""
    rpc = Rpc(o.socket, t)
    got: Dict[str, List[Any]] = {"b": [], "c": [], "b2": []}
    try:
        await rpc.call("load_model", {"model": model}, timeout=t.load)
        for text in texts[:PRIME]:
            await ph.attempt_async("prime", lambda text=text: _oracd(rpc, model, text, True, t))
            ph.advance()
        for text in texts:
            for key in got:
                async def one(key: str = key, text: str = text) -> Any:
                    await _oracd(rpc, model, RESET, False, t)
                    return await _oracd(rpc, model, text, key == "c", t)
                r = await ph.attempt_async(f"controlled {key}", one)
                got[key].append(None if r is FAILED else r)
            ph.advance()
    finally:
        await rpc.close()
    return controlled_figures(texts, got)


def controlled_figures(texts: List[str], got: Dict[str, List[Any]]) -> Dict[str, Any]:
    """The controlled pass's shares: (b2) = (b) (should be 1: the same state, the same request) and (c) = (b)."""
    trios = [(text, b, c, b2) for text, b, c, b2 in zip(texts, got["b"], got["c"], got["b2"]) if b and c and b2]
    n = max(1, len(trios))
    return {"commands": len(trios),
            "b2_same_as_b": _r(sum(1 for _, b, _c, b2 in trios if _obj(b["text"]) == _obj(b2["text"])) / n),
            "c_same_as_b": _r(sum(1 for _, b, c, _b2 in trios if _obj(b["text"]) == _obj(c["text"])) / n),
            "differences": [{"command": text, "b": b["text"], "c": c["text"], "c_fast_forwarded": c["fast_forward"]}
                            for text, b, c, _b2 in trios if _obj(b["text"]) != _obj(c["text"])]}


def _figures(texts: List[str], ms: Dict[str, List[float]], out: Dict[str, List[Any]]) -> Dict[str, Any]:
    res: Dict[str, Any] = {"commands": len(texts), "variants": {}}
    for v in VARIANTS:
        ok = [r for r in out[v] if r is not None]
        res["variants"][v] = {"p50_ms": _r(pct(ms[v], 50)), "p95_ms": _r(pct(ms[v], 95)), "answers": len(ok),
                              "sampled_per_answer": _r(sum(r["sampled"] for r in ok) / len(ok) if ok else None)}
    c = [r for r in out[VARIANTS[2]] if r is not None]
    res["variants"][VARIANTS[2]]["fast_forwarded"] = sum(1 for r in c if r["fast_forward"])
    res["variants"][VARIANTS[2]]["forced_per_answer"] = _r(sum(r["forced"] for r in c) / len(c) if c else None)
    same, diffs = 0, []
    pairs = [(text, b, cc) for text, b, cc in zip(texts, out[VARIANTS[1]], out[VARIANTS[2]])
             if b is not None and cc is not None]
    for text, b, cc in pairs:
        if _obj(b["text"]) == _obj(cc["text"]):
            same += 1
        else:
            diffs.append({"command": text, "b": b["text"], "c": cc["text"], "c_fast_forwarded": cc["fast_forward"]})
    res["c_same_as_b"] = _r(same / len(pairs)) if pairs else None
    res["differences"] = diffs
    a = res["variants"][VARIANTS[0]]["p50_ms"]
    cp = res["variants"][VARIANTS[2]]["p50_ms"]
    res["c_p50_over_a"] = _r(cp / a) if a and cp else None
    # the noise floor: the same compact request twice, the slot's cache in another state in between
    res["b2_same_as_b"] = _r(sum(1 for x, y in zip(out[VARIANTS[1]], out[VARIANTS[3]]) if x and y
                                 and _obj(x["text"]) == _obj(y["text"])) / max(1, len(pairs)))
    res["a_same_as_b"] = _r(sum(1 for x, y in zip(out[VARIANTS[0]], out[VARIANTS[1]]) if x and y
                                and _obj(x["text"]) == _obj(y["text"])) / max(1, len(pairs)))
    return res


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 3)


async def bench_command(ph: Phase, t: Timeouts, limit: Optional[int] = None) -> Dict[str, Any]:
    texts = corpus(limit)
    res: Dict[str, Any] = {"max_tokens": MAX_TOKENS, "primed": PRIME}
    # 2 slots of 2048 tokens: the few-shot prompt is ~650 tokens (the tests' 1024 would leave 512 per slot)
    with started(t, models=[SMOL, GEMMA], llama={"threads": 0, "ctx_size": 4096, "default_model": SMOL}) as o:
        res["batch_invariant"] = o.call("status")["child"]["batch_invariant"]
        for model in (SMOL, GEMMA):
            res[model] = await _model(ph, o, model, texts, t)
    with started(t, models=[SMOL, GEMMA], llama={"threads": 0, "ctx_size": 2048, "parallel": 1,
                                                 "default_model": SMOL}) as o:
        for model in (SMOL, GEMMA):
            res[model]["controlled"] = await _controlled(ph, o, model, texts[:CONTROLLED], t)
    res["failures"] = ph.failures.as_dict()
    return res


def command_section(res: Dict[str, Any]) -> List[str]:
    """Markdown for the phase: one table per model, then the differences between (b) and (c)."""
    lines = ["## command: a command object, three ways", "",
             f"llama-server batch-invariant (`[llama] batch_invariant`): {res.get('batch_invariant')}", "",
             "| model | variant | p50 ms | p95 ms | sampled tokens/answer | answers |", "|---|---|---|---|---|---|"]
    for model in (SMOL, GEMMA):
        m = res.get(model)
        if not m:
            continue
        for v in VARIANTS:
            f = m["variants"][v]
            extra = (f" ({f['fast_forwarded']} fast-forwarded, {f['forced_per_answer']} forced tokens/answer)"
                     if "fast_forwarded" in f else "")
            lines.append(f"| {model} | {v} | {f['p50_ms']} | {f['p95_ms']} | {f['sampled_per_answer']} | "
                         f"{f['answers']}{extra} |")
    lines.append("")
    for model in (SMOL, GEMMA):
        m = res.get(model)
        if not m:
            continue
        lines.append(f"- {model}: (c) p50 / (a) p50 = {m['c_p50_over_a']} (target <= 0.6); (c) same object as "
                     f"(b): {m['c_same_as_b']} (target >= 0.95); (b2) same as (b): {m.get('b2_same_as_b')}; "
                     f"(a) same as (b): {m['a_same_as_b']}")
        for d in m["differences"]:
            lines.append(f"  - {d['command']!r}: b {d['b']} / c {d['c']} (fast-forwarded: {d['c_fast_forwarded']})")
        k = m.get("controlled")
        if k:
            lines.append(f"- {model}, controlled (one slot, reset to the same state before each answer, "
                         f"{k['commands']} commands): (b2) same as (b): {k['b2_same_as_b']}; (c) same as (b): "
                         f"{k['c_same_as_b']}")
            for d in k["differences"]:
                lines.append(f"  - {d['command']!r}: b {d['b']} / c {d['c']} "
                             f"(fast-forwarded: {d['c_fast_forwarded']})")
    return lines
