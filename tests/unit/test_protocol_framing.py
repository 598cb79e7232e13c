"""oracd_protocol.framing: NewlineFramer, encode and decode_strict (no daemon, no sockets)."""
from __future__ import annotations

import json

import pytest

from oracd_protocol.framing import (MAX_DEPTH, TOO_LONG, NewlineFramer, NotJSON, TooDeep, decode_strict, encode)
from oracd_protocol.errors import INVALID_REQUEST, PARSE_ERROR


def feed_all(framer: NewlineFramer, *chunks: bytes) -> list:
    out = []
    for c in chunks:
        out += framer.feed(c)
    return out


# ---------------------------------------------------------------------- NewlineFramer
def test_a_line_of_exactly_max_line_bytes_is_accepted():
    f = NewlineFramer(8)
    assert f.feed(b"12345678\n") == [b"12345678"]
    # also when it arrives in pieces and the limit is reached before the newline
    assert f.feed(b"1234") == [] and f.feed(b"5678") == [] and f.feed(b"\n") == [b"12345678"]
    assert f.pending == 0


def test_one_byte_over_max_line_yields_one_marker_then_resyncs():
    f = NewlineFramer(8)
    assert f.feed(b"123456789\nnext\n") == [TOO_LONG, b"next"]


def test_an_over_long_line_across_many_feeds_yields_exactly_one_marker():
    f = NewlineFramer(8)
    out = feed_all(f, b"12345", b"6789", b"a" * 100, b"b" * 100)
    assert out == [TOO_LONG]                     # known as soon as the limit is passed, said once
    assert f.pending == 0                        # the discarded bytes are not kept
    assert f.feed(b"ccc") == []                  # still inside the over-long line
    assert f.feed(b"tail\nok\n") == [b"ok"]      # resync after the newline, normal framing after it
    assert f.feed(b"12345678\n") == [b"12345678"]


def test_over_long_line_ending_in_the_chunk_that_crossed_the_limit():
    f = NewlineFramer(4)
    assert f.feed(b"ab") == []
    assert f.feed(b"cdefg\nhi\n") == [TOO_LONG, b"hi"]


def test_lines_split_across_many_feeds():
    f = NewlineFramer(1 << 20)
    msg = b'{"jsonrpc":"2.0","id":1,"result":{"response":"hello world"}}'
    out = feed_all(f, *[msg[i:i + 1] for i in range(len(msg))], b"\n")
    assert out == [msg]
    # a newline inside a later chunk, with the next line starting in the same chunk
    assert feed_all(f, b'{"a"', b":1}\n{", b'"b":2}', b"\n") == [b'{"a":1}', b'{"b":2}']


def test_many_lines_in_one_feed_and_a_partial_tail():
    f = NewlineFramer(100)
    lines = [json.dumps({"id": i}).encode() for i in range(50)]
    assert f.feed(b"\n".join(lines) + b"\n" + b'{"id": 5') == lines
    assert f.pending == len(b'{"id": 5')
    assert f.feed(b"0}\n") == [b'{"id": 50}']


def test_empty_lines_are_passed_through_as_empty_bytes():
    f = NewlineFramer(10)
    assert f.feed(b"\n\na\n\n") == [b"", b"", b"a", b""]


def test_bytearray_input_and_zero_limit():
    f = NewlineFramer(0)
    assert f.feed(bytearray(b"\nx\n\n")) == [b"", TOO_LONG, b""]
    assert all(type(x) is bytes for x in NewlineFramer(5).feed(bytearray(b"ab\ncd\n")))
    with pytest.raises(ValueError):
        NewlineFramer(-1)


def test_framer_matches_a_reference_split_on_random_chunking():
    """Whatever the chunk boundaries, the framer gives the same lines as a plain split."""
    import random
    rnd = random.Random(7)
    limit = 16
    lines = [bytes(rnd.choice(b"ab{}") for _ in range(rnd.randint(0, 30))) for _ in range(300)]
    stream = b"\n".join(lines) + b"\n"
    want = [TOO_LONG if len(x) > limit else x for x in lines]
    for _ in range(20):
        f = NewlineFramer(limit)
        out, i = [], 0
        while i < len(stream):
            n = rnd.randint(1, 40)
            out += f.feed(stream[i:i + n])
            i += n
        assert out == want


# ---------------------------------------------------------------------- encode
def test_encode_is_compact_utf8_with_a_newline():
    assert encode({"a": [1, 2], "t": "héllo"}) == '{"a":[1,2],"t":"héllo"}\n'.encode("utf-8")


def test_encode_falls_back_to_ascii_escapes_for_a_lone_surrogate():
    line = encode({"t": "x\ud800y", "u": "é"})
    assert line == b'{"t":"x\\ud800y","u":"\\u00e9"}\n'
    assert json.loads(line) == {"t": "x\ud800y", "u": "é"}


# ---------------------------------------------------------------------- decode_strict
def test_decode_strict_accepts_plain_json_and_surrogate_escapes():
    assert decode_strict(b'{"a": [1, 2.5, "\\u00e9"]}') == {"a": [1, 2.5, "é"]}
    # a \ud800 escape is JSON text (what oracd does today): allowed, and answered via encode's fallback
    assert decode_strict(b'"\\ud800"') == "\ud800"


@pytest.mark.parametrize("line", [b"NaN", b"[Infinity]", b'{"x": -Infinity}', b"[1e999]", b"-1e400",
                                  b"\xff{}", b'"\xed\xa0\x80"', b"{", b"", b"[1,]"])
def test_decode_strict_refuses_what_is_not_json(line):
    with pytest.raises(NotJSON) as ei:
        decode_strict(line)
    assert ei.value.code == PARSE_ERROR and isinstance(ei.value, ValueError)


def test_decode_strict_nesting_limit():
    """The daemon's rule, kept: the top-level value is at depth 0, and no value may sit deeper than 64."""
    def nested(n: int) -> bytes:
        return b"[" * n + b"1" + b"]" * n
    assert decode_strict(nested(MAX_DEPTH)) is not None            # the 1 at depth 64
    with pytest.raises(TooDeep) as ei:
        decode_strict(nested(MAX_DEPTH + 1))                        # the 1 at depth 65
    assert ei.value.code == INVALID_REQUEST and "64" in str(ei.value)
    assert decode_strict(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)) is not None   # no value at depth 65
    with pytest.raises(TooDeep):
        decode_strict(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1))


def test_decode_strict_absurd_nesting_is_a_parse_error_not_a_crash():
    with pytest.raises(NotJSON):
        decode_strict(b"[" * 100_000 + b"]" * 100_000)     # json's own recursion limit
