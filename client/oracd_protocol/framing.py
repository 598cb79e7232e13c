"""One JSON text per line: splitting a byte stream into lines, and the JSON rules for a line.

Why one framer for everyone: the daemon reads requests and every client reads
answers the same way, including what happens to a line that is too long (one
"too long" marker, then the stream resynchronises at the next newline, so the
connection survives).  ``NewlineFramer`` is built for the daemon's hot path:
bytes are appended to one ``bytearray`` and a partial line is never scanned twice.

``encode`` writes what oracd puts on the wire (compact UTF-8 JSON plus ``\\n``);
``decode_strict`` applies the daemon's rules to a request line (strict UTF-8,
RFC 8259 numbers only, nesting at most ``MAX_DEPTH``) and says which rule broke,
because the daemon answers -32700 for "not JSON" and -32600 for "too deep".
"""
from __future__ import annotations

import json
from typing import Any, List, Union

from .errors import INVALID_REQUEST, PARSE_ERROR

#: Deepest nesting of arrays/objects a request may have.
MAX_DEPTH = 64
#: Longest answer line a client accepts (a long generation is one line).
CLIENT_MAX_LINE = 64 * 1024 * 1024


class _TooLong:
    """The type of ``TOO_LONG`` (one instance)."""

    def __repr__(self) -> str:
        return "TOO_LONG"


#: What ``NewlineFramer.feed`` yields in place of a line longer than ``max_line``.
TOO_LONG = _TooLong()


class NewlineFramer:
    """Feed bytes, get complete lines (without their ``\\n``).

    * A line of exactly ``max_line`` bytes (not counting the newline) is accepted.
    * A longer line yields ``TOO_LONG`` exactly once, as soon as it is known (the
      newline need not have arrived); its bytes are discarded up to and including
      the next newline, then framing goes on normally.
    * Empty lines are passed through as ``b""`` (the caller decides: the daemon skips
      blank lines).  ``\\r`` is not stripped (JSON parsing ignores it).
    """

    __slots__ = ("max_line", "_buf", "_scan", "_discarding")

    def __init__(self, max_line: int):
        if max_line < 0:
            raise ValueError("max_line must be >= 0")
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0              # _buf[:_scan] is known to hold no newline
        self._discarding = False    # inside an over-long line: drop bytes up to the next newline

    def feed(self, data: Union[bytes, bytearray]) -> List[Any]:
        """The lines (``bytes``) completed by ``data``, in order, with ``TOO_LONG`` for each over-long one."""
        if self._discarding:
            i = data.find(b"\n")
            if i < 0:
                return []
            self._discarding = False
            data = data[i + 1:]
        buf = self._buf
        if buf:                     # a partial line is pending: search the joined bytes, from where we stopped
            buf += data
            data = buf
            pos = self._scan
        else:                       # the usual case: search the chunk itself, no copy into the buffer
            pos = 0
        out: List[Any] = []
        limit = self.max_line
        find = data.find
        start = 0
        while True:
            i = find(b"\n", pos)
            if i < 0:
                break
            out.append(TOO_LONG if i - start > limit else bytes(data[start:i]))
            start = pos = i + 1
        rest = len(data) - start
        if rest > limit:            # no newline yet, but already too long: say so now, then resync
            out.append(TOO_LONG)
            self._discarding = True
            buf.clear()
        elif data is buf:
            del buf[:start]
        else:
            buf += data[start:]
        self._scan = len(buf)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held back (0 while discarding an over-long one)."""
        return len(self._buf)


# ---------------------------------------------------------------------- encoding
# one encoder, made once (json.dumps with options builds a new JSONEncoder on every call)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(obj: Any) -> bytes:
    """``obj`` as one wire line: compact JSON in UTF-8, newline-terminated.

    A string holding a lone surrogate (a ``"\\ud800"`` escape that came in) cannot be
    UTF-8 encoded; then the whole line is written with ASCII escapes instead.
    """
    try:
        return _dumps(obj).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


# ---------------------------------------------------------------------- strict decoding
class DecodeError(ValueError):
    """A line the daemon must refuse; ``code`` is the JSON-RPC error code to answer with."""

    code = PARSE_ERROR


class NotJSON(DecodeError):
    """Not UTF-8, not JSON, NaN/Infinity, or a number that overflows to infinity (-32700)."""

    code = PARSE_ERROR


class TooDeep(DecodeError):
    """Valid JSON nested deeper than ``MAX_DEPTH`` (-32600: parsed fine, but not a request we take)."""

    code = INVALID_REQUEST


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def depth_ok(obj: Any, max_depth: int = MAX_DEPTH) -> bool:
    """True if ``obj`` nests no deeper than ``max_depth`` (iterative: deep input cannot blow the stack)."""
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if d > max_depth:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def decode_strict(line: Union[bytes, bytearray]) -> Any:
    """Parse one request line by the daemon's rules; raise ``NotJSON`` or ``TooDeep``.

    Strict UTF-8 first (``json.loads`` on bytes would let encoded surrogates through);
    ``\\uXXXX`` escapes, lone surrogates included, are JSON text and stay allowed.
    """
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_not_json, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:     # UnicodeDecodeError is a ValueError
        raise NotJSON(str(exc)) from None
    if not depth_ok(obj):
        raise TooDeep(f"nesting deeper than {MAX_DEPTH}")
    return obj


__all__ = ["MAX_DEPTH", "CLIENT_MAX_LINE", "TOO_LONG", "NewlineFramer", "encode", "decode_strict", "depth_ok",
           "DecodeError", "NotJSON", "TooDeep"]
