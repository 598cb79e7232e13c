"""The HTTP APIs' compact JSON path, its pure parts: when a schema goes compact or fast-forwarded (the JSON-RPC
rules), the switches in each API's request, and the answer in llama-server's shape, which each API's own
translation then turns into its answers and chunks."""
from __future__ import annotations

import json

import pytest

from oracd.api.fastforward import sampling_of
from oracd.config import Profile
from oracd.http import jsonanswer, ollama as ol, openai as oai
from oracd.http.core import Gen
from oracd.http.generation import carries_output
from oracd_protocol.errors import InvalidParams
from oracd_protocol.schemas import COMMAND_SCHEMA

PROF = Profile(model="m.gguf")
ROOM = {"type": "object", "properties": {"room": {"type": "string", "maxLength": 20}}, "required": ["room"],
        "additionalProperties": False}
DATED = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"]}
USER = [{"role": "user", "content": "hi"}]
RESULT = {"content": '{"room":"kitchen"}', "finish_reason": "stop", "fast_forward": True,
          "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39,
                    "prompt_tokens_details": {"cached_tokens": 20}, "sampled_tokens": 3, "forced_tokens": 6}}


def decided(**gen):
    out = jsonanswer.decide(Gen(messages=USER, **gen), PROF)
    return None if out is None else (out.schema, out.fast_forward)


def test_the_command_schema_goes_compact_by_default_other_schemas_when_asked():
    assert decided(json_schema=COMMAND_SCHEMA) == (COMMAND_SCHEMA, None)     # None: the child decides (batch-invariant)
    assert decided(json_schema=ROOM) is None
    assert decided(json_schema=ROOM, compact_json=True) == (ROOM, False)
    assert decided(json_schema=ROOM, fast_forward=True) == (ROOM, True)         # fast-forward implies compact
    assert decided(json_schema=COMMAND_SCHEMA, compact_json=False) is None
    assert jsonanswer.decide(Gen(messages=USER, json_schema=ROOM), Profile(model="m.gguf", fast_forward=True)) \
        .fast_forward is True


def test_json_mode_tools_and_schemas_outside_the_subset_stay_with_llama_server():
    assert decided(json_schema={"type": "object"}, any_json=True, compact_json=True) is None
    assert decided(json_schema=COMMAND_SCHEMA, tools=[{"type": "function", "function": {"name": "f"}}]) is None
    assert decided(json_schema=DATED, compact_json=True, fast_forward=True) is None
    assert decided(compact_json=True) is None
    assert decided(json_schema=COMMAND_SCHEMA, fast_forward=True, stop=["\n"]) == (COMMAND_SCHEMA, False)


def test_the_switches_in_each_apis_request():
    body = {"model": "m", "messages": USER, "compact_json": True, "fast_forward": False,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": ROOM}}}
    gen = oai.chat_request(body)
    assert (gen.json_schema, gen.any_json, gen.compact_json, gen.fast_forward) == (ROOM, False, True, False)
    gen = oai.chat_request({"messages": USER, "response_format": {"type": "json_object"}})
    assert gen.any_json is True and (gen.compact_json, gen.fast_forward) == (None, None)
    gen = oai.completion_request({"prompt": "x", "fast_forward": True,
                                  "response_format": {"type": "json_schema", "json_schema": {"schema": "command"}}})
    assert gen.json_schema == COMMAND_SCHEMA and gen.fast_forward is True
    gen, _, _ = ol.chat_request({"model": "m", "messages": USER, "format": ROOM, "fast_forward": True,
                                 "options": {"compact_json": True, "fast_forward": False}})
    assert (gen.json_schema, gen.any_json, gen.compact_json, gen.fast_forward) == (ROOM, False, True, True)
    gen, _, _ = ol.generate_request({"model": "m", "prompt": "p", "format": "json"})
    assert gen.any_json is True and gen.json_schema == {"type": "object"}
    with pytest.raises(InvalidParams, match="options.fast_forward: expected true or false"):
        ol.chat_request({"model": "m", "messages": USER, "options": {"fast_forward": "yes"}})
    with pytest.raises(InvalidParams, match="compact_json: expected true or false"):
        oai.chat_request({"messages": USER, "compact_json": 1})


def test_sampling_keys_carry_over_from_the_merged_body():
    body = {"temperature": 0.0, "top_p": 0.9, "top_k": 5, "seed": 3, "stop": ["x"], "max_tokens": 64,
            "messages": USER, "cache_prompt": True, "json_schema": ROOM, "chat_template_kwargs": {}}
    assert sampling_of(body) == {"temperature": 0.0, "top_p": 0.9, "top_k": 5, "seed": 3, "stop": ["x"]}


def test_a_streamed_chat_answer_becomes_openai_chunks_and_ollama_lines():
    shape = jsonanswer.Shape(True, "m.gguf", 1700000000)
    events = [shape.delta('{"room":"'), shape.delta("kitchen"), shape.delta('"}'), *shape.tail(RESULT, 0.25)]
    assert len({e["id"] for e in events}) == 1 and all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": '{"room":"'}
    assert events[1]["choices"][0]["delta"] == {"content": "kitchen"}
    assert [carries_output(e) for e in events] == [True, True, True, False, False]
    sent = [oai.chunk(e, "m", include_usage=False) for e in events]
    assert sent[-1] is None and sent[-2]["choices"][0]["finish_reason"] == "stop"
    assert oai.chunk(events[-1], "m", include_usage=True)["usage"]["forced_tokens"] == 6
    st = ol.Stream("m", chat=True)
    lines = [piece for e in events for piece in st.feed(e)] + st.tail(0.01, 0.3)
    assert "".join(ln["message"]["content"] for ln in lines) == RESULT["content"]
    final = lines[-1]
    assert final["done"] and final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"], final["eval_duration"]) == (30, 9, 250_000_000)


def test_a_raw_answer_streamed_and_whole():
    shape = jsonanswer.Shape(False, "m.gguf", 1700000000)
    ev = shape.delta("kit")
    assert ev["object"] == "text_completion" and ev["choices"][0]["text"] == "kit" and carries_output(ev)
    st = ol.Stream("m", chat=False)
    assert st.feed(ev)[0]["response"] == "kit"
    whole = shape.answer(dict(RESULT, finish_reason="length"), 0.5)
    assert whole["choices"][0]["text"] == RESULT["content"] and whole["usage"]["sampled_tokens"] == 3
    got = ol.answer(whole, "m", chat=False, waited_s=0.0, total_s=0.6)
    assert got["response"] == RESULT["content"] and got["done_reason"] == "length" and got["eval_count"] == 9


def test_a_whole_chat_answer_in_each_apis_shape():
    whole = jsonanswer.Shape(True, "m.gguf", 1700000000).answer(RESULT, 0.5)
    assert whole["object"] == "chat.completion" and whole["id"].startswith("chatcmpl-")
    r = oai.answer(whole, "smol")
    assert r["model"] == "smol" and json.loads(r["choices"][0]["message"]["content"]) == {"room": "kitchen"}
    assert r["usage"]["sampled_tokens"] + r["usage"]["forced_tokens"] == r["usage"]["completion_tokens"]
    got = ol.answer(whole, "smol", chat=True, waited_s=0.0, total_s=0.6)
    assert got["message"] == {"role": "assistant", "content": RESULT["content"]}
    assert got["eval_count"] == 9 and got["eval_duration"] == 500_000_000 and got["total_duration"] == 600_000_000
