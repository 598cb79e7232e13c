"""Ollama's API on oracd's HTTP front door, called with the real ``ollama`` library, against the real llama-server.

One oracd for the module: SmolLM2 (the default, with the alias "smol:135m") and Gemma 3 (a second model,
whose profile gives it a chat template that renders tools), on loopback without a key.
"""
from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import ollama
import pytest

from helpers import GEMMA, SMOL, Oracd, free_port

TEMPLATE = """{%- if tools %}<|im_start|>system
You can call these tools: {{ tools | tojson }}<|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
TOOLS = [{"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on/opens a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]
SCHEMA = {"type": "object", "properties": {"response": {"type": "string", "maxLength": 40}},
          "required": ["response"], "additionalProperties": False}
HA_MESSAGES = [{"role": "system", "content": "You are a voice assistant for Home Assistant. Answer briefly."},
               {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def o():
    root = Path(tempfile.mkdtemp(prefix="oracd-t-", dir="/tmp"))
    (root / "tools.jinja").write_text(TEMPLATE)
    (root / "models.toml").write_text(f'[profiles."{SMOL}"]\naliases = ["smol:135m"]\n\n'
                                      f'[profiles."{GEMMA}"]\nchat_template = "{root / "tools.jinja"}"\n')
    d = Oracd(root=root, models=(SMOL, GEMMA), llama={"profiles_file": str(root / "models.toml")},
              http={"listen": [f"127.0.0.1:{free_port()}"]})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def client(o):
    return ollama.Client(host=o.http_url, timeout=120)


def test_root_and_version_answer_the_probes(o):
    import urllib.request
    with urllib.request.urlopen(o.http_url + "/", timeout=30) as r:
        assert r.status == 200 and r.read() == b"Ollama is running"
    with urllib.request.urlopen(o.http_url + "/api/version", timeout=30) as r:
        assert json.loads(r.read())["version"]


def test_list_names_every_model_by_file_and_alias_with_header_details(client):
    models = {m.model: m for m in client.list().models}
    assert set(models) == {SMOL, GEMMA, "smol:135m"}
    smol, gemma = models[SMOL].details, models[GEMMA].details
    assert (smol.family, smol.parameter_size, smol.quantization_level, smol.format) == ("llama", "135M", "Q4_1", "gguf")
    assert (gemma.family, gemma.parameter_size, gemma.quantization_level) == ("gemma3", "270M", "Q4_K_M")
    assert models[SMOL].size > 1_000_000 and len(models[SMOL].digest) == 64


def test_show_reads_the_gguf_header(client):
    s = client.show("smol:135m")
    assert s.details.family == "llama" and s.details.parameter_size == "135M"
    assert s.modelinfo["llama.context_length"] == 8192 and s.modelinfo["general.architecture"] == "llama"
    assert "completion" in s.capabilities and "tools" in s.capabilities
    assert client.show(GEMMA).modelinfo["gemma3.context_length"] == 32768
    assert client.show(SMOL[:-5] + ":latest").details.family == "llama"     # Ollama's implicit tag
    with pytest.raises(ollama.ResponseError) as err:
        client.show("llama3.2")
    assert err.value.status_code == 404


def test_ps_shows_the_warm_model_pinned_with_the_context_a_request_gets(client):
    [m] = client.ps().models
    assert m.model == SMOL and m.details.family == "llama"
    assert m.expires_at.year == 2318                  # the default model stays warm
    assert 0 < m.context_length <= 1024               # ctx_size 1024 shared by 2 slots: what one request gets


def test_home_assistants_exact_chat_call_streamed(o, client):
    """chat(model, messages, tools, stream=True, keep_alive, options={"num_ctx": 8192}, think, format) as Home
    Assistant's Ollama integration makes it; num_ctx never restarts the warm model."""
    pid = o.child_pid()
    for keep_alive, fmt in (("300s", SCHEMA), (-1, None)):
        chunks = list(client.chat(model="smol:135m", messages=HA_MESSAGES, tools=TOOLS, stream=True,
                                  keep_alive=keep_alive, options={"num_ctx": 8192}, think=None, format=fmt))
        text = "".join(c.message.content or "" for c in chunks)
        final = chunks[-1]
        assert final.done and all(not c.done for c in chunks[:-1]) and final.model == "smol:135m"
        assert final.done_reason in ("stop", "length") and text.strip()
        assert final.eval_count > 0 and final.prompt_eval_count > 0
        assert final.total_duration >= final.eval_duration > 0 and final.prompt_eval_duration >= 0
        assert final.load_duration >= 0
        assert not any(c.message.tool_calls for c in chunks)       # SmolLM2 does not call tools
        if fmt is not None:
            assert text.lstrip().startswith("{") and '"response"' in text
            if final.done_reason == "stop":
                assert list(json.loads(text)) == ["response"]
    assert o.child_pid() == pid, "num_ctx restarted the warm model"


def test_chat_not_streamed_with_options(client):
    r = client.chat(model=SMOL, messages=[{"role": "user", "content": "Write a long story."}], stream=False,
                    options={"num_predict": 4, "temperature": 0, "seed": 3, "top_k": 10, "top_p": 0.9,
                             "repeat_penalty": 1.1, "stop": ["\n\n"]})
    assert r.done and r.done_reason == "length" and r.eval_count == 4 and r.message.content
    r = client.chat(model=SMOL, messages=[{"role": "user", "content": "Is the sky blue?"}], stream=False,
                    options={"grammar": 'root ::= "yes" | "no"', "num_predict": -1})     # -1: no limit
    assert r.message.content in ("yes", "no") and r.done_reason == "stop"
    r = client.chat(model=SMOL, messages=[{"role": "user", "content": "A colour?"}], stream=False, format="json",
                    options={"num_predict": 30})
    assert r.message.content.lstrip().startswith("{")


def test_generate_streamed_or_not_with_system_and_raw(client):
    kw = dict(model=SMOL, prompt="Name a fruit.", system="Answer with one word.",
              options={"num_predict": 6, "temperature": 0})
    whole = client.generate(stream=False, **kw)
    chunks = list(client.generate(stream=True, **kw))
    assert "".join(c.response for c in chunks) == whole.response and whole.response
    assert chunks[-1].done and chunks[-1].eval_count == whole.eval_count
    raw = client.generate(model=SMOL, prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", raw=True,
                          options={"num_predict": 5, "temperature": 0}, stream=False)
    assert raw.response and raw.prompt_eval_count < whole.prompt_eval_count     # no system prompt, own template
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=SMOL, prompt="What is in this picture?", images=[b"\x89PNG\r\n"])
    assert err.value.status_code == 400 and "vision projector" in err.value.error


def test_pull_of_a_present_model_succeeds_and_of_an_absent_one_names_the_models_dir(o, client):
    assert [p.status for p in client.pull(SMOL, stream=True)][-1] == "success"
    assert client.pull("smol:135m").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3.2:1b")
    assert err.value.status_code == 404
    assert "oracd does not download models" in err.value.error and str(o.models_dir) in err.value.error


def test_other_routes_are_not_supported_in_ollamas_shape(client):
    for call in (lambda: client.embed(model=SMOL, input="hi"), lambda: client.delete(SMOL),
                 lambda: client.copy(SMOL, "x")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 501 and "not supported by oracd" in err.value.error


def test_bad_bodies_get_400_in_ollamas_shape(o, client):
    import urllib.error
    import urllib.request
    for body in (b'{"model": "x", "messages": [', b'\xff\xfe', b'{"model": 5}',
                 b'{"model": "' + SMOL.encode() + b'", "messages": [{"role": "user", "content": "x"}], '
                 b'"options": {"num_predict": "many"}}'):
        req = urllib.request.Request(o.http_url + "/api/chat", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400
        reply = json.loads(err.value.read())
        assert set(reply) == {"error"} and reply["error"]
    assert client.chat(model=SMOL, messages=[{"role": "user", "content": "hi"}], stream=False,
                       options={"num_predict": 2}).done


def test_tools_reach_the_models_chat_template(client):
    """Gemma's profile template renders tools: the same chat costs more prompt tokens with them."""
    msgs = [{"role": "user", "content": "Turn on the kitchen light."}]
    without = client.chat(model=GEMMA, messages=msgs, stream=False, options={"num_predict": 1})
    with_tools = client.chat(model=GEMMA, messages=msgs, tools=TOOLS, stream=False, options={"num_predict": 1})
    assert with_tools.prompt_eval_count > without.prompt_eval_count + 20


def _model(o) -> str:
    return o.call("status")["child"]["model"]


def _wait_model(o, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _model(o) != name or o.call("status")["child"]["state"] != "ready":
        assert time.monotonic() < deadline, o.call("status")["child"]
        time.sleep(0.1)


def test_keep_alive_maps_onto_return_to_default(o, client):
    """0: back to the default right after the request; a duration: back after that much idle time;
    -1: pinned; the default model ignores all of them and stays warm."""
    msgs = [{"role": "user", "content": "hi"}]
    client.chat(model=GEMMA, messages=msgs, stream=False, keep_alive=0, options={"num_predict": 2})
    _wait_model(o, SMOL)
    client.chat(model=GEMMA, messages=msgs, stream=False, keep_alive=-1, options={"num_predict": 2})
    [m] = client.ps().models
    assert m.model == GEMMA and m.expires_at.year == 2318
    client.chat(model=GEMMA, messages=msgs, stream=False, keep_alive="3s", options={"num_predict": 2})
    [m] = client.ps().models
    left = (m.expires_at - datetime.now(timezone.utc)).total_seconds()
    assert m.model == GEMMA and -1 < left <= 3.5, left
    _wait_model(o, SMOL)
    client.chat(model=SMOL, messages=msgs, stream=False, keep_alive=0, options={"num_predict": 2})
    [m] = client.ps().models
    assert m.model == SMOL and m.expires_at.year == 2318
    assert client.generate(model=GEMMA, keep_alive=0).done_reason == "unload"     # load, then straight back
    _wait_model(o, SMOL)


def test_num_ctx_restarts_the_model_only_when_the_operator_opted_in(fresh_oracd):
    """[http] apply_num_ctx = true: a larger num_ctx restarts the model with it (a new pid, /api/ps shows the
    context), a smaller one changes nothing; the module's oracd (off, the default) never restarts for it."""
    d = fresh_oracd(http={"listen": [f"127.0.0.1:{free_port()}"], "apply_num_ctx": True}).start()
    c = ollama.Client(host=d.http_url, timeout=120)
    before = c.ps().models[0].context_length
    pid = d.child_pid()
    msgs = [{"role": "user", "content": "hi"}]
    r = c.chat(model=SMOL, messages=msgs, stream=False, options={"num_ctx": before * 2, "num_predict": 2})
    assert r.done and d.child_pid() != pid
    assert c.ps().models[0].context_length == before * 2
    pid = d.child_pid()
    c.chat(model=SMOL, messages=msgs, stream=False, options={"num_ctx": before, "num_predict": 2})
    assert d.child_pid() == pid and c.ps().models[0].context_length == before * 2
