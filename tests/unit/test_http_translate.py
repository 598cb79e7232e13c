"""The HTTP APIs' pure parts: [http] settings, the neutral core's checks and merge, OpenAI's translation, auth."""
from __future__ import annotations

from pathlib import Path

import pytest

from oracd.config import ConfigError, Profile, from_dict
from oracd.config.profiles import BUILTIN_GRAMMARS, BUILTIN_SCHEMAS
from oracd.http import core, openai as oai
from oracd.http.generation import carries_output
from oracd.http.server import STATUS, api_of, key_matches
from oracd_protocol.errors import ERRORS, InvalidParams
from oracd.http.server import _param_of

BASE = Path("/tmp")


def cfg(**http):
    return from_dict({"http": http}, BASE)


# ---------------------------------------------------------------- settings
def test_http_is_off_by_default_and_loopback_needs_no_key():
    assert cfg().http.listen == ()
    c = cfg(listen=["127.0.0.1:11434", "[::1]:11434", "localhost:8080", "unix:/run/oracd/http.sock"])
    assert c.http.listen[0] == "127.0.0.1:11434" and c.http.api_key == ""


@pytest.mark.parametrize("addr", ["0.0.0.0:11434", "192.168.1.5:11434", "[::]:11434"])
def test_a_non_loopback_address_without_a_key_refuses_to_start_and_says_why(addr):
    with pytest.raises(ConfigError) as err:
        cfg(listen=[addr])
    msg = str(err.value)
    assert msg.startswith("http.listen: ") and addr in msg and "not a loopback address" in msg
    assert "no api_key or api_key_file is set" in msg
    assert cfg(listen=[addr], api_key="s3cret-key-123").http.api_key == "s3cret-key-123"
    assert cfg(listen=[addr], api_key_file="key.txt").http.api_key_file == BASE / "key.txt"


@pytest.mark.parametrize("bad, words", [
    ({"listen": "127.0.0.1:11434"}, "expected a list"),
    ({"listen": ["127.0.0.1"]}, "expected host:port or unix:/path"),
    ({"listen": ["127.0.0.1:0"]}, "expected host:port or unix:/path"),
    ({"listen": ["example.com:80"]}, "expected an IP address"),
    ({"listen": ["unix:relative.sock"]}, "unix:/absolute/path"),
    ({"listen": ["127.0.0.1:1", "127.0.0.1:1"]}, "twice"),
    ({"api_key": "short"}, "at least 8 characters"),
    ({"api_key": "long-enough-key", "api_key_file": "k"}, "not both"),
    ({"max_body_bytes": 10}, "at least 1024"),
    ({"max_requests": 0}, ">= 1"),
    ({"request_timeout": 0}, "> 0"),
    ({"listne": []}, "unknown key"),
])
def test_bad_http_settings_name_the_key(bad, words):
    with pytest.raises(ConfigError) as err:
        cfg(**bad)
    assert str(err.value).startswith("http.") and words in str(err.value), str(err.value)


def test_the_key_never_appears_in_a_config_error():
    with pytest.raises(ConfigError) as err:
        cfg(api_key=" leaked ")
    assert "leaked" not in str(err.value)


# ---------------------------------------------------------------- the core's checks
def test_messages_are_copied_clean_with_known_roles_and_keys_only():
    msgs = core.check_messages([
        {"role": "developer", "content": "be brief", "x_secret": 1},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "function": {"name": "light", "arguments": {"on": True}}}]},
        {"role": "tool", "content": "done", "tool_call_id": "c1"},
    ])
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[1] == {"role": "user", "content": "hi there"}
    assert msgs[2]["tool_calls"] == [{"type": "function", "id": "c1",
                                      "function": {"name": "light", "arguments": '{"on": true}'}}]
    assert msgs[3] == {"role": "tool", "content": "done", "tool_call_id": "c1"}


@pytest.mark.parametrize("messages, field", [
    ([], "messages"),
    ("hi", "messages"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
     "messages[0].content[0]"),
    ([{"role": "user", "content": "x", "images": ["aGk="]}], "messages[0].images"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "tool"}], "messages[0].content"),
])
def test_bad_messages_are_refused_naming_the_field(messages, field):
    with pytest.raises(InvalidParams) as err:
        core.check_messages(messages)
    assert err.value.message.startswith(field + ":"), err.value.message
    assert _param_of(err.value) == field


def test_images_get_a_clear_error_and_a_path_never_reaches_llama_server():
    with pytest.raises(InvalidParams) as err:
        core.check_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/x"}}]}])
    assert "images and other media are not supported" in err.value.message
    assert "vision projector" in err.value.message


def test_tools_and_tool_choice():
    tools = core.check_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                                 "strict": True}}])
    assert tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for bad in ("f", [{"type": "web_search"}], [{"type": "function", "function": {"name": ""}}],
                [{"type": "function", "function": {"name": "f", "parameters": "x"}}]):
        with pytest.raises(InvalidParams):
            core.check_tools(bad)
    assert core.check_tool_choice("required") == "required"
    assert core.check_tool_choice({"type": "function", "function": {"name": "f", "x": 1}}) == \
        {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidParams):
        core.check_tool_choice("always")


def test_grammars_are_inline_or_built_in_never_a_file():
    assert core.inline_grammar("grammar", "json") == BUILTIN_GRAMMARS["json"]
    assert core.inline_grammar("grammar", 'root ::= "yes"') == 'root ::= "yes"'
    for bad in ("/etc/passwd", "command.gbnf", "../x.gbnf", "", 3):
        with pytest.raises(InvalidParams) as err:
            core.inline_grammar("grammar", bad)
        assert err.value.message.startswith("grammar:")
    assert core.inline_schema("format", "command") == BUILTIN_SCHEMAS["command"]
    with pytest.raises(InvalidParams):
        core.inline_schema("format", "schema.json")


@pytest.mark.parametrize("fn, args", [
    (core.number, ("temperature", "hot", 0, 10)), (core.number, ("temperature", float("nan"), 0, 10)),
    (core.number, ("top_p", 1.5, 0, 1)), (core.number, ("temperature", True, 0, 10)),
    (core.integer, ("max_tokens", 0, 1, 10)), (core.integer, ("max_tokens", 2.5, 1, 10)),
    (core.stop_list, ("stop", [""])), (core.stop_list, ("stop", ["a"] * 17)), (core.stop_list, ("stop", 5)),
    (core.think_value, ("think", "max")),
])
def test_values_are_type_and_range_checked(fn, args):
    with pytest.raises(InvalidParams) as err:
        fn(*args)
    assert err.value.data == args[0]


# ---------------------------------------------------------------- the merge
def test_request_wins_then_the_profile_then_the_default():
    c = from_dict({}, BASE)
    prof = Profile(model="m.gguf", temperature=0.1, top_k=5, max_tokens=64, stop=("END",),
                   json_schema=BUILTIN_SCHEMAS["command"], system_prompt="parse commands", think=False)
    msgs = [{"role": "user", "content": "hi"}]
    body = core.llama_body(core.Gen(messages=msgs, temperature=0.9), prof, c)
    assert body["temperature"] == 0.9 and body["top_k"] == 5 and body["top_p"] == 0.7
    assert body["max_tokens"] == 64 and body["stop"] == ["END"]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}        # the profile's think = false
    # choice: the profile's system prompt and constraint are ORAC's command parsing, not an HTTP client's
    assert body["messages"] == msgs and "json_schema" not in body and "grammar" not in body
    body = core.llama_body(core.Gen(messages=msgs, think="high", max_tokens=5), Profile(model="m.gguf"), c)
    assert body["max_tokens"] == 5 and body["reasoning_effort"] == "high"
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert core.llama_body(core.Gen(messages=msgs), Profile(model="m.gguf"), c)["max_tokens"] == 512
    with pytest.raises(InvalidParams):
        core.llama_body(core.Gen(messages=msgs, grammar="g ::= x", json_schema={}), Profile(model="m.gguf"), c)


def test_a_raw_prompt_goes_as_it_is():
    c = from_dict({}, BASE)
    body = core.llama_body(core.Gen(prompt="<|im_start|>user", seed=7, tools=[{"x": 1}]), Profile(model="m"), c)
    assert body["prompt"] == "<|im_start|>user" and body["seed"] == 7
    assert "messages" not in body and "tools" not in body


# ---------------------------------------------------------------- OpenAI
def test_openai_chat_request_fields():
    gen = oai.chat_request({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
        "max_completion_tokens": 7, "stop": "\n", "seed": 3, "temperature": 0, "top_p": 0.5, "stream": True,
        "stream_options": {"include_usage": True}, "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
        "reasoning_effort": "none", "user": "ignored", "logit_bias": {"1": 2},
    })
    assert gen.max_tokens == 7 and gen.stop == ["\n"] and gen.seed == 3 and gen.temperature == 0
    assert gen.stream and gen.extra["stream_options"] == {"include_usage": True}
    assert gen.json_schema == {"type": "object"} and gen.tools and gen.tool_choice == "auto"
    assert gen.think is False and "user" not in gen.extra and "logit_bias" not in gen.extra


def test_openai_response_formats():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert oai.response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    assert oai.response_format({"type": "text"}) is None
    for bad in ({"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "yaml"}, "json",
                {"type": "json_schema", "json_schema": {"schema": "/etc/schema.json"}}):
        with pytest.raises(InvalidParams):
            oai.response_format(bad)


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"}, "reasoning_effort"),
    ({"messages": [{"role": "user", "content": "x"}], "grammar": "x.gbnf"}, "grammar"),
    ([1, 2], "body"),
])
def test_openai_bad_requests_name_the_field(body, field):
    with pytest.raises(InvalidParams) as err:
        oai.chat_request(body)
    assert _param_of(err.value) == field, err.value.message


def test_openai_completion_request():
    assert oai.completion_request({"prompt": ["once"], "max_tokens": 4}).prompt == "once"
    for body in ({"prompt": ""}, {"prompt": ["a", "b"]}, {"prompt": "x", "echo": True}, {"prompt": "x", "suffix": "y"}):
        with pytest.raises(InvalidParams):
            oai.completion_request(body)


def test_openai_chunks_carry_usage_only_when_asked():
    usage_only = {"choices": [], "model": "models/x.gguf", "usage": {"total_tokens": 3}}
    text = {"choices": [{"delta": {"content": "hi"}}], "model": "models/x.gguf", "usage": {"total_tokens": 3}}
    assert oai.chunk(usage_only, "x", False) is None
    assert oai.chunk(usage_only, "x", True) == {**usage_only, "model": "x"}
    assert "usage" not in oai.chunk(text, "x", False) and oai.chunk(text, "x", False)["model"] == "x"
    assert oai.answer({"model": "models/x.gguf", "id": "1"}, "x") == {"model": "x", "id": "1"}


def test_openai_error_shape():
    body = oai.error(404, "model 'gpt-4' not found", code="model_not_found")
    assert body == {"error": {"message": "model 'gpt-4' not found", "type": "invalid_request_error", "param": None,
                              "code": "model_not_found"}}
    assert oai.error(401, "key")["error"]["type"] == "authentication_error"
    assert oai.error(503, "busy")["error"]["type"] == "server_error"


def test_every_error_code_has_an_http_status():
    for code in ERRORS:
        assert code in STATUS, code
    assert STATUS[-32001] == 404 and STATUS[-32602] == 400 and STATUS[-32005] == 503


# ---------------------------------------------------------------- auth, routing, streaming
def test_the_key_is_a_bearer_token():
    key = b"s3cret-key-123"
    assert key_matches("Bearer s3cret-key-123", key) and key_matches("bearer s3cret-key-123", key)
    for header in (None, "", "s3cret-key-123", "Basic s3cret-key-123", "Bearer s3cret-key-12", "Bearer x\u00e9"):
        assert not key_matches(header, key)


def test_the_api_is_told_by_the_path():
    assert api_of("/v1/chat/completions") == "openai" and api_of("/v1") == "openai"
    assert api_of("/api/chat") == "ollama" and api_of("/v1x") == "ollama" and api_of("/") == "ollama"


def test_what_counts_as_output_already_sent():
    assert not carries_output({"choices": [{"delta": {"role": "assistant", "content": None}}]})
    assert not carries_output({"choices": [], "usage": {}})
    assert carries_output({"choices": [{"delta": {"content": "a"}}]})
    assert carries_output({"choices": [{"delta": {"reasoning_content": "hmm"}}]})
    assert carries_output({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]})
    assert carries_output({"choices": [{"text": "a"}]})


# ---------------------------------------------------------------- aliases
def test_profile_aliases_name_one_model_each():
    c = from_dict({"profiles": {"Qwen3-0.6B-Q4_K_M.gguf": {"aliases": ["qwen3:0.6b", "qwen3"]}}}, BASE)
    assert c.alias_target("qwen3:0.6b") == "Qwen3-0.6B-Q4_K_M.gguf" and c.alias_target("other") is None
    for bad, words in (
            ({"a.gguf": {"aliases": ["x"]}, "b.gguf": {"aliases": ["x"]}}, "already names a.gguf"),
            ({"a.gguf": {"aliases": ["b"]}, "b.gguf": {}}, "already names a model file"),
            ({"a.gguf": {"aliases": ["x/y"]}}, "expected a list of names"),
            ({"a.gguf": {"aliases": ["x.gguf"]}}, "expected a list of names"),
            ({"a.gguf": {"aliases": "x"}}, "expected a list of names")):
        with pytest.raises(ConfigError) as err:
            from_dict({"profiles": bad}, BASE)
        assert "aliases" in str(err.value) and words in str(err.value), str(err.value)


def test_a_long_answer_fetched_streamed_is_assembled_as_llama_server_would_answer_it():
    events = [
        {"id": "c1", "created": 5, "model": "m", "choices": [{"delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"delta": {"reasoning_content": "hm"}}]}, {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"completion_tokens": 4}, "timings": {"predicted_ms": 1.0}}]
    out = core.assemble(events, chat=True)
    assert out["id"] == "c1" and out["object"] == "chat.completion" and out["usage"] == {"completion_tokens": 4}
    assert out["choices"] == [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Hi", "reasoning_content": "hm",
        "tool_calls": [{"type": "function", "id": "t", "function": {"name": "f", "arguments": "{}"}}]}}]
    text = core.assemble([{"choices": [{"text": "a"}]}, {"choices": [{"text": "b", "finish_reason": "length"}]}],
                         chat=False)
    assert text["choices"] == [{"index": 0, "text": "ab", "finish_reason": "length"}]
    assert core.assemble([{"choices": [{"delta": {}, "finish_reason": "stop"}]}], chat=True)[
        "choices"][0]["message"]["content"] == ""
