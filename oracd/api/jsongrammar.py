"""JSON schema -> compact GBNF: the values llama.cpp's own converter accepts, without optional whitespace.

Why: with ``json_schema`` llama-server derives a grammar that lets the model put
spaces and newlines between tokens (common/json-schema-to-grammar.cpp: its
``space`` rule), and a small model spends decode steps on them.  The grammar built
here accepts exactly the same JSON values as that converter for the subset below,
written one way only: no whitespace outside strings (json.dumps(separators=(",", ":"))).

Subset: objects with properties / required / additionalProperties false (absent
counts as false when properties are given, as in llama.cpp), strings with
minLength/maxLength, enum and const (of strings, integers, booleans, null),
number, integer, boolean, null, type lists (["string", "null"]), nested objects
and arrays of one item schema.  Anything else raises ``Unsupported``; the caller
then sends the schema to llama-server as it is.  Pure: no I/O.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

# llama.cpp's PRIMITIVE_RULES, same text (string escapes and numbers accept the same values)
CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})'
PRIMITIVES = {
    "char": CHAR,
    "integral-part": "[0] | [1-9] [0-9]{0,15}",
    "decimal-part": "[0-9]{1,16}",
}
NUMBER = '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?'
INTEGER = '("-"? integral-part)'
# keys that only annotate a schema: they do not change what it accepts
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
_KNOWN = {"type", "properties", "required", "additionalProperties", "maxLength", "minLength", "enum", "const",
          "items", "nullable"} | ANNOTATIONS
_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
_MAX_DEPTH = 16


class Unsupported(ValueError):
    """The schema uses something this compiler does not translate: send it to llama-server as it is."""


def literal(text: str) -> str:
    """A GBNF string literal for ``text`` (llama.cpp's format_literal)."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def dump(value: Any) -> str:
    """A JSON value as the compact grammar writes it (nlohmann's dump(): no spaces, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def string_only(schema: Any) -> bool:
    """Is every value this schema accepts a JSON string?  (Fast-forward forces its quotes.)"""
    if not isinstance(schema, dict):
        return False
    for key in ("const", "enum"):
        if key in schema:
            vals = [schema[key]] if key == "const" else schema[key]
            return isinstance(vals, list) and bool(vals) and all(isinstance(v, str) for v in vals)
    return schema.get("type") == "string"


class Rules:
    """The rules of one grammar: named, deduplicated by content."""

    def __init__(self) -> None:
        self.rules: Dict[str, str] = {}

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "r"
        if name in ("root", *PRIMITIVES):
            name += "-"
        key, i = name, 0
        while key in self.rules and self.rules[key] != body:
            i += 1
            key = f"{name}{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        self.rules[name] = PRIMITIVES[name]
        return name

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"] + [f"{k} ::= {v}" for k, v in self.rules.items()]
        return "\n".join(lines) + "\n"


def value_expr(schema: Any, name: str, rules: Rules, depth: int = 0) -> str:
    """A GBNF expression for every value ``schema`` accepts, compactly written (Unsupported otherwise)."""
    if depth > _MAX_DEPTH:
        raise Unsupported("schema nested too deeply")
    if not isinstance(schema, dict):
        raise Unsupported("a schema must be an object")
    unknown = set(schema) - _KNOWN
    if unknown:
        raise Unsupported(f"keyword(s) {', '.join(sorted(unknown))}")
    if schema.get("nullable"):
        raise Unsupported("nullable")
    kind = schema.get("type")
    if isinstance(kind, list):          # {"type": [a, b], ...} is anyOf of each type with the other keys
        if not kind:
            raise Unsupported("empty type list")
        alts = [value_expr(dict(schema, type=t), f"{name}-{t}", rules, depth + 1) for t in kind]
        return "(" + " | ".join(alts) + ")"
    if "const" in schema:
        return _constants([schema["const"]])
    if "enum" in schema:
        vals = schema["enum"]
        if not isinstance(vals, list) or not vals:
            raise Unsupported("enum must be a non-empty list")
        return _constants(vals)
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        elif "maxLength" in schema or "minLength" in schema:
            kind = "string"
        else:
            raise Unsupported("a schema without a type accepts any value")
    if kind == "string":
        return _string(schema, rules)
    if kind == "number":
        rules.primitive("integral-part"), rules.primitive("decimal-part")
        return "(" + NUMBER + ")"
    if kind == "integer":
        rules.primitive("integral-part")
        return INTEGER
    if kind == "boolean":
        return '("true" | "false")'
    if kind == "null":
        return '"null"'
    if kind == "object":
        return rules.add(name or "object", object_body(schema, name, rules, depth))
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            raise Unsupported("an array needs one item schema")
        item = rules.add(f"{name}-item", value_expr(items, f"{name}-item", rules, depth + 1))
        return rules.add(name or "array", f'"[" ({item} ("," {item})*)? "]"')
    raise Unsupported(f"type {kind!r}")


def _constants(values: List[Any]) -> str:
    for v in values:
        if isinstance(v, float) or isinstance(v, (dict, list)):
            raise Unsupported("enum/const values must be strings, integers, booleans or null")
    return "(" + " | ".join(literal(dump(v)) for v in values) + ")"


MAX_LENGTH = 4096       # GBNF expands char{m,n} into rules: larger bounds are left to llama-server


def _length(schema: Dict[str, Any], key: str, default: Optional[int]) -> Optional[int]:
    v = schema.get(key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise Unsupported(f"{key} must be a non-negative integer")
    if v is not None and v > MAX_LENGTH:
        raise Unsupported(f"{key} above {MAX_LENGTH}")
    return v


def string_content(schema: Dict[str, Any], rules: Rules) -> str:
    """A string's characters, without its quotes (fast-forward forces the quotes)."""
    lo, hi = _length(schema, "minLength", 0), _length(schema, "maxLength", None)
    char = rules.primitive("char")
    if hi is None:
        return f"{char}{{{lo},}}" if lo else f"{char}*"
    if hi < (lo or 0):
        raise Unsupported("maxLength below minLength")
    return f"{char}{{{lo},{hi}}}"


def _string(schema: Dict[str, Any], rules: Rules) -> str:
    return '"\\"" ' + string_content(schema, rules) + ' "\\""'


def object_body(schema: Dict[str, Any], name: str, rules: Rules, depth: int) -> str:
    """``{`` required keys in property order, then the optional ones in order (any subset), ``}``."""
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise Unsupported("properties must be an object")
    if schema.get("additionalProperties", False) is not False:
        raise Unsupported("additionalProperties other than false")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise Unsupported("required must be a list of names")
    kvs: Dict[str, str] = {}
    for key, sub in props.items():
        expr = value_expr(sub, f"{name}-{key}", rules, depth + 1)
        kvs[key] = rules.add(f"{name}-{key}-kv", f"{literal(dump(key) + ':')} {expr}")
    req = [kvs[k] for k in props if k in required]
    opt = [kvs[k] for k in props if k not in required]
    if not opt:
        return '"{" ' + ' "," '.join(req) + ' "}"' if req else '"{" "}"'
    # chain_i: opt_i ("," chain_{i+1})? | chain_{i+1} -- any subset of the optional keys, in order
    chain = rules.add(f"{name}-opt{len(opt) - 1}", opt[-1])
    for i in range(len(opt) - 2, -1, -1):
        chain = rules.add(f"{name}-opt{i}", f'{opt[i]} ("," {chain})? | {chain}')
    if req:
        return '"{" ' + ' "," '.join(req) + f' ("," {chain})? "}}"'
    return f'"{{" ({chain})? "}}"'


MAX_SCHEMA_CHARS = 64 * 1024


def compile_compact(schema: Any) -> str:
    """The compact GBNF for ``schema`` (raises Unsupported).  A schema over 64 KiB (as JSON) is left to
    llama-server: compiling runs on the event loop, and no command schema comes near it."""
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise Unsupported("schema too large to compile on the request path")
    rules = Rules()
    return rules.text(value_expr(schema, "", rules))


def try_compile(schema: Any) -> Optional[str]:
    try:
        return compile_compact(schema)
    except Unsupported:
        return None
