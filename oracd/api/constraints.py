"""What a ``generate`` request may send as ``grammar`` / ``json_schema``, and its text params: checked, pure.

Why: a request that could name a file made oracd read it (any file its uid
could read, a FIFO that froze the loop, a 20 MB JSON).  A request now sends
only a built-in name or the constraint itself, inline and capped in size;
nothing it names is ever opened.  Grammar files stay a config feature
(profiles, read when the config is loaded).  A path is refused with one
message whatever the path is, so the answer says nothing about the disk.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Optional, Tuple

from oracd_protocol.errors import InvalidParams

from ..config.profiles import BUILTIN_GRAMMARS, BUILTIN_SCHEMAS

_PATH_HINTS = (".gbnf", ".json")


def _bad(param: str, message: str, reason: str, **extra: Any) -> InvalidParams:
    return InvalidParams(f"{param}: {message}", {"param": param, "reason": reason, **extra})


def looks_like_path(text: str) -> bool:
    """A file reference rather than GBNF text: one line with a path separator or a grammar/schema suffix."""
    line = text.strip()
    return "\n" not in line and ("/" in line or "\\" in line or line.endswith(_PATH_HINTS) or line.startswith("~"))


def _no_path(param: str) -> InvalidParams:
    return _bad(param, "file paths are not accepted in a request (oracd reads no file a client names); send the "
                "text inline, or a built-in name, or set a file in the model's profile", "path_not_allowed")


def request_grammar(value: Any, max_bytes: int, param: str = "grammar") -> str:
    """GBNF text for llama-server from a request's ``grammar``: a built-in name ("json") or inline GBNF.
    ``param``: the field's name in the request (the HTTP APIs call it ``options.grammar``...)."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(param, "expected a built-in name (json) or GBNF text", "bad_type")
    if "\x00" in value:
        raise _bad(param, "contains a NUL byte", "nul_byte")
    if value in BUILTIN_GRAMMARS:
        return BUILTIN_GRAMMARS[value]
    if value in BUILTIN_SCHEMAS:
        raise _bad(param, f"{value!r} is a built-in json_schema; send json_schema: {value!r}", "schema_name")
    if "::=" not in value:
        if looks_like_path(value):
            raise _no_path(param)
        raise _bad(param, f"not a built-in grammar ({', '.join(BUILTIN_GRAMMARS)}) or GBNF text "
                   "(no rule with ::=)", "not_gbnf")
    if "\n" not in value.strip() and value.strip().endswith(_PATH_HINTS):    # "x::=y.gbnf": still a file name
        raise _no_path(param)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _bad(param, f"{size} bytes is more than server.max_grammar_bytes ({max_bytes})", "too_large",
                   limit=max_bytes)
    return value


def request_schema(value: Any, max_bytes: int, param: str = "json_schema") -> Dict[str, Any]:
    """A JSON schema for llama-server from a request's ``json_schema``: a built-in name ("command") or an
    inline object.  ``param``: the field's name in the request (``format``, ``response_format...``)."""
    if isinstance(value, str):
        if value in BUILTIN_SCHEMAS:
            return BUILTIN_SCHEMAS[value]
        if "\x00" in value:
            raise _bad(param, "contains a NUL byte", "nul_byte")
        if looks_like_path(value):
            raise _no_path(param)
        raise _bad(param, f"not a built-in schema ({', '.join(BUILTIN_SCHEMAS)}); send the schema as an "
                   "object", "not_schema")
    if not isinstance(value, dict):
        raise _bad(param, "expected a built-in name (command) or a schema object", "bad_type")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _bad(param, f"{size} bytes is more than server.max_grammar_bytes ({max_bytes})", "too_large",
                   limit=max_bytes)
    return value


def request_constraint(grammar: Any, json_schema: Any, max_bytes: int) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """(grammar text, schema) a request sent, either one or neither; both is an error."""
    if grammar is not None and json_schema is not None:
        raise _bad("grammar", "grammar and json_schema are mutually exclusive", "both_constraints")
    if grammar is not None:
        return request_grammar(grammar, max_bytes), None
    if json_schema is not None:
        return None, request_schema(json_schema, max_bytes)
    return None, None


def check_texts(named: Iterable[Tuple[str, Any]]) -> None:
    """Text params that go to llama-server carry no NUL byte (C strings there end at one): -32602 naming it."""
    for name, value in named:
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, str) and "\x00" in v:
                raise _bad(name, "contains a NUL byte", "nul_byte")
