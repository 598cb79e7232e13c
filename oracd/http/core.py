"""The neutral core of the HTTP APIs: one request shape (``Gen``), its checks, and llama-server's body.

Why one core: Ollama's and OpenAI's APIs ask for the same thing in different
words.  Each API module (``openai.py``, ``ollama.py``) only translates its
words into a ``Gen``; the checks (types, ranges, message roles, tools, inline
grammars) and the merge with the model's profile live here once, pure and
unit-tested in milliseconds.

Security rule: nothing a request names is read from disk.  A grammar is the
built-in "json" or inline GBNF text; a schema is an inline object or the
built-in "command"; an image is refused (oracd starts llama-server without a
vision projector), so a ``file://`` or remote URL never reaches llama-server.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from oracd_protocol.errors import InvalidParams

from ..config import Config, Profile
from ..config.sampling import bounds
from ..api.constraints import request_grammar, request_schema

from ..config.settings import ServerConfig

#: the JSON-RPC side's cap (server.max_grammar_bytes's default); an HTTP body is capped as a whole too
MAX_GRAMMAR_BYTES = ServerConfig.max_grammar_bytes

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 16
THINK_LEVELS = ("low", "medium", "high")


@dataclass
class Gen:
    """One generation as either API asks for it (None: not sent, the profile or default decides)."""
    messages: Optional[List[Dict[str, Any]]] = None     # chat; or ...
    prompt: Optional[str] = None                        # ... a raw prompt (the caller's own template)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Any = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    max_tokens: Optional[int] = None
    stop: Optional[List[str]] = None
    seed: Optional[int] = None
    repeat_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    grammar: Optional[str] = None                       # resolved GBNF text
    json_schema: Optional[Dict[str, Any]] = None
    any_json: bool = False                              # format "json" / json_object: any object, llama-server's way
    compact_json: Optional[bool] = None                 # oracd's compact grammar for the schema (None: profile/default)
    fast_forward: Optional[bool] = None                 # oracd writes the object's forced text
    think: Union[None, bool, str] = None                # False / True / "low" | "medium" | "high"
    stream: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # already-checked llama-server fields


# ---------------------------------------------------------------- value checks (InvalidParams names the field)
def bad(name: str, what: str, value: Any) -> InvalidParams:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidParams(f"{name}: expected {what}, got {shown}", name)


def number(name: str, v: Any, lo: float, hi: float) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise bad(name, f"a number between {lo:g} and {hi:g}", v)
    return float(v)


def integer(name: str, v: Any, lo: int, hi: int) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise bad(name, f"an integer between {lo} and {hi}", v)
    return v


def boolean(name: str, v: Any, default: bool = False) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, "true or false", v)
    return v


def string(name: str, v: Any, allow_empty: bool = True) -> Optional[str]:
    if v is None:
        return None
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise bad(name, "a non-empty string" if not allow_empty else "a string", v)
    return v


def obj(name: str, v: Any) -> Optional[Dict[str, Any]]:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise bad(name, "an object", v)
    return v


def sampling(src: Dict[str, Any], gen: "Gen", prefix: str = "") -> None:
    """The sampling fields both APIs share, with one set of ranges; ``prefix`` names where they sit in the
    request (Ollama's ``options.``)."""
    gen.temperature = number(prefix + "temperature", src.get("temperature"), *bounds("temperature"))
    gen.top_p = number(prefix + "top_p", src.get("top_p"), *bounds("top_p"))
    gen.top_k = integer(prefix + "top_k", src.get("top_k"), *bounds("top_k"))
    gen.min_p = number(prefix + "min_p", src.get("min_p"), 0, 1)
    gen.seed = integer(prefix + "seed", src.get("seed"), -(2 ** 63), 2 ** 64 - 1)
    gen.stop = stop_list(prefix + "stop", src.get("stop"))
    gen.repeat_penalty = number(prefix + "repeat_penalty", src.get("repeat_penalty"), 0, 10)
    gen.presence_penalty = number(prefix + "presence_penalty", src.get("presence_penalty"), -2, 2)
    gen.frequency_penalty = number(prefix + "frequency_penalty", src.get("frequency_penalty"), -2, 2)


def json_flags(src: Dict[str, Any], gen: "Gen", prefix: str = "") -> None:
    """oracd's own ``compact_json`` / ``fast_forward`` (JSON-RPC ``generate``'s switches), where sent; ``prefix``
    as in ``sampling``.  Sent twice (Ollama's top level and ``options``), the later call wins."""
    for key in ("compact_json", "fast_forward"):
        if src.get(key) is not None:
            setattr(gen, key, boolean(prefix + key, src.get(key)))


def stop_list(name: str, v: Any) -> Optional[List[str]]:
    """A stop string or a list of them (at most 16, none empty)."""
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise bad(name, f"a non-empty string or a list of at most {MAX_STOP} of them", v)
    return list(items) or None


def inline_grammar(name: str, v: Any, max_bytes: int = MAX_GRAMMAR_BYTES) -> Optional[str]:
    """Built-in "json" or GBNF text; never a file: the JSON-RPC rule (``api/constraints.py``), one for both."""
    return None if v is None else request_grammar(v, max_bytes, name)


def inline_schema(name: str, v: Any, max_bytes: int = MAX_GRAMMAR_BYTES) -> Optional[Dict[str, Any]]:
    """An inline JSON schema object, or the built-in "command"; never a file (``api/constraints.py``)."""
    return None if v is None else request_schema(v, max_bytes, name)


def think_value(name: str, v: Any) -> Union[None, bool, str]:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v in THINK_LEVELS:
        return v
    raise bad(name, f"true, false or one of {', '.join(THINK_LEVELS)}", v)


# ---------------------------------------------------------------- messages and tools
def _content(where: str, v: Any, role: str) -> Optional[str]:
    """A message's content: a string, or a list of text parts (joined); images are refused."""
    if v is None:
        if role in ("assistant", "tool"):
            return None
        raise bad(f"{where}.content", "a string", v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        texts = []
        for i, part in enumerate(v):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad(f"{where}.content[{i}]", 'a part like {"type": "text", "text": "..."}', part)
            if part["type"] != "text":
                raise no_vision(f"{where}.content[{i}]")
            texts.append(string(f"{where}.content[{i}].text", part.get("text")) or "")
        return "".join(texts)
    raise bad(f"{where}.content", "a string or a list of text parts", v)


def no_vision(where: str) -> InvalidParams:
    return InvalidParams(f"{where}: images and other media are not supported: oracd serves text models "
                         f"(llama-server runs without a vision projector)", where)


def _tool_call(where: str, call: Any) -> Dict[str, Any]:
    """An assistant's earlier tool call; ``arguments`` as a JSON string (OpenAI) or an object (Ollama)."""
    fn = obj(f"{where}.function", call.get("function") if isinstance(call, dict) else None)
    if not isinstance(call, dict) or fn is None:
        raise bad(where, 'a tool call like {"function": {"name": ..., "arguments": ...}}', call)
    name = string(f"{where}.function.name", fn.get("name"), allow_empty=False)
    args = fn.get("arguments")
    if isinstance(args, dict):
        args = json.dumps(args)
    elif args is None:
        args = "{}"
    elif not isinstance(args, str):
        raise bad(f"{where}.function.arguments", "a JSON string or an object", args)
    out: Dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if call.get("id") is not None:
        out["id"] = string(f"{where}.id", call.get("id"))
    return out


def check_messages(v: Any, name: str = "messages", limit: int = 10_000) -> List[Dict[str, Any]]:
    """A clean copy of a message list: known roles and keys only, content as text, tool calls normalised."""
    if not isinstance(v, list) or not v:
        raise bad(name, "a non-empty list of messages", v)
    if len(v) > limit:
        raise bad(name, f"at most {limit} messages", f"{len(v)} messages")
    out = []
    for i, m in enumerate(v):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise bad(where, 'a message like {"role": "user", "content": "..."}', m)
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"one of {', '.join(ROLES)}", role)
        if m.get("images"):
            raise no_vision(f"{where}.images")
        msg: Dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _content(where, m.get("content"), role)}
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise bad(f"{where}.tool_calls", "a list, on an assistant message", calls)
            msg["tool_calls"] = [_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(calls)]
        if role == "assistant" and msg["content"] is None and "tool_calls" not in msg:
            msg["content"] = ""
        if role == "tool":
            if msg["content"] is None:
                raise bad(f"{where}.content", "the tool's result as a string", None)
            for key in ("tool_call_id", "name", "tool_name"):
                if m.get(key) is not None:
                    msg["name" if key == "tool_name" else key] = string(f"{where}.{key}", m.get(key))
        elif m.get("name") is not None:
            msg["name"] = string(f"{where}.name", m.get("name"))
        for key in ("reasoning_content", "thinking"):       # earlier reasoning, kept for templates that use it
            if m.get(key) is not None and role == "assistant":
                msg["reasoning_content"] = string(f"{where}.{key}", m.get(key))
        out.append(msg)
    return out


def check_tools(v: Any, name: str = "tools") -> Optional[List[Dict[str, Any]]]:
    """Function tools: {"type": "function", "function": {"name", "description"?, "parameters"?}}."""
    if v is None:
        return None
    if not isinstance(v, list):
        raise bad(name, "a list of tools", v)
    out = []
    for i, t in enumerate(v):
        where = f"{name}[{i}]"
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise bad(where, 'a tool like {"type": "function", "function": {"name": ...}}', t)
        clean: Dict[str, Any] = {"name": string(f"{where}.function.name", fn.get("name"), allow_empty=False)}
        if fn.get("description") is not None:
            clean["description"] = string(f"{where}.function.description", fn.get("description"))
        if fn.get("parameters") is not None:
            clean["parameters"] = obj(f"{where}.function.parameters", fn.get("parameters"))
        out.append({"type": "function", "function": clean})
    return out or None


def check_tool_choice(v: Any, name: str = "tool_choice") -> Any:
    if v is None or v in ("none", "auto", "required"):
        return v
    fn = v.get("function") if isinstance(v, dict) else None
    if isinstance(fn, dict) and v.get("type") == "function" and isinstance(fn.get("name"), str):
        return {"type": "function", "function": {"name": fn["name"]}}
    raise bad(name, '"none", "auto", "required" or {"type": "function", "function": {"name": ...}}', v)


# ---------------------------------------------------------------- the body for llama-server
def pick(sent: Any, profile: Any, default: Any) -> Any:
    if sent is not None:
        return sent
    return profile if profile is not None else default


def llama_body(gen: Gen, prof: Profile, cfg: Config) -> Dict[str, Any]:
    """llama-server's body (``/v1/chat/completions`` for messages, ``/v1/completions`` for a raw prompt).

    What the request sends wins, then the model's profile (sampling, max_tokens,
    stop, think), then the defaults.  Choice: the profile's system prompt and
    output constraint are ORAC's command-parser role and apply on JSON-RPC
    ``generate`` only; an HTTP client states its own messages and format.
    """
    if gen.grammar is not None and gen.json_schema is not None:
        raise InvalidParams("a grammar and a JSON schema (format / response_format) are mutually exclusive",
                            "grammar")
    body: Dict[str, Any] = {
        "temperature": pick(gen.temperature, prof.temperature, 0.7),
        "top_p": pick(gen.top_p, prof.top_p, 0.7),
        "top_k": pick(gen.top_k, prof.top_k, 40),
        "max_tokens": pick(gen.max_tokens, prof.max_tokens, cfg.llama.default_max_tokens),
        "cache_prompt": True,
    }
    stop = gen.stop if gen.stop is not None else (list(prof.stop) if prof.stop else None)
    if stop:
        body["stop"] = stop
    for key in ("seed", "repeat_penalty", "presence_penalty", "frequency_penalty", "min_p"):
        if getattr(gen, key) is not None:
            body[key] = getattr(gen, key)
    if gen.grammar is not None:
        body["grammar"] = gen.grammar
    if gen.json_schema is not None:
        body["json_schema"] = gen.json_schema
    if gen.prompt is not None:
        body["prompt"] = gen.prompt
        return {**body, **gen.extra}
    body["messages"] = gen.messages
    if gen.tools:
        body["tools"] = gen.tools
    if gen.tool_choice is not None:
        body["tool_choice"] = gen.tool_choice
    think = gen.think if gen.think is not None else (None if prof.think else False)
    if think is False:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    elif think is not None:
        body["chat_template_kwargs"] = {"enable_thinking": True}
        if isinstance(think, str):
            body["reasoning_effort"] = think
    return {**body, **gen.extra}


def assemble(events: List[Dict[str, Any]], chat: bool) -> Dict[str, Any]:
    """One non-streamed answer (OpenAI's shape, as llama-server gives it) from its streamed events.

    Why: a long generation is fetched streamed even when the client wants one answer, as JSON-RPC's
    ``generate`` does above ``stream_above_tokens``: llama-server stops a streamed generation the
    moment the connection closes, so a client that hangs up or a deadline frees the slot at once.
    """
    out: Dict[str, Any] = {}
    text: List[str] = []
    reasoning: List[str] = []
    calls: Dict[int, Dict[str, Any]] = {}
    finish = None
    for e in events:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in e:
                out.setdefault(key, e[key])
        for key in ("usage", "timings"):
            if e.get(key):
                out[key] = e[key]
        for choice in e.get("choices") or ():
            finish = choice.get("finish_reason") or finish
            if not chat:
                text.append(choice.get("text") or "")
                continue
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for frag in delta.get("tool_calls") or ():
                call = calls.setdefault(int(frag.get("index") or 0),
                                        {"type": "function", "function": {"name": "", "arguments": ""}})
                if frag.get("id"):
                    call["id"] = frag["id"]
                fn = frag.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""
    if not chat:
        out.update(object="text_completion", choices=[{"index": 0, "text": "".join(text), "finish_reason": finish}])
        return out
    message: Dict[str, Any] = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    out.update(object="chat.completion", choices=[{"index": 0, "message": message, "finish_reason": finish}])
    return out
