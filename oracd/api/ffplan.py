"""Fast-forward plan for a JSON object: which text oracd writes itself and which the model samples.

Why: in a command object most tokens are forced by the schema (braces, keys,
quotes, colons, commas), yet each costs a decode step when the model samples it.
For an object whose properties are all required (so their order is fixed), oracd
appends each forced span to the prompt and the model samples only the values.

The plan splits the compact answer into ``forced[0] value[0] forced[1] ... forced[n]``:

- a string-only value (type string, or an enum/const of strings): its quotes are
  forced (``{"device":"`` ... ``","action":"``), the model samples the characters;
- any other value (``["string", "null"]``, a number, ...): the forced span stops
  after the key's name and the model samples ``":`` too, because BPE tokenizers
  merge ``":`` with what follows (SmolLM2: ``":"`` before a string, ``":`` before null).

Step i samples under the compact grammar of everything from value i to the end
(``step_grammar``), so the model chooses among exactly the tokens compact sampling
allows, and stops at the first character of forced[i+1] (``stop``).  Pure: no I/O.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .jsongrammar import Rules, Unsupported, dump, literal, string_content, string_only, value_expr

_TRAILING_PUNCT = re.compile(r"[^A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Value:
    """One sampled value: ``lead`` is forced text the model samples first (``":``), ``expr`` its grammar."""
    lead: str
    expr: str
    quoted: bool          # string-only: the quotes are in the forced spans, the model samples the characters


@dataclass(frozen=True)
class Plan:
    forced: Tuple[str, ...]     # n + 1 spans
    values: Tuple[Value, ...]   # n values
    rules: Tuple[Tuple[str, str], ...]   # shared GBNF rules (char, integral-part ...)

    def stop(self, i: int) -> str:
        """Where value i ends: the first character of the span after it (never inside a complete value)."""
        return self.forced[i + 1][:1]

    def step_grammar(self, i: int) -> str:
        """The compact grammar of the answer from value i (with its lead) to the end."""
        parts: List[str] = []
        for j in range(i, len(self.values)):
            v = self.values[j]
            if v.lead:
                parts.append(literal(v.lead))
            parts.append(v.expr)
            if self.forced[j + 1]:
                parts.append(literal(self.forced[j + 1]))
        lines = ["root ::= " + " ".join(parts)] + [f"{k} ::= {body}" for k, body in self.rules]
        return "\n".join(lines) + "\n"

    def value_complete(self, i: int, content: str) -> Optional[str]:
        """The value text sampled in step i (``content``, cut at the stop), or None when the stop fired inside
        the value (a ``\\"`` in a string, a ``,`` in a quoted string): then the step cannot be trusted."""
        v = self.values[i]
        if not content.startswith(v.lead):
            return None
        body = content[len(v.lead):]
        try:
            json.loads('"' + body + '"' if v.quoted else body)
        except ValueError:
            return None
        if v.quoted and (len(body) - len(body.rstrip("\\"))) % 2:
            return None
        return body


def _segments(schema: Any, rules: Rules, name: str, out: List[Any], depth: int = 0) -> None:
    """Flatten an all-required object into literal text and leaf value schemas, in answer order."""
    props, required = schema.get("properties"), schema.get("required", [])
    if depth > 8 or not isinstance(props, dict) or not props:
        raise Unsupported("fast-forward needs an object with properties")
    if not isinstance(required, list) or set(props) - set(required):
        raise Unsupported("fast-forward needs every property required (their order is then fixed)")
    if schema.get("additionalProperties", False) is not False:
        raise Unsupported("fast-forward needs additionalProperties false")
    if set(schema) - {"type", "properties", "required", "additionalProperties", "title", "description"}:
        raise Unsupported("fast-forward: unsupported object keywords")
    out.append("{")
    for n, (key, sub) in enumerate(props.items()):
        out.append(("," if n else "") + dump(key) + ":")
        if isinstance(sub, dict) and sub.get("type") == "object" and "enum" not in sub and "const" not in sub:
            _segments(sub, rules, f"{name}-{key}", out, depth + 1)
        else:
            out.append((f"{name}-{key}", sub))
    out.append("}")


def make_plan(schema: Any) -> Plan:
    """The fast-forward plan for ``schema`` (raises Unsupported: then plain compact sampling)."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise Unsupported("fast-forward applies to objects")
    rules = Rules()
    value_expr(schema, "", Rules())            # the whole schema must compile (same subset)
    segs: List[Any] = []
    _segments(schema, rules, "", segs)
    forced: List[str] = [""]
    values: List[Value] = []
    for seg in segs:
        if isinstance(seg, str):
            forced[-1] += seg
            continue
        name, sub = seg
        if string_only(sub):
            forced[-1] += '"'
            if "enum" in sub or "const" in sub:
                vals = sub["enum"] if "enum" in sub else [sub["const"]]
                expr = "(" + " | ".join(literal(dump(v)[1:-1]) for v in vals) + ")"
            else:
                expr = string_content(sub, rules)
            values.append(Value("", expr, True))
            forced.append('"')
        else:
            lead = _TRAILING_PUNCT.search(forced[-1]).group(0)   # type: ignore[union-attr]
            forced[-1] = forced[-1][:len(forced[-1]) - len(lead)]
            values.append(Value(lead, value_expr(sub, name, rules), False))
            forced.append("")
    plan = Plan(tuple(forced), tuple(values), tuple(rules.rules.items()))
    for i, v in enumerate(values):
        stop = plan.stop(i)
        if not stop or stop in v.lead:
            raise Unsupported("fast-forward: no clean stop after a value")
    return plan


def try_plan(schema: Any) -> Optional[Plan]:
    try:
        return make_plan(schema)
    except Unsupported:
        return None


Pieces = List[Tuple[int, bytes]]


def kept(pieces: Pieces, content: bytes) -> Tuple[int, int]:
    """How many of a step's sampled tokens lie wholly inside its text (cut at the stop), and their bytes.

    The token after them crossed the value's end into the next forced span (SmolLM2's ``",``): it is
    dropped, and the bytes of it that belong to the value are appended again with the forced span.
    """
    n = size = 0
    for _, piece in pieces:
        # an empty piece: the token that completed the stop, as a stream reports it
        if not piece or size + len(piece) > len(content) or content[size:size + len(piece)] != piece:
            break
        n += 1
        size += len(piece)
    return n, size


def learn(plan: Plan, pieces: Pieces) -> Optional[Dict[bytes, List[int]]]:
    """The model's own token ids for each forced span, read off one compact answer (its tokens and pieces).

    Why not llama-server's tokenization of the span: a model sampling under a grammar does not write
    canonical tokens (SmolLM2 writes ``{`` ``"`` ``device`` ``":`` ``"``, never the canonical ``{"`` ``device``
    ``":"``), and fed the canonical ones it loses its footing (measured: ``"device":"1234567890"``).
    Replays fast-forward's steps over the answer: where a step would stop, which tokens it keeps, what it
    then inserts and which tokens the model used for that.  None when a span does not begin and end on a
    token boundary (the model merges it with a value): fast-forward cannot reproduce that answer.
    """
    pieces = [p for p in pieces if p[1]]      # an empty piece: the end-of-generation token
    ends, size = {}, 0
    for n, (_, piece) in enumerate(pieces):
        size += len(piece)
        ends[size] = n + 1                    # byte offset -> number of tokens before it
    answer = b"".join(p for _, p in pieces)
    ids = [t for t, _ in pieces]
    first = plan.forced[0].encode()
    if not answer.startswith(first) or len(first) not in ends:
        return None
    spans: Dict[bytes, List[int]] = {first: ids[:ends[len(first)]]}
    at = len(first)
    for i in range(len(plan.values)):
        stop = answer.find(plan.stop(i).encode(), at)
        if stop < 0:
            return None
        content = answer[at:stop]
        try:
            if plan.value_complete(i, content.decode()) is None:
                return None
        except UnicodeDecodeError:
            return None
        start = ends.get(at, 0) if at else 0
        n, size = kept(pieces[start:], content)
        cut = at + size
        span = plan.forced[i + 1].encode()
        end = stop + len(span)
        if answer[stop:end] != span or end not in ends or (cut and cut not in ends):
            return None
        spans[answer[cut:end]] = ids[ends.get(cut, 0):ends[end]]
        at = end
    return spans
