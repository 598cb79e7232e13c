"""OpenAI's API in oracd's words, and back: pure translation (the I/O is in ``server.py``).

llama-server already answers in OpenAI's shape, so the way back is small: the
model is named as the client named it, and usage is sent only when the client
asked (``stream_options.include_usage``).  The way in is strict: every field
oracd acts on is type- and range-checked (400 naming the field); fields oracd
does not act on are ignored, as OpenAI-compatible servers do (clients such as
LiteLLM send many), and never forwarded to llama-server.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from oracd_protocol.errors import InvalidParams

from . import core
from .core import Gen
from ..config.sampling import bounds


def _common(body: Dict[str, Any], gen: Gen) -> None:
    core.sampling(body, gen)
    gen.grammar = core.inline_grammar("grammar", body.get("grammar"))
    core.json_flags(body, gen)
    gen.stream = core.boolean("stream", body.get("stream"))
    core.integer("n", body.get("n"), 1, 1)         # one choice per request
    opts = core.obj("stream_options", body.get("stream_options")) or {}
    include_usage = core.boolean("stream_options.include_usage", opts.get("include_usage"))
    if gen.stream:
        gen.extra["stream_options"] = {"include_usage": include_usage}
    maxt = body.get("max_completion_tokens")
    gen.max_tokens = core.integer("max_completion_tokens" if maxt is not None else "max_tokens",
                                  maxt if maxt is not None else body.get("max_tokens"), *bounds("max_tokens"))


def model_of(body: Dict[str, Any]) -> Optional[str]:
    return core.string("model", body.get("model"), allow_empty=False)


def chat_request(body: Any) -> Gen:
    """POST /v1/chat/completions -> Gen."""
    body = _top(body)
    gen = Gen(messages=core.check_messages(body.get("messages")))
    _common(body, gen)
    gen.tools = core.check_tools(body.get("tools"))
    gen.tool_choice = core.check_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is not None:
        gen.extra["parallel_tool_calls"] = core.boolean("parallel_tool_calls", body.get("parallel_tool_calls"))
    _format(body, gen)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in ("none", "minimal", "low", "medium", "high"):
            raise core.bad("reasoning_effort", '"none", "minimal", "low", "medium" or "high"', effort)
        gen.think = False if effort == "none" else ("low" if effort == "minimal" else effort)
    return gen


def completion_request(body: Any) -> Gen:
    """POST /v1/completions (a raw prompt, the caller's own template) -> Gen."""
    body = _top(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise core.bad("prompt", "a non-empty string (one prompt per request)", prompt)
    for key, fine in (("suffix", (None, "")), ("best_of", (None, 1)), ("logprobs", (None,)), ("echo", (None, False))):
        if body.get(key) not in fine:
            raise InvalidParams(f"{key} is not supported by oracd", key)
    gen = Gen(prompt=prompt)
    _common(body, gen)
    _format(body, gen)
    return gen


def _format(body: Dict[str, Any], gen: Gen) -> None:
    gen.json_schema = response_format(body.get("response_format"))
    gen.any_json = gen.json_schema is not None and body["response_format"].get("type") == "json_object"


def response_format(v: Any) -> Optional[Dict[str, Any]]:
    """{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": {...}}} -> a schema or None."""
    if v is None:
        return None
    kind = v.get("type") if isinstance(v, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return core.inline_schema("response_format.schema", v.get("schema")) or {"type": "object"}
    if kind == "json_schema":
        spec = core.obj("response_format.json_schema", v.get("json_schema")) or {}
        schema = spec.get("schema", v.get("schema"))
        if schema is None:
            raise core.bad("response_format.json_schema.schema", "a JSON schema object", None)
        return core.inline_schema("response_format.json_schema.schema", schema)
    raise core.bad("response_format", '{"type": "text" | "json_object" | "json_schema", ...}', v)


def _top(body: Any) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise core.bad("body", "a JSON object", body)
    return body


# ---------------------------------------------------------------- the way back
def answer(data: Dict[str, Any], model: str) -> Dict[str, Any]:
    """llama-server's non-streamed answer, with the model named as the client named it."""
    return {**data, "model": model}


def chunk(data: Dict[str, Any], model: str, include_usage: bool) -> Optional[Dict[str, Any]]:
    """One streamed chunk for the client (None: nothing to send)."""
    out = {**data, "model": model}
    if not include_usage:
        out.pop("usage", None)
        if not out.get("choices"):
            return None
    return out


def models_list(names: List[Tuple[str, float]]) -> Dict[str, Any]:
    """GET /v1/models: every model under its file name (and aliases), ``created`` from the file's mtime."""
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": int(mtime), "owned_by": "oracd"} for n, mtime in names]}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def error(status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
          oracd: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """OpenAI's error shape: {"error": {message, type, param, code}} (plus oracd's own code and data)."""
    err: Dict[str, Any] = {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                           "param": param, "code": code}
    if oracd:
        err["oracd"] = oracd
    return {"error": err}

