"""Tool calls and a crash mid-stream on the HTTP APIs, from a scripted llama-server (``llama_server.py``).

The embedded real models do not call tools, so the stand-in answers every chat completion with
reasoning, text and a ``HassTurnOn`` call, streamed in fragments as llama-server streams them.
The real ``ollama`` and ``openai`` libraries read them: Home Assistant's exact ``chat(...)`` call first.
"""
from __future__ import annotations

import json
import time

import ollama
import openai
import pytest

from helpers import stand_in_script, free_port, write_tiny_f32

MODEL = "fake.gguf"
TOOLS = [{"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on/opens a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "domain": {"type": "array", "items": {"type": "string"}}}}}}]
MESSAGES = [{"role": "system", "content": "You are a voice assistant for Home Assistant."},
            {"role": "user", "content": "turn on the kitchen light"}]
CALL = {"name": "kitchen light", "domain": ["light"]}


@pytest.fixture
def scripted_http(fresh_oracd, tmp_path):
    def make(fault: str, **llama):
        wrapper = stand_in_script(tmp_path, fault)
        o = fresh_oracd(models=(), llama={"server_bin": str(wrapper), "default_model": MODEL, **llama},
                        http={"listen": [f"127.0.0.1:{free_port()}"]})
        write_tiny_f32(o.models_dir / MODEL)
        o.last_body = lambda: json.loads((tmp_path / "last-body.json").read_text())
        return o.start()
    return make


def test_home_assistants_streamed_chat_gets_thinking_text_and_whole_tool_calls(scripted_http):
    o = scripted_http("tool-calls")
    client = ollama.Client(host=o.http_url)
    for keep_alive, think, fmt in (("300s", True, None), (-1, False, {"type": "object", "properties": {}})):
        chunks = list(client.chat(model="fake", messages=MESSAGES, tools=TOOLS, stream=True, keep_alive=keep_alive,
                                  options={"num_ctx": 8192}, think=think, format=fmt))
        thinking = "".join(c.message.thinking or "" for c in chunks)
        content = "".join(c.message.content or "" for c in chunks)
        calls = [tc for c in chunks for tc in (c.message.tool_calls or ())]
        assert thinking == "The user wants the light on." and content == "Turning it on."
        assert [(tc.function.name, dict(tc.function.arguments)) for tc in calls] == [("HassTurnOn", CALL)]
        final = chunks[-1]
        assert final.done and final.done_reason == "stop" and final.eval_count == 6 and final.prompt_eval_count == 12
        assert final.eval_duration == 2_500_000 and final.total_duration > 0
        assert all(not c.done for c in chunks[:-1])
        sent = o.last_body()           # what llama-server was asked
        assert sent["stream"] is True and sent["tools"] == TOOLS
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
        assert sent["chat_template_kwargs"] == {"enable_thinking": think}
        assert sent.get("json_schema") == fmt


def test_tool_results_go_back_to_the_model_and_a_non_streamed_answer_has_whole_calls(scripted_http):
    o = scripted_http("tool-calls")
    history = MESSAGES + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": CALL}}]},
        {"role": "tool", "content": '{"success": true}', "tool_name": "HassTurnOn"}]
    r = ollama.Client(host=o.http_url).chat(model=MODEL, messages=history, tools=TOOLS, stream=False)
    assert r.done and r.message.thinking == "The user wants the light on."
    assert [(tc.function.name, dict(tc.function.arguments)) for tc in r.message.tool_calls] == [("HassTurnOn", CALL)]
    sent = o.last_body()["messages"]
    assert sent[2]["tool_calls"][0]["function"] == {"name": "HassTurnOn", "arguments": json.dumps(CALL)}
    assert sent[3] == {"role": "tool", "content": '{"success": true}', "name": "HassTurnOn"}


def test_openai_tool_calls_streamed_and_not(scripted_http):
    o = scripted_http("tool-calls")
    client = openai.OpenAI(base_url=o.http_url + "/v1", api_key="none", max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.id == "call_1"
    assert r.choices[0].message.model_extra["reasoning_content"] == "The user wants the light on."   # as sent
    assert call.function.name == "HassTurnOn" and json.loads(call.function.arguments) == CALL
    assert o.last_body()["tool_choice"] == "required"
    long = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=4000)
    assert o.last_body()["stream"] is True            # above stream_above_tokens: fetched streamed, answered whole
    assert long.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    assert long.choices[0].message.content == "Turning it on." and long.usage.completion_tokens == 6
    args, names, reasoning = "", "", ""
    finish = None
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True):
        if chunk.choices:
            reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            names += tc.function.name or ""
            args += tc.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert names == "HassTurnOn" and json.loads(args) == CALL and finish == "tool_calls"
    assert reasoning == "The user wants the light on."


def test_a_crash_after_text_was_streamed_ends_the_stream_with_an_error_instead_of_repeating_it(scripted_http):
    """llama-server dies after "Hel" "lo" went out: a retry would send "hello" after "Hello", so the stream
    ends with an error event; the child is restarted and the next request is answered."""
    o = scripted_http("crash-mid-stream")
    first_pid = o.call("status")["child"]["pid"]
    client = openai.OpenAI(base_url=o.http_url + "/v1", api_key="none", max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(got) == "Hello"
    assert "not retried" in str(err.value.message)
    deadline = time.monotonic() + 30
    while (st := o.call("status")["child"])["state"] != "ready" or st["pid"] == first_pid:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    chunks = list(ollama.Client(host=o.http_url).chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(c.message.content for c in chunks) == "hello" and chunks[-1].done


def test_a_crash_before_any_text_is_retried_transparently(scripted_http):
    """The same crash on a non-streamed request: nothing reached the client yet, so it is retried once."""
    o = scripted_http("crash-mid-stream")
    r = ollama.Client(host=o.http_url).chat(model=MODEL, messages=MESSAGES, stream=False)
    assert r.message.content == "hello" and r.done
