"""Per-model profiles: prompt, sampling, grammar and llama-server load options for each model file.

Why: each small model needs its own system prompt and sampling to turn spoken
commands into JSON.  A profile fills in what a request leaves out; what a
request sends wins.  Profiles live in ``[profiles."<model file>.gguf"]`` tables
of the config, or in a separate file named by ``llama.profiles_file`` (same
format; the main config wins on a clash).  Load options (ctx_size, n_gpu_layers,
...) override ``[llama]`` for that model only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

# ORAC's command JSON (shared with the eval, so it lives in the protocol package).
from oracd_protocol.schemas import COMMAND_SCHEMA

from .sampling import RANGES
from ..safe_read import read_capped, real_path
from .toml import tomllib
from .values import rpc_workers as check_rpc_workers, auto_or_bool, tensor_split as check_tensor_split

# Any JSON value whose top level is an object (llama.cpp's own json.gbnf, condensed).
JSON_GRAMMAR = r'''root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
'''
BUILTIN_GRAMMARS = {"json": JSON_GRAMMAR}
BUILTIN_SCHEMAS = {"command": COMMAND_SCHEMA}
PROFILE_FILE_MAX_BYTES = 4 * 1024 * 1024    # a .gbnf / .json a profile names (ORAC's grammars are a few KB)
LOAD_KEYS = ("ctx_size", "n_gpu_layers", "batch_size", "ubatch_size", "threads", "extra_args", "chat_template",
             "rpc_workers", "tensor_split", "cache_ram_mb", "swa_full")


class ProfileError(ValueError):
    """A bad profile; the message names the key (profiles."x.gguf".temperature: ...)."""


@dataclass(frozen=True)
class Profile:
    model: str
    system_prompt: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_tokens: Optional[int] = None
    stop: Optional[Tuple[str, ...]] = None
    grammar: Optional[str] = None          # GBNF text (resolved from "json", "command" or a file)
    json_schema: Optional[Dict[str, Any]] = None
    think: bool = True                      # false: "/no_think" in the system prompt, reasoning dropped
    chat_template: Optional[str] = None     # a llama.cpp built-in template name or a .jinja file path
    ctx_size: Optional[int] = None
    n_gpu_layers: Optional[int] = None
    batch_size: Optional[int] = None
    ubatch_size: Optional[int] = None
    threads: Optional[int] = None
    extra_args: Optional[Tuple[str, ...]] = None
    rpc_workers: Optional[Tuple[str, ...]] = None   # overrides [llama] rpc_workers; [] = this model stays local
    tensor_split: Optional[Tuple[float, ...]] = None
    cache_ram_mb: Optional[int] = None      # overrides [llama] cache_ram_mb (llama-server --cache-ram)
    swa_full: Optional[Any] = None          # overrides [llama] swa_full: "auto", true or false
    prompt_format: str = "chat"             # "raw": prompts go to /completion as they are (the caller's template)
    aliases: Tuple[str, ...] = ()           # more names for the model on the HTTP APIs (e.g. "qwen3:0.6b")
    compact_json: Optional[bool] = None     # json_schema answers without optional whitespace (default: "command")
    fast_forward: Optional[bool] = None     # oracd writes a JSON object's forced text (default: "command")
    source: Dict[str, Any] = field(default_factory=dict, compare=False)   # as written, for status

    def load_options(self) -> Tuple[Any, ...]:
        """What the llama-server command line depends on: a change needs a restart."""
        return tuple(getattr(self, k) for k in LOAD_KEYS)

    def effective_system_prompt(self) -> Optional[str]:
        sp = self.system_prompt
        if not self.think:
            return f"{sp}\n/no_think" if sp else "/no_think"
        return sp


_NUM = {k: RANGES[k] for k in ("temperature", "top_p")}
_INT_RANGE = {k: RANGES[k] for k in ("top_k", "max_tokens")}
_INT = {"ctx_size": 0, "n_gpu_layers": -1, "batch_size": 0, "ubatch_size": 0,
        "threads": 0, "cache_ram_mb": 0}


def _parse(model: str, table: Any, base: Path) -> Profile:
    where = f'profiles."{model}"'
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: expected a table, got {table!r}")
    known = {f.name for f in fields(Profile)} - {"model", "source"}
    values: Dict[str, Any] = {}
    for key, v in table.items():
        k = f"{where}.{key}"
        if key not in known:
            raise ProfileError(f"{k}: unknown key (known: {', '.join(sorted(known))})")
        if key in _NUM:
            lo, hi = _NUM[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not lo <= v <= hi:
                raise ProfileError(f"{k}: expected a number between {lo:g} and {hi:g}, got {v!r}")
            v = float(v)
        elif key in _INT_RANGE:
            lo, hi = _INT_RANGE[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ProfileError(f"{k}: expected an integer between {lo} and {hi}, got {v!r}")
        elif key in _INT:
            if isinstance(v, bool) or not isinstance(v, int) or v < _INT[key]:
                raise ProfileError(f"{k}: expected an integer >= {_INT[key]}, got {v!r}")
        elif key in ("system_prompt", "chat_template"):
            if not isinstance(v, str) or not v.strip():
                raise ProfileError(f"{k}: expected a non-empty string, got {v!r}")
            if key == "chat_template" and ("/" in v or v.endswith(".jinja")):
                p = Path(v) if Path(v).is_absolute() else base / v
                if not p.is_file():
                    raise ProfileError(f"{k}: template file not found: {p}")
                v = str(p)
        elif key in ("stop", "extra_args"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ProfileError(f"{k}: expected a list of strings, got {v!r}")
            v = tuple(v)
        elif key in ("rpc_workers", "tensor_split"):
            try:
                v = (check_rpc_workers if key == "rpc_workers" else check_tensor_split)(k, v)
            except ValueError as exc:
                raise ProfileError(str(exc)) from None
        elif key == "swa_full":
            try:
                v = auto_or_bool(k, v)
            except ValueError as exc:
                raise ProfileError(str(exc)) from None
        elif key == "aliases":
            if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() and "/" not in x and "\0" not in x
                                                  and not x.endswith(".gguf") for x in v):
                raise ProfileError(f'{k}: expected a list of names like "qwen3:0.6b" (no "/", not ending in .gguf), '
                                   f"got {v!r}")
            v = tuple(v)
        elif key == "prompt_format":
            if v not in ("chat", "raw"):
                raise ProfileError(f'{k}: expected "chat" or "raw", got {v!r}')
        elif key in ("think", "compact_json", "fast_forward"):
            if not isinstance(v, bool):
                raise ProfileError(f"{k}: expected true or false, got {v!r}")
        elif key == "grammar":
            v = resolve_grammar(v, base, k)
        elif key == "json_schema":
            v = resolve_schema(v, base, k)
        values[key] = v
    if values.get("grammar") and values.get("json_schema"):
        raise ProfileError(f"{where}: grammar and json_schema are mutually exclusive")
    if values.get("prompt_format") == "raw" and (values.get("system_prompt") or "think" in values):
        raise ProfileError(f"{where}: system_prompt and think do not apply with prompt_format = \"raw\" "
                           "(a raw prompt carries its own template)")
    return Profile(model=model, source=dict(table), **values)


def resolve_grammar(v: Any, base: Path, key: str = "grammar") -> str:
    """A profile's grammar: a built-in name ("json"; "command" is a schema), a .gbnf file, or GBNF text.
    Config only: a request's grammar never names a file (``api/constraints.py``)."""
    if not isinstance(v, str) or not v.strip():
        raise ProfileError(f"{key}: expected a built-in name, a .gbnf path or GBNF text, got {v!r}")
    if v in BUILTIN_GRAMMARS:
        return BUILTIN_GRAMMARS[v]
    if v in BUILTIN_SCHEMAS:
        raise ProfileError(f"{key}: {v!r} is a built-in json_schema; use json_schema = {v!r}")
    if v.endswith(".gbnf"):
        p = Path(v) if Path(v).is_absolute() else base / v
        try:     # operator's file, read at config load: still never a FIFO, never unbounded (safe_read)
            return read_capped(real_path(p), PROFILE_FILE_MAX_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{key}: cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None
    if "::=" not in v:
        raise ProfileError(f"{key}: not a built-in grammar ({', '.join(BUILTIN_GRAMMARS)}), .gbnf file or GBNF")
    return v


def resolve_schema(v: Any, base: Path, key: str = "json_schema") -> Dict[str, Any]:
    """A profile's schema: a built-in name ("command"), a .json file, or a JSON schema table (config only)."""
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[v]
    if isinstance(v, str) and v.endswith(".json"):
        p = Path(v) if Path(v).is_absolute() else base / v
        try:
            return json.loads(read_capped(real_path(p), PROFILE_FILE_MAX_BYTES))
        except (OSError, ValueError) as exc:
            raise ProfileError(f"{key}: cannot read schema {p}: {exc}") from None
    raise ProfileError(f"{key}: expected a built-in schema ({', '.join(BUILTIN_SCHEMAS)}), a .json path or a table")


def parse_profiles(tables: Any, base: Path) -> Dict[str, Profile]:
    if not isinstance(tables, dict):
        raise ProfileError(f"profiles: expected tables keyed by model file name, got {tables!r}")
    out = {}
    for model, table in tables.items():
        if "/" in model or not model.endswith(".gguf"):
            raise ProfileError(f'profiles."{model}": key must be a model file name ending in .gguf')
        out[model] = _parse(model, table, base)
    return out


def load_profiles_file(path: Path) -> Dict[str, Profile]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ProfileError(f"llama.profiles_file: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from None
    unknown = set(data) - {"profiles"}
    if unknown:
        raise ProfileError(f"{path}: unknown section(s) {', '.join(sorted(unknown))} (only [profiles.\"x.gguf\"])")
    return parse_profiles(data.get("profiles", {}), path.parent)
