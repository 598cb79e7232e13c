"""Fast-forward generation of a JSON object: oracd writes the forced spans, the model samples the values.

Why: see ffplan.py.  Each step is one POST /completion on the same slot, whose
prompt is the previous one plus what was sampled and forced since (token ids), so
llama-server's prompt cache processes only the new tokens (``cache_prompt``,
``id_slot``).  A step samples under the compact grammar of the rest of the answer
and stops at the first character after its value; the token that crossed into the
forced span is dropped and the span is appended as the model's own tokens, learned
from its compact answers (``ffplan.learn``: a model under a grammar does not write
the canonical tokenization, and fed it, it goes astray).

The check, once per (model, schema) (``Calibration``): the first request is answered
by compact sampling, which teaches the spans; fast-forward then runs on the same
prompt and the token ids are compared (``check``).  A forced token that differs
from the model's own turns fast-forward off for that pair.  A span not learned yet,
or a step whose stop fired inside a value (``\\"`` in a string), answers that request
by compact sampling (and learns from it).

``generate_json`` is the one entry both APIs call: messages or a raw prompt, a
schema, sampling, a stream callback.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from ..logs import get as get_logger
from .ffplan import Pieces, Plan, kept, learn, try_plan
from .jsongrammar import try_compile

log = get_logger("oracd.fastforward")
OnDelta = Optional[Callable[[str], Awaitable[None]]]


class Resample(Exception):
    """This request's fast-forward cannot go on (a stop inside a value, a span whose tokens are not learned
    yet): sample it compactly instead (and learn from that answer)."""


@dataclass
class Calibration:
    """What fast-forward knows per (model, schema): the model's tokens for each forced span (``learn``) and
    the verdict of the exactness check (None not yet checked, True exact, False: compact sampling only)."""
    verdicts: Dict[Tuple[str, str], bool] = field(default_factory=dict)
    tries: Dict[Tuple[str, str], int] = field(default_factory=dict)
    spans: Dict[Tuple[str, str], Dict[bytes, List[int]]] = field(default_factory=dict)
    plans: Dict[str, Optional[Plan]] = field(default_factory=dict)
    grammars: Dict[str, Optional[str]] = field(default_factory=dict)

    @staticmethod
    def key(schema: Any) -> str:
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))

    def plan(self, schema: Any) -> Optional[Plan]:
        k = self.key(schema)
        if k not in self.plans:
            _bound(self.plans)
            self.plans[k] = try_plan(schema)
        return self.plans[k]

    def grammar(self, schema: Any) -> Optional[str]:
        k = self.key(schema)
        if k not in self.grammars:
            _bound(self.grammars)
            self.grammars[k] = try_compile(schema)
        return self.grammars[k]

    def teach(self, key: Tuple[str, str], plan: Plan, pieces: Pieces) -> bool:
        learned = learn(plan, pieces)
        if learned is None:
            return False
        if key not in self.spans:
            _bound(self.spans)
        known = self.spans.setdefault(key, {})
        for text, ids in learned.items():
            if len(known) < MAX_SPANS:
                known.setdefault(text, ids)
        return True

    def judge(self, key: Tuple[str, str], exact: bool) -> None:
        if key not in self.verdicts:
            _bound(self.verdicts)
        self.verdicts[key] = exact

    def as_dict(self) -> Dict[str, Any]:
        return {f"{m} {k[:40]}": ok for (m, k), ok in self.verdicts.items()}


# Bounds: schemas come with requests, so every table is capped (the oldest entry goes first).
MAX_ENTRIES = 128
MAX_SPANS = 256         # learned span variants per (model, schema)


def _bound(table: Dict[Any, Any]) -> None:
    while len(table) >= MAX_ENTRIES:
        table.pop(next(iter(table)))


CALIBRATION = Calibration()
CHECK_TRIES = 3         # checks that could not compare (a span not learned yet) before the verdict is "no"


def _usage(prompt: int, cached: int, sampled: int, forced: int) -> Dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": sampled + forced, "total_tokens": prompt + sampled + forced,
            "prompt_tokens_details": {"cached_tokens": cached}, "sampled_tokens": sampled, "forced_tokens": forced}


def _pieces(r: Dict[str, Any]) -> Pieces:
    return [(int(p["id"]), bytes(p.get("bytes") or b"")) for p in r.get("probs") or ()]


async def compact(http: Any, prompt: str, grammar: str, sampling: Dict[str, Any], max_tokens: int,
                  on_delta: OnDelta, pieces: bool = False) -> Dict[str, Any]:
    """Plain sampling under the compact grammar, on /completion (``pieces``: with each token's bytes, to learn)."""
    body = dict(sampling, prompt=prompt, n_predict=max_tokens, grammar=grammar, cache_prompt=True)
    if pieces:
        body["n_probs"] = 1
    r = await http.completion_ids(body, on_delta)
    u = r["usage"]
    r["usage"] = _usage(u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"], r["tokens_predicted"], 0)
    r["fast_forward"] = False
    return r


async def fast_forward(http: Any, prompt: str, plan: Plan, spans: Dict[bytes, List[int]],
                       sampling: Dict[str, Any], max_tokens: int, on_delta: OnDelta) -> Dict[str, Any]:
    """Fill the object: forced spans appended as the model's own tokens (``spans``), values sampled.

    Returns {content, finish_reason, usage (with sampled_tokens, forced_tokens), ids (the answer's token ids)}.
    Raises Resample.
    """
    async def emit(text: str) -> None:
        if on_delta is not None and text:
            await on_delta(text)

    first = plan.forced[0].encode()
    if first not in spans:
        raise Resample("first span not learned")
    context = list(spans[first])
    forced_at = set(range(len(context)))      # positions in ``context`` that oracd wrote (for the check)
    answer = [plan.forced[0]]
    await emit(plan.forced[0])
    sampled, forced = 0, len(context)
    slot, prompt_tokens, cached, finish = -1, 0, 0, "stop"
    for i in range(len(plan.values)):
        budget = max_tokens - sampled if max_tokens >= 0 else -1      # negative: until the grammar ends
        if max_tokens >= 0 and budget <= 0:
            finish = "length"
            break
        body = dict(sampling, prompt=[prompt, *context], n_predict=budget, grammar=plan.step_grammar(i),
                    stop=[plan.stop(i)], cache_prompt=True, id_slot=slot, n_probs=1)
        r = await http.completion_ids(body, on_delta)
        if i == 0:
            prompt_tokens = r["usage"]["prompt_tokens"] - len(spans[first])
            cached = min(prompt_tokens, r["usage"]["prompt_tokens_details"]["cached_tokens"])
        slot = r["id_slot"] if isinstance(r["id_slot"], int) and r["id_slot"] >= 0 else slot
        sampled += r["tokens_predicted"]
        content = r["content"]
        answer.append(content)
        if r["stop_type"] != "word":           # max_tokens reached (or an end-of-generation): cut off here
            finish = "length" if r["stop_type"] == "limit" else "stop"
            break
        if plan.value_complete(i, content) is None:
            raise Resample(f"step {i} stopped inside its value: {content!r}")
        raw = content.encode()
        # the last sampled token completed the stop: left out (a stream reports it cut at the stop)
        pieces = _pieces(r)[:max(0, len(r["tokens"]) - 1)]
        n, size = kept(pieces, raw)
        insert = raw[size:] + plan.forced[i + 1].encode()
        ids = spans.get(insert)
        last = i == len(plan.values) - 1
        if last:                        # the closing span is never decoded: the answer ends with it
            context.extend(t for t, _ in pieces[:n])
            forced += len(ids) if ids is not None else 1
            answer.append(plan.forced[i + 1])
            await emit(plan.forced[i + 1])
            break
        if ids is None:
            raise Resample(f"span {insert!r} not learned")
        context.extend(t for t, _ in pieces[:n])
        forced_at.update(range(len(context), len(context) + len(ids)))
        context.extend(ids)
        forced += len(ids)
        answer.append(plan.forced[i + 1])
        await emit(plan.forced[i + 1])
    return {"content": "".join(answer), "finish_reason": finish, "ids": context, "forced_at": forced_at,
            "fast_forward": True, "usage": _usage(prompt_tokens, cached, sampled, forced)}


def check(ff_ids: List[int], forced_at: Any, ref_ids: List[int]) -> Tuple[bool, str]:
    """Does fast-forward feed the model the tokens compact sampling does?  Up to the first token where the
    two differ, both are the same sequence; if that token was sampled, the model chose otherwise in the same
    context -- llama.cpp's numerics (a prompt evaluated in a batch vs token by token, another slot's cache),
    which move a near tie between two compact runs too -- not fast-forward's doing.  If oracd wrote it,
    the model tokenizes the forced text otherwise than learned: not exact."""
    for n, tok in enumerate(ff_ids):
        if n >= len(ref_ids) or ref_ids[n] != tok:
            if n in forced_at:
                return False, f"forced token {n} differs from the model's own"
            return True, f"same tokens up to sampled token {n}, where the model chose otherwise (numerics)"
    return True, "same tokens"


#: llama-server's sampling keys in a merged request body that carry over to ``/completion`` as they are
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "repeat_penalty",
                 "presence_penalty", "frequency_penalty")


def sampling_of(body: Dict[str, Any]) -> Dict[str, Any]:
    """A merged body's sampling keys, for ``generate_json`` (both APIs build their bodies first)."""
    return {k: body[k] for k in SAMPLING_KEYS if k in body}


async def generate_json(http: Any, model: str, schema: Any, sampling: Dict[str, Any], max_tokens: int,
                        *, prompt: Optional[str] = None, messages: Optional[List[Dict[str, Any]]] = None,
                        template_kwargs: Optional[Dict[str, Any]] = None, on_delta: OnDelta = None,
                        use_fast_forward: bool = True, calibration: Calibration = CALIBRATION) -> Dict[str, Any]:
    """One JSON answer for ``schema``: fast-forward where it applies and is known exact, else compact sampling.

    The entry for both APIs (JSON-RPC ``generate``; the HTTP APIs' ``format`` / ``response_format``):
    ``messages`` (rendered once with the model's chat template) or a raw ``prompt``; ``sampling`` holds
    llama-server's sampling keys (temperature, top_p, top_k, seed ...); a negative ``max_tokens`` is no limit
    (Ollama's ``num_predict: -1``: the grammar ends the answer).  Returns {content, finish_reason,
    usage (prompt/completion/total, sampled_tokens, forced_tokens, prompt_tokens_details), fast_forward}.
    Raises ValueError when the schema has no compact grammar (the caller then sends json_schema as usual).
    """
    grammar = calibration.grammar(schema)
    if grammar is None:
        raise ValueError("schema outside the compact subset")
    if prompt is None:
        prompt = await http.apply_template(messages, template_kwargs)
    plan = calibration.plan(schema) if use_fast_forward else None
    key = (model, calibration.key(schema))
    verdict = calibration.verdicts.get(key)
    if plan is None or verdict is False:
        return _public(await compact(http, prompt, grammar, sampling, max_tokens, on_delta))
    if verdict is None:
        # the check, once: compact sampling (the reference, streamed) teaches the spans; then fast-forward,
        # silently: the same token ids?
        ref = await compact(http, prompt, grammar, sampling, max_tokens, on_delta, pieces=True)
        exact: Optional[bool] = False
        why = "the model writes a forced span merged with a value"
        if calibration.teach(key, plan, _pieces(ref)):
            try:
                ff = await fast_forward(http, prompt, plan, calibration.spans[key], sampling, max_tokens, None)
                exact, why = check(ff["ids"], ff["forced_at"], ref["tokens"])
            except Resample as exc:     # a span not learned yet (the values differed): check again next time
                _bound(calibration.tries)
                tries = calibration.tries[key] = calibration.tries.get(key, 0) + 1
                exact, why = (None if tries < CHECK_TRIES else False), str(exc)
        if exact is not None:
            calibration.judge(key, exact)
        log.info("fast-forward checked against compact sampling", model=model, exact=exact, why=why)
        return _public(ref)
    stream = _Stream(on_delta) if on_delta is not None else None
    try:
        return _public(await fast_forward(http, prompt, plan, calibration.spans.get(key, {}), sampling,
                                          max_tokens, stream))
    except Resample as exc:
        log.info("fast-forward fell back to compact sampling", model=model, why=str(exc))
        if stream is not None:
            stream.replay()
        ref = await compact(http, prompt, grammar, sampling, max_tokens, stream, pieces=True)
        calibration.teach(key, plan, _pieces(ref))
        return _public(ref)


class _Stream:
    """Chunks to the client; after a fallback, the compact answer's text the client already has is not sent
    again (it repeats the fast-forward's prefix under the same grammar; where it differs, the rest is sent)."""

    def __init__(self, on_delta: Callable[[str], Awaitable[None]]):
        self.on_delta = on_delta
        self.sent = ""
        self.pending = ""

    def replay(self) -> None:
        self.pending, self.sent = self.sent, ""

    async def __call__(self, text: str) -> None:
        if self.pending:
            n = 0
            while n < len(text) and n < len(self.pending) and text[n] == self.pending[n]:
                n += 1
            if n == len(text) or n == len(self.pending):
                self.pending = self.pending[n:]
                text = text[n:]
            else:
                self.pending = ""       # diverged: send the rest as it comes
        if text:
            self.sent += text
            await self.on_delta(text)


def _public(r: Dict[str, Any]) -> Dict[str, Any]:
    return {"content": r["content"], "finish_reason": r["finish_reason"], "usage": r["usage"],
            "fast_forward": r["fast_forward"]}
