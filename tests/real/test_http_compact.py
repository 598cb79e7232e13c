"""Compact output and fast-forward on the HTTP APIs: the real ``openai`` and ``ollama`` libraries against a real
oracd, llama-server and SmolLM2 (temperature 0).

A ``command``-schema request via OpenAI's ``response_format`` or Ollama's ``format`` answers, streamed or not,
the compact object JSON-RPC ``generate`` gives; fast-forward (``fast_forward: true``, top level or in Ollama's
``options``) streams the forced spans in order and reports sampled and forced tokens; a schema outside the
compact subset still answers (llama-server's own schema grammar); a client hanging up mid-object stops the
generation.
"""
from __future__ import annotations

import json
import os
import signal

import ollama
import openai
import pytest

from helpers import SMOL, Oracd, free_port, wait_for
from llama_direct import busy_slots
from oracd.api.ffplan import make_plan
from oracd_protocol.schemas import COMMAND_SCHEMA
from test_fast_forward import COMMANDS, SYSTEM, compact_text

FORCED = make_plan(COMMAND_SCHEMA).forced
MAX_TOKENS = 300
#: a story longer than MAX_TOKENS allows: only a hang-up or a crash ends its generation early
SAGA = {"type": "json_schema", "json_schema": {"name": "saga", "schema": {
    "type": "object", "additionalProperties": False, "required": ["title", "story"],
    "properties": {"title": {"type": "string", "maxLength": 16}, "story": {"type": "string", "minLength": 2000}}}}}
ROUTINE = {"type": "json_schema", "json_schema": {"name": "command", "schema": COMMAND_SCHEMA}}


@pytest.fixture(scope="module")
def o():
    d = Oracd(http={"listen": [f"127.0.0.1:{free_port()}"]})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def oai(o):
    return openai.OpenAI(base_url=o.http_url + "/v1", api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def oll(o):
    return ollama.Client(host=o.http_url, timeout=300)


def messages(text: str):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def chatml(text: str) -> str:
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def rpc(o, text: str, **kw) -> dict:
    return o.call("generate", prompt=text, system_prompt=SYSTEM, json_schema="command", temperature=0.0,
                  max_tokens=96, timeout=300, **kw)


def predicted(o) -> float:
    """llama-server's tokens predicted so far (its /metrics, through oracd's)."""
    with o.conn() as c:
        text = c.call("metrics")["text"]
    return float(next(ln for ln in text.splitlines() if ln.startswith("llamacpp:tokens_predicted_total")).split()[-1])


def extra(usage, key: str) -> int:
    return (usage.model_extra or {})[key]


def test_openai_response_format_answers_jsonrpcs_compact_object_streamed_and_not(o, oai):
    for text in COMMANDS[:3]:
        want = rpc(o, text, fast_forward=False)
        assert want["json_output"] == {"compact": True, "fast_forward": False}
        # compact sampling (fast-forward, on by default for this schema on a CPU box, is tested below)
        kw = dict(model=SMOL, messages=messages(text), temperature=0, max_tokens=96, response_format=ROUTINE,
                  extra_body={"fast_forward": False})
        r = oai.chat.completions.create(**kw)
        content = r.choices[0].message.content
        assert compact_text(content) and json.loads(content) == json.loads(want["response"]), text
        assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
        u = r.usage
        assert extra(u, "forced_tokens") == 0 and extra(u, "sampled_tokens") == u.completion_tokens > 0
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens
        chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == content
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
        plain = list(oai.chat.completions.create(stream=True, **kw))
        assert all(c.usage is None for c in plain)
    raw = oai.completions.create(model=SMOL, prompt=chatml(text), temperature=0, max_tokens=96,
                                 extra_body={"response_format": ROUTINE, "fast_forward": False})     # a raw prompt
    assert compact_text(raw.choices[0].text) and json.loads(raw.choices[0].text) == json.loads(want["response"])
    assert extra(raw.usage, "sampled_tokens") == raw.usage.completion_tokens


def test_ollama_format_answers_jsonrpcs_compact_object_on_chat_and_generate(o, oll):
    text = COMMANDS[0]
    want = json.loads(rpc(o, text)["response"])
    opts = {"temperature": 0, "num_predict": 96}
    whole = oll.chat(model=SMOL, messages=messages(text), format=COMMAND_SCHEMA, options=opts, stream=False)
    assert compact_text(whole.message.content) and json.loads(whole.message.content) == want
    assert whole.done_reason == "stop" and whole.eval_count > 0 and whole.prompt_eval_count > 0
    assert whole.total_duration >= whole.eval_duration > 0
    chunks = list(oll.chat(model=SMOL, messages=messages(text), format=COMMAND_SCHEMA, options=opts, stream=True))
    assert "".join(c.message.content for c in chunks) == whole.message.content
    assert chunks[-1].done and not any(c.done for c in chunks[:-1]) and chunks[-1].eval_count == whole.eval_count
    gen = oll.generate(model=SMOL, prompt=text, system=SYSTEM, format=COMMAND_SCHEMA, options=opts, stream=False)
    assert gen.response == whole.message.content
    streamed = list(oll.generate(model=SMOL, prompt=text, system=SYSTEM, format=COMMAND_SCHEMA, options=opts,
                             stream=True))
    assert "".join(c.response for c in streamed) == gen.response
    raw = oll.generate(model=SMOL, prompt=chatml(text), raw=True, format=COMMAND_SCHEMA, options=opts, stream=False)
    assert compact_text(raw.response) and json.loads(raw.response) == want


def test_fast_forward_streams_the_forced_spans_in_order_with_sampled_and_forced_tokens(o, oai, oll):
    text = COMMANDS[6]
    kw = dict(model=SMOL, messages=messages(text), temperature=0, max_tokens=96, response_format=ROUTINE)
    compact = oai.chat.completions.create(**kw).choices[0].message.content
    for _ in range(2):                  # the check against compact sampling, then fast-forward's own answer
        r = oai.chat.completions.create(extra_body={"fast_forward": True}, **kw)
    assert json.loads(r.choices[0].message.content) == json.loads(compact)
    u = r.usage
    assert extra(u, "forced_tokens") > 0 and extra(u, "sampled_tokens") + extra(u, "forced_tokens") \
        == u.completion_tokens
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                              extra_body={"fast_forward": True}, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == r.choices[0].message.content
    at = [pieces.index(span) for span in FORCED]
    assert at == sorted(at) and at[0] == 0 and at[-1] == len(pieces) - 1
    assert extra(chunks[-1].usage, "forced_tokens") == extra(u, "forced_tokens")
    lines = list(oll.chat(model=SMOL, messages=messages(text), format=COMMAND_SCHEMA, stream=True,
                          options={"temperature": 0, "num_predict": 96, "fast_forward": True}))
    pieces = [c.message.content for c in lines if c.message.content]
    assert "".join(pieces) == r.choices[0].message.content
    at = [pieces.index(span) for span in FORCED]
    assert at == sorted(at) and at[0] == 0 and at[-1] == len(pieces) - 1
    assert lines[-1].eval_count == u.completion_tokens
    unbounded = oll.chat(model=SMOL, messages=messages(text), format=COMMAND_SCHEMA, stream=False,
                         options={"temperature": 0, "num_predict": -1, "fast_forward": True})     # -1: no limit
    assert unbounded.message.content == r.choices[0].message.content and unbounded.done_reason == "stop"


def test_a_schema_outside_the_compact_subset_still_answers(oai, oll):
    dated = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"]}
    r = oai.chat.completions.create(
        model=SMOL, temperature=0, max_tokens=40, extra_body={"compact_json": True, "fast_forward": True},
        messages=[{"role": "user", "content": "What is the date of new year 2030? Answer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": dated}})
    assert len(json.loads(r.choices[0].message.content)["day"]) == 10
    assert "forced_tokens" not in (r.usage.model_extra or {})             # llama-server's own answer
    optional = {"type": "object", "properties": {"device": {"type": "string", "maxLength": 20},
                                                 "room": {"type": "string", "maxLength": 20}},
                "required": ["device"], "additionalProperties": False}
    r = oll.chat(model=SMOL, messages=messages(COMMANDS[0]), format=optional, stream=False,
                 options={"temperature": 0, "num_predict": 60, "fast_forward": True})
    assert compact_text(r.message.content) and "device" in json.loads(r.message.content)   # compact only


def test_a_client_hanging_up_mid_object_stops_the_generation(o, oai):
    """The story must be longer than max_tokens allows, so only a hang-up ends the generation before
    max_tokens; llama-server's count of predicted tokens shows it did not get there."""
    endpoint = o.call("status")["child"]["endpoint"]
    before = predicted(o)
    stream = oai.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Write a long story as JSON."}], temperature=0,
        max_tokens=MAX_TOKENS, stream=True, extra_body={"compact_json": True},
        response_format=SAGA)
    text = ""
    for chunk in stream:                                         # past the title, well short of max_tokens
        text += chunk.choices[0].delta.content or ""
        if '","story":"' in text and not text.endswith('"'):
            break
    assert text.startswith('{"title":"') and o.call("status")["requests"]["in_flight"] == 1   # compact
    stream.close()                                               # hang up mid-object
    wait_for(lambda: o.call("status")["requests"]["in_flight"] == 0 and busy_slots(endpoint) == 0, 60,
             "the generation to stop after its client hung up")
    assert predicted(o) - before < MAX_TOKENS // 2                          # it stopped early
    assert json.loads(rpc(o, COMMANDS[0])["response"])                      # and oracd serves on


def test_a_crash_mid_stream_ends_the_compact_stream_without_replaying_it(fresh_oracd):
    """After text has reached the client, a crash is not retried (the retry would send the answer again from
    its start): the stream ends with an error event, reason stream_interrupted."""
    o = fresh_oracd(llama={"restart_backoff_initial": 0.1}, http={"listen": [f"127.0.0.1:{free_port()}"]}).start()
    client = openai.OpenAI(base_url=o.http_url + "/v1", api_key="none", max_retries=0, timeout=300)
    pid = o.child_pid()
    stream = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Write a long story as JSON."}], temperature=0,
        max_tokens=MAX_TOKENS, stream=True, extra_body={"compact_json": True}, response_format=SAGA)
    text = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if '","story":"' in text and pid is not None:
                os.kill(pid, signal.SIGKILL)
                pid = None
    assert pid is None and err.value.body["oracd"]["data"]["reason"] == "stream_interrupted", err.value.body
    assert text.startswith('{"title":"') and text.count('{"title"') == 1         # nothing sent twice
    assert json.loads(rpc(o, COMMANDS[0])["response"])                         # the restarted child serves
