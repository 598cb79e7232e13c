"""Ollama's API, translated: requests into the neutral core, llama-server's answers and streams back."""
from __future__ import annotations

import math

import pytest

from oracd.http import ollama as ol
from oracd_protocol.errors import InvalidParams
from oracd.http.server import _param_of

MSGS = [{"role": "user", "content": "turn on the light"}]


@pytest.mark.parametrize("value, seconds", [
    (None, None), (-1, math.inf), ("-1", math.inf), ("-1m", math.inf), (0, 0.0), ("0", 0.0), ("0s", 0.0),
    ("300s", 300.0), ("5m", 300.0), ("1h30m", 5400.0), (120, 120.0), (2.5, 2.5), ("1.5h", 5400.0),
])
def test_keep_alive_durations(value, seconds):
    assert ol.keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["forever", "5 minutes", "5x", True, [], "m5", "", float("nan")])
def test_bad_keep_alive_is_refused(value):
    with pytest.raises(InvalidParams) as err:
        ol.keep_alive(value)
    assert err.value.data == "keep_alive"


def test_home_assistants_chat_request():
    schema = {"type": "object", "properties": {"response": {"type": "string"}}}
    gen, ka, num_ctx = ol.chat_request({
        "model": "qwen3:0.6b", "messages": MSGS + [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn",
                                                                              "arguments": {"name": "light"}}}]},
            {"role": "tool", "content": '{"success": true}', "tool_name": "HassTurnOn"}],
        "tools": [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}],
        "stream": True, "keep_alive": "300s", "options": {"num_ctx": 8192}, "think": False, "format": schema})
    assert gen.stream and ka == 300.0 and num_ctx == 8192
    assert gen.json_schema == schema and gen.think is False and gen.tools[0]["function"]["name"] == "HassTurnOn"
    assert gen.messages[1]["tool_calls"][0]["function"]["arguments"] == '{"name": "light"}'
    assert gen.messages[2] == {"role": "tool", "content": '{"success": true}', "name": "HassTurnOn"}
    assert gen.extra["stream_options"] == {"include_usage": True}


def test_options_and_format():
    gen, ka, _ = ol.chat_request({"messages": MSGS, "stream": False, "format": "json", "options": {
        "temperature": 0.2, "top_p": 0.9, "top_k": 20, "num_predict": 32, "seed": 7, "stop": ["\n"],
        "repeat_penalty": 1.1, "grammar": 'root ::= "x"', "num_thread": 4, "mirostat": 0}})
    assert (gen.temperature, gen.top_p, gen.top_k, gen.max_tokens, gen.seed) == (0.2, 0.9, 20, 32, 7)
    assert gen.stop == ["\n"] and gen.repeat_penalty == 1.1 and gen.grammar == 'root ::= "x"'
    assert gen.json_schema == {"type": "object"} and not gen.stream and ka is None
    assert ol.chat_request({"messages": MSGS, "options": {"num_predict": -1}})[0].max_tokens == -1
    for bad, field in (({"options": {"temperature": "hot"}}, "options.temperature"),
                       ({"options": []}, "options"), ({"format": "yaml"}, "format"),
                       ({"options": {"grammar": "/etc/x.gbnf"}}, "options.grammar"),
                       ({"think": "max"}, "think"), ({"stream": "no"}, "stream"),
                       ({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "messages[0].images")):
        with pytest.raises(InvalidParams) as err:
            ol.chat_request({"messages": MSGS, **bad})
        assert _param_of(err.value) == field, err.value.message


def test_no_messages_or_prompt_is_a_load_request():
    assert ol.chat_request({"model": "m"})[0].messages is None
    gen = ol.generate_request({"model": "m", "prompt": ""})[0]
    assert gen.messages is None and gen.prompt is None


def test_generate_system_raw_images():
    gen = ol.generate_request({"prompt": "hi", "system": "be brief"})[0]
    assert gen.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert ol.generate_request({"prompt": "<|im_start|>", "raw": True})[0].prompt == "<|im_start|>"
    with pytest.raises(InvalidParams) as err:
        ol.generate_request({"prompt": "x", "images": ["aGk="]})
    assert "vision projector" in err.value.message
    for bad in ({"raw": True, "system": "s"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}, {"suffix": "y"}):
        with pytest.raises(InvalidParams):
            ol.generate_request({"prompt": "x", **bad})


def test_a_stream_of_text_thinking_and_tool_call_fragments():
    st = ol.Stream("m", chat=True)
    assert st.feed({"choices": [{"delta": {"role": "assistant", "content": None}}]}) == []
    [a] = st.feed({"choices": [{"delta": {"reasoning_content": "hmm"}}]})
    assert a["message"] == {"role": "assistant", "content": "", "thinking": "hmm"} and a["done"] is False
    [b] = st.feed({"choices": [{"delta": {"content": "On it."}}]})
    assert b["message"]["content"] == "On it."
    assert st.feed({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "id": "c", "type": "function", "function": {"name": "HassTurnOn", "arguments": '{"na'}}]}}]}) == []
    st.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'me": "light"}'}}]}}]})
    st.feed({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    st.feed({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9},
             "timings": {"prompt_ms": 12.5, "predicted_ms": 100.0}})
    calls, final = st.tail(waited_s=0.25, total_s=1.0)
    assert calls["message"]["tool_calls"] == [{"function": {"name": "HassTurnOn", "arguments": {"name": "light"}}}]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert (final["prompt_eval_count"], final["eval_count"]) == (30, 9)
    assert final["prompt_eval_duration"] == 12_500_000 and final["eval_duration"] == 100_000_000
    assert final["load_duration"] == 250_000_000 and final["total_duration"] == 1_000_000_000


def test_a_generate_stream_and_a_cut_off_answer():
    st = ol.Stream("m", chat=False)
    [a] = st.feed({"choices": [{"text": "Once", "finish_reason": None}]})
    assert a["response"] == "Once" and "message" not in a
    st.feed({"choices": [{"text": "", "finish_reason": "length"}]})
    [final] = st.tail(0, 0.1)
    assert final["done_reason"] == "length" and final["response"] == ""


def test_non_streamed_answers():
    data = {"choices": [{"finish_reason": "tool_calls", "message": {
        "content": None, "reasoning_content": "think", "tool_calls": [
            {"function": {"name": "f", "arguments": '{"a": 1}'}}, {"function": {"name": "g", "arguments": "oops"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    out = ol.answer(data, "m", chat=True, waited_s=0, total_s=0.5)
    assert out["message"] == {"role": "assistant", "content": "", "thinking": "think", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": 1}}}, {"function": {"name": "g", "arguments": {"_raw": "oops"}}}]}
    assert out["done"] and out["done_reason"] == "stop" and out["eval_count"] == 4
    out = ol.answer({"choices": [{"text": "abc", "finish_reason": "length"}]}, "m", chat=False, waited_s=0, total_s=0)
    assert out["response"] == "abc" and out["done_reason"] == "length"


def test_tags_show_and_ps_from_the_gguf_header():
    item = {"name": "Qwen3-0.6B-Q4_K_M.gguf", "size": 100, "modified": 0.0, "architecture": "qwen3",
            "size_label": "0.6B", "quantization": "Q4_K_M", "context_length": 40960, "model_name": "Qwen3 0.6B"}
    tags = ol.tags([item], {"Qwen3-0.6B-Q4_K_M.gguf": ["qwen3:0.6b"]})["models"]
    assert [t["name"] for t in tags] == ["Qwen3-0.6B-Q4_K_M.gguf", "qwen3:0.6b"]
    assert tags[0]["details"] == {"parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],
                                  "parameter_size": "0.6B", "quantization_level": "Q4_K_M"}
    assert tags[0]["modified_at"] == "1970-01-01T00:00:00Z" and len(tags[0]["digest"]) == 64
    show = ol.show(item, ["completion", "tools"], {"temperature": 0.1, "num_ctx": 4096})
    assert show["model_info"]["qwen3.context_length"] == 40960 and show["capabilities"] == ["completion", "tools"]
    assert show["parameters"] == "temperature 0.1\nnum_ctx 4096"
    ps = ol.ps_entry(item, "qwen3:0.6b", ol.PINNED_UNTIL, 2048, vram=True)
    assert ps["context_length"] == 2048 and ps["size_vram"] == 100 and ps["expires_at"] == ol.PINNED_UNTIL


@pytest.mark.parametrize("num_ctx, parallel, configured, trained, size", [
    (8192, 2, 4096, 40960, 16384),      # Home Assistant's 8192 per request on 2 slots
    (1024, 2, 2048, 8192, None),        # already 1024 per slot: nothing to do
    (512, 2, 2048, 8192, None),         # smaller: it only grows
    (65536, 2, 2048, 8192, 16384),      # never beyond the model's trained context per slot
    (4096, 1, 0, 8192, None),           # ctx_size 0 is the model's own (8192)
])
def test_num_ctx_only_grows_the_context_within_the_models_own(num_ctx, parallel, configured, trained, size):
    from oracd.http.num_ctx import wanted_ctx_size
    assert wanted_ctx_size(num_ctx, parallel, configured, trained) == size
