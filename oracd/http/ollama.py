"""Ollama's API in oracd's words, and back: pure translation (the I/O is in ``server.py``).

The way in: ``/api/chat`` and ``/api/generate`` bodies become a ``core.Gen``
(options, format, tools, think, keep_alive).  The way back: llama-server's
OpenAI-shaped answer or stream events become Ollama's objects -- NDJSON chunks
with ``message.content`` / ``message.thinking`` / ``message.tool_calls``
(arguments as an object, as the ``ollama`` library requires), and a final chunk
with ``done``, ``done_reason`` and the durations in nanoseconds.

Tool calls arrive from llama-server as streamed fragments (a name, then pieces
of the arguments' JSON); Ollama's clients expect each call whole, so the
fragments are joined and each call is sent once, when the generation ends.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from oracd_protocol.errors import InvalidParams

from . import core
from .core import Gen
from ..config.sampling import bounds

VERSION = "0.12.0"          # the Ollama API version oracd answers like (clients check for a recent one)
PINNED_UNTIL = "2318-11-25T00:00:00Z"


def _top(body: Any) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise core.bad("body", "a JSON object", body)
    return body


def model_of(body: Dict[str, Any]) -> Optional[str]:
    return core.string("model", body.get("model"), allow_empty=False)


# ---------------------------------------------------------------- the way in
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive(v: Any) -> Optional[float]:
    """Ollama's keep_alive: seconds (a number) or a Go duration ("300s", "5m", "1h30m"); negative pins (inf)."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise core.bad("keep_alive", 'a duration like "5m", a number of seconds, or -1', v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return math.inf if v < 0 else float(v)
    if isinstance(v, str):
        text = v.strip()
        try:
            n = float(text)
            return math.inf if n < 0 else n
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if parts and "".join(a + u for a, u in parts) == text:
            total = sum(float(a) * _UNIT_S[u] for a, u in parts)
            return math.inf if total < 0 or text.startswith("-") else total
    raise core.bad("keep_alive", 'a duration like "5m", a number of seconds, or -1', v)


def fmt(v: Any, gen: Gen) -> None:
    """``format``: "json" (any object) or a JSON schema; "" or null: free text."""
    if v is None or v == "":
        return
    if v == "json":
        gen.json_schema, gen.any_json = {"type": "object"}, True
    elif isinstance(v, dict):
        gen.json_schema = core.inline_schema("format", v)
    else:
        raise core.bad("format", '"json" or a JSON schema object', v)


def options(opts: Any, gen: Gen) -> Optional[int]:
    """The options oracd acts on; returns num_ctx (reported, never a restart: see ``/api/ps``)."""
    o = core.obj("options", opts) or {}
    core.sampling(o, gen, "options.")
    n = core.integer("options.num_predict", o.get("num_predict"), -2, bounds("max_tokens")[1])
    if n is not None and n != 0:
        gen.max_tokens = -1 if n < 0 else n         # -1 / -2: until the context is full (the deadline bounds it)
    if o.get("grammar") is not None:
        gen.grammar = core.inline_grammar("options.grammar", o.get("grammar"))
    core.json_flags(o, gen, "options.")
    return core.integer("options.num_ctx", o.get("num_ctx"), 1, 10_000_000)


def _shared(body: Dict[str, Any], gen: Gen) -> Tuple[Optional[float], Optional[int]]:
    num_ctx = options(body.get("options"), gen)
    if body.get("grammar") is not None:
        gen.grammar = core.inline_grammar("grammar", body.get("grammar"))
    core.json_flags(body, gen)
    fmt(body.get("format"), gen)
    gen.think = core.think_value("think", body.get("think"))
    gen.stream = core.boolean("stream", body.get("stream"), default=True)     # Ollama streams by default
    gen.extra["stream_options"] = {"include_usage": True}      # the counts and timings of the final chunk
    return keep_alive(body.get("keep_alive")), num_ctx


def chat_request(body: Any) -> Tuple[Gen, Optional[float], Optional[int]]:
    """POST /api/chat -> (Gen, keep_alive seconds, num_ctx).  No messages: a load request (``Gen.messages`` None)."""
    body = _top(body)
    msgs = body.get("messages")
    gen = Gen(messages=core.check_messages(msgs) if msgs not in (None, []) else None)
    gen.tools = core.check_tools(body.get("tools"))
    ka, num_ctx = _shared(body, gen)
    return gen, ka, num_ctx


def generate_request(body: Any) -> Tuple[Gen, Optional[float], Optional[int]]:
    """POST /api/generate -> (Gen, keep_alive, num_ctx).  ``raw``: the prompt as it is (/v1/completions);
    otherwise ``system`` + ``prompt`` as chat messages.  No prompt: a load request."""
    body = _top(body)
    if body.get("images"):
        raise core.no_vision("images")
    for key in ("template", "suffix", "context"):
        if body.get(key) not in (None, "", []):
            raise InvalidParams(f"{key} is not supported by oracd (the model's own chat template is used; "
                                f"use /api/chat for a conversation)", key)
    prompt = core.string("prompt", body.get("prompt")) or ""
    system = core.string("system", body.get("system"))
    raw = core.boolean("raw", body.get("raw"))
    if not prompt:
        gen = Gen()
    elif raw:
        if system:
            raise InvalidParams("system does not apply to a raw prompt: it carries its own template", "system")
        gen = Gen(prompt=prompt)
    else:
        gen = Gen(messages=([{"role": "system", "content": system}] if system else [])
                  + [{"role": "user", "content": prompt}])
    ka, num_ctx = _shared(body, gen)
    return gen, ka, num_ctx


# ---------------------------------------------------------------- the way back
def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def arguments(text: Any) -> Dict[str, Any]:
    """A tool call's arguments as an object (llama-server sends a JSON string)."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"_raw": str(text)}
    return value if isinstance(value, dict) else {"value": value}


def tool_calls(calls: Any) -> List[Dict[str, Any]]:
    out = []
    for c in calls or ():
        fn = c.get("function") or {}
        out.append({"function": {"name": fn.get("name") or "", "arguments": arguments(fn.get("arguments"))}})
    return out


def done_reason(finish: Optional[str]) -> str:
    return "length" if finish == "length" else "stop"


def durations(usage: Dict[str, Any], timings: Dict[str, Any], waited_s: float, total_s: float) -> Dict[str, Any]:
    """The final chunk's counts and durations (nanoseconds), from llama-server's usage and timings."""
    ns = 1_000_000
    return {"total_duration": int(total_s * 1e9), "load_duration": int(waited_s * 1e9),
            "prompt_eval_count": int(usage.get("prompt_tokens") or timings.get("prompt_n") or 0),
            "prompt_eval_duration": int(float(timings.get("prompt_ms") or 0) * ns),
            "eval_count": int(usage.get("completion_tokens") or timings.get("predicted_n") or 0),
            "eval_duration": int(float(timings.get("predicted_ms") or 0) * ns)}


class Stream:
    """Turns llama-server's stream events into Ollama chunks (chat: ``message``; generate: ``response``)."""

    def __init__(self, model: str, chat: bool):
        self.model = model
        self.chat = chat
        self.calls: Dict[int, Dict[str, Any]] = {}
        self.finish: Optional[str] = None
        self.usage: Dict[str, Any] = {}
        self.timings: Dict[str, Any] = {}

    def _piece(self, content: str = "", thinking: Optional[str] = None, calls: Any = None) -> Dict[str, Any]:
        if self.chat:
            msg: Dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = calls
            return {"model": self.model, "created_at": now(), "message": msg, "done": False}
        out: Dict[str, Any] = {"model": self.model, "created_at": now(), "response": content, "done": False}
        if thinking:
            out["thinking"] = thinking
        return out

    def feed(self, obj: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The Ollama chunks for one llama-server event (text and thinking at once; tool calls at the end)."""
        if obj.get("usage"):
            self.usage = obj["usage"]
        if obj.get("timings"):
            self.timings = obj["timings"]
        out = []
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or choice.get("text") or ""
            thinking = delta.get("reasoning_content")
            for frag in delta.get("tool_calls") or ():
                call = self.calls.setdefault(int(frag.get("index") or 0), {"name": "", "arguments": ""})
                fn = frag.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
            if text or thinking:
                out.append(self._piece(text, thinking))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def tail(self, waited_s: float, total_s: float) -> List[Dict[str, Any]]:
        """The last chunks: the tool calls (whole), then the final one with done, done_reason and durations."""
        out = []
        if self.calls:
            calls = [{"function": {"name": c["name"], "arguments": arguments(c["arguments"])}}
                     for _, c in sorted(self.calls.items())]
            out.append(self._piece(calls=calls))
        final = self._piece()
        final.update(done=True, done_reason=done_reason(self.finish),
                     **durations(self.usage, self.timings, waited_s, total_s))
        out.append(final)
        return out


def answer(data: Dict[str, Any], model: str, chat: bool, waited_s: float, total_s: float) -> Dict[str, Any]:
    """A non-streamed answer (stream: false) from llama-server's JSON."""
    choice = (data.get("choices") or [{}])[0]
    times = durations(data.get("usage") or {}, data.get("timings") or {}, waited_s, total_s)
    out: Dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        m = choice.get("message") or {}
        msg: Dict[str, Any] = {"role": "assistant", "content": m.get("content") or ""}
        if m.get("reasoning_content"):
            msg["thinking"] = m["reasoning_content"]
        if m.get("tool_calls"):
            msg["tool_calls"] = tool_calls(m["tool_calls"])
        out["message"] = msg
    else:
        out["response"] = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content") or ""
        thinking = (choice.get("message") or {}).get("reasoning_content")
        if thinking:
            out["thinking"] = thinking
    out.update(done=True, done_reason=done_reason(choice.get("finish_reason")), **times)
    return out


def loaded(model: str, chat: bool, reason: str = "load") -> Dict[str, Any]:
    """The answer to a request without messages or prompt: the model is loaded (Ollama's "load")."""
    out: Dict[str, Any] = {"model": model, "created_at": now(), "done": True, "done_reason": reason}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return out


# ---------------------------------------------------------------- models
def digest(item: Dict[str, Any]) -> str:
    """A stable digest without reading the file: sha256 of name, size and mtime (Ollama shows a content hash)."""
    return hashlib.sha256(f"{item['name']}:{item.get('size')}:{item.get('modified')}".encode()).hexdigest()


def details(item: Dict[str, Any]) -> Dict[str, Any]:
    family = item.get("architecture") or ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else [],
            "parameter_size": item.get("size_label") or "", "quantization_level": item.get("quantization") or ""}


def _iso(mtime: Any) -> str:
    try:
        return datetime.fromtimestamp(float(mtime), timezone.utc).isoformat().replace("+00:00", "Z")
    except (TypeError, ValueError):
        return now()


def tags(items: List[Dict[str, Any]], aliases: Dict[str, List[str]]) -> Dict[str, Any]:
    """GET /api/tags: every model under its file name, then under each of its profile's aliases."""
    out = []
    for it in items:
        for name in [it["name"], *aliases.get(it["name"], [])]:
            out.append({"name": name, "model": name, "modified_at": _iso(it.get("modified")),
                        "size": int(it.get("size") or 0), "digest": digest(it), "details": details(it)})
    return {"models": out}


def show(item: Dict[str, Any], capabilities: List[str], parameters: Dict[str, Any]) -> Dict[str, Any]:
    """POST /api/show: details and model_info from the GGUF header, capabilities, the profile's sampling."""
    arch = item.get("architecture") or "unknown"
    info: Dict[str, Any] = {"general.architecture": arch, "general.name": item.get("model_name") or item["name"],
                            "general.size_label": item.get("size_label") or ""}
    for key in ("context_length", "embedding_length", "block_count", "head_count", "head_count_kv"):
        if item.get(key) is not None:
            info[f"{arch}.{key}"] = item[key]
    params = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}" for k, v in parameters.items())
    return {"license": "", "modelfile": f"# served by oracd from {item['name']}\nFROM {item['name']}\n",
            "parameters": params, "template": "", "details": details(item), "model_info": info,
            "capabilities": capabilities, "modified_at": _iso(item.get("modified"))}


def ps_entry(item: Dict[str, Any], name: str, expires_at: str, context_length: int, vram: bool) -> Dict[str, Any]:
    size = int(item.get("size") or 0)
    return {"name": name, "model": name, "size": size, "digest": digest(item), "details": details(item),
            "expires_at": expires_at, "size_vram": size if vram else 0, "context_length": context_length}
