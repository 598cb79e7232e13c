"""A schema answer oracd constrains itself (compact output, fast-forward): when, and its answer in llama-server's shape.

Why: ``format: {schema}`` and ``response_format: json_schema`` get the JSON-RPC side's
cheaper JSON (``api/fastforward.generate_json``: no optional whitespace, forced text
written by oracd).  That path speaks ``/completion`` and returns text pieces and one
usage; shaped here as llama-server's ``/v1/chat/completions`` / ``/v1/completions``
answer and stream events, the API modules (``openai.py``, ``ollama.py``) turn them into
their own answers and chunks exactly as they do llama-server's.  Pure.
"""
from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

from ..api.generate import JsonOutput, Sent, json_output
from ..api.jsongrammar import try_compile
from ..config import Profile
from .core import Gen

def decide(gen: Gen, prof: Profile) -> Optional[JsonOutput]:
    """Does this request's schema go compact (and fast-forwarded)?  The JSON-RPC rules (``json_output``:
    request, then profile, then on for the built-in ``command`` schema, fast-forwarded where the child is
    batch-invariant), for a schema only: not ``"json"`` /
    ``json_object`` (any object), not with tools (the answer may be a tool call), not a schema outside the
    compact subset (llama-server's own schema grammar answers those)."""
    if gen.json_schema is None or gen.any_json or gen.tools:
        return None
    out = json_output(Sent("", stop=gen.stop, compact_json=gen.compact_json, fast_forward=gen.fast_forward),
                      prof, gen.json_schema)
    if out is None or try_compile(out.schema) is None:
        return None
    return out


class Shape:
    """One answer's llama-server-shaped pieces: the same id and creation time on each, chat or raw."""

    def __init__(self, chat: bool, model: str, created: int):
        self.chat = chat
        self.model = model
        self.created = created
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.first = True

    def _head(self, streamed: bool) -> Dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if streamed and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: Optional[str], finish: Optional[str]) -> Dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: Dict[str, Any] = {"content": text} if text else {}
        if self.first and text:
            delta["role"] = "assistant"
            self.first = False
        return {"index": 0, "delta": delta, "finish_reason": finish}

    def delta(self, text: str) -> Dict[str, Any]:
        """A stream event with one piece of the answer's text."""
        return {**self._head(True), "choices": [self._choice(text, None)]}

    def tail(self, result: Dict[str, Any], elapsed_s: float) -> List[Dict[str, Any]]:
        """The stream's last events: the finish reason, then usage and timings (as llama-server sends them
        when asked for usage; ``openai.chunk`` drops the usage event for a client that did not ask)."""
        return [{**self._head(True), "choices": [self._choice(None, result["finish_reason"])]},
                {**self._head(True), "choices": [], "usage": result["usage"],
                 "timings": timings(result, elapsed_s)}]

    def answer(self, result: Dict[str, Any], elapsed_s: float) -> Dict[str, Any]:
        """The whole answer, not streamed."""
        if self.chat:
            choice: Dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result["content"]},
                                      "finish_reason": result["finish_reason"]}
        else:
            choice = {"index": 0, "text": result["content"], "logprobs": None,
                      "finish_reason": result["finish_reason"]}
        return {**self._head(False), "choices": [choice], "usage": result["usage"],
                "timings": timings(result, elapsed_s)}


def timings(result: Dict[str, Any], elapsed_s: float) -> Dict[str, Any]:
    """llama-server's ``timings`` for Ollama's counts and durations.  Choice: the steps of a fast-forwarded
    answer interleave prompt and answer tokens, so the whole time counts as the answer's (``predicted_ms``)."""
    u = result["usage"]
    return {"prompt_n": u["prompt_tokens"], "prompt_ms": 0.0, "predicted_n": u["completion_tokens"],
            "predicted_ms": round(elapsed_s * 1000, 3)}
