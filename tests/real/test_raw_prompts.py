"""Raw prompts (the caller's own template, llama-server's /completion), prefill, and prewarmed prefixes,
against the real llama-server and SmolLM2."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from helpers import SMOL, Oracd, RPCError, wait_for
from llama_direct import busy_slots

CHATML = ("<|im_start|>system\nYou answer in JSON.<|im_end|>\n<|im_start|>user\n"
          "Turn on the kitchen lights.<|im_end|>\n<|im_start|>assistant\n")
GRAMMAR = ('root ::= "{\\"device\\":\\"" device "\\",\\"action\\":\\"" action "\\"}"\n'
           'device ::= "lights" | "heating"\naction ::= "on" | "off"\n')


@pytest.fixture(scope="module")
def od():
    o = Oracd().start()
    yield o
    o.cleanup()


def test_raw_prompt_reaches_the_model_once_and_auto_detects_template_markers(od):
    raw = od.call("generate", prompt=CHATML, raw=True, max_tokens=8, temperature=0)
    auto = od.call("generate", prompt=CHATML, raw="auto", max_tokens=8, temperature=0)
    chat = od.call("generate", prompt=CHATML, raw=False, max_tokens=8, temperature=0)
    assert raw["raw"] is True and auto["raw"] is True and chat["raw"] is False
    assert raw["response"] == auto["response"]
    # wrapped in the chat template a second time, the same text costs about twice the tokens
    assert raw["usage"]["prompt_tokens"] < 30 < chat["usage"]["prompt_tokens"]
    plain = od.call("generate", prompt="Turn on the kitchen lights.", raw="auto", max_tokens=4)
    assert plain["raw"] is False                       # no markers: the model's chat template applies


def test_prefill_begins_the_answer_in_both_formats(od):
    for raw in (True, False):
        r = od.call("generate", prompt=CHATML, raw=raw, prefill='{"device":"', max_tokens=10, temperature=0)
        assert r["response"].startswith('{"device":"') and r["prefill_included"] is True, r
    with pytest.raises(RPCError) as err:
        od.call("generate", prompt=CHATML, raw=True, prefill="")
    assert err.value.code == -32602


def test_raw_with_grammar_stop_stream_and_errors(od):
    r = od.call("generate", prompt=CHATML, raw=True, grammar=GRAMMAR, max_tokens=30, temperature=0)
    assert set(json.loads(r["response"])) == {"device", "action"}
    r = od.call("generate", prompt="Count: 1, 2, 3,", raw=True, stop=[" 5"], max_tokens=30, temperature=0)
    assert " 5" not in r["response"] and r["finish_reason"] == "stop"
    with od.conn() as c:
        c.send_raw(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "generate",
                               "params": {"prompt": CHATML, "raw": True, "stream": True, "max_tokens": 8,
                                          "temperature": 0}}).encode() + b"\n")
        chunks = []
        while True:
            msg = c.recv()
            if msg.get("method") == "generate.chunk":
                chunks.append(msg["params"]["text"])
            else:
                break
    assert msg["id"] == 7 and "".join(chunks) == msg["result"]["response"] and len(chunks) > 1
    with pytest.raises(RPCError) as err:
        od.call("generate", prompt=CHATML, raw=True, system_prompt="no")
    assert err.value.code == -32602 and "raw prompt" in err.value.message
    with pytest.raises(RPCError) as err:
        od.call("generate", prompt=CHATML, raw="sometimes")
    assert err.value.code == -32602


def test_raw_timeout_aborts_upstream(od):
    endpoint = od.call("status")["child"]["endpoint"]
    t0 = time.monotonic()
    resp = od.request("generate", prompt="1, 2, 3, 4, 5, 6, 7,", raw=True, max_tokens=2000, timeout=1.5, temperature=0)
    assert resp["error"]["code"] == -32003 and time.monotonic() - t0 < 10
    deadline = time.monotonic() + 10
    while busy_slots(endpoint):
        assert time.monotonic() < deadline, "the raw generation kept running upstream"
        time.sleep(0.05)


def test_profile_prompt_format_raw(fresh_oracd, tmp_path):
    pfile = tmp_path / "models.toml"
    pfile.write_text(f'[profiles."{SMOL}"]\nprompt_format = "raw"\nmax_tokens = 6\n')
    o = fresh_oracd(llama={"profiles_file": str(pfile)}).start()
    assert o.call("generate", prompt=CHATML, temperature=0)["raw"] is True
    assert o.call("generate", prompt=CHATML, raw=False, temperature=0)["raw"] is False


def test_prewarmed_raw_prefix_serves_the_first_command_from_cache_and_survives_restarts(fresh_oracd):
    o = fresh_oracd().start()
    prefix = ("Match the input to JSON. Devices: [lights, heating, fan, blinds]. Locations: [kitchen, bedroom, "
              "hall, office]. Use UNKNOWN if no match.\n\nUser: ")
    cold = o.call("generate", prompt=prefix + "turn off the fan\nAssistant: ", raw=True, max_tokens=4, temperature=0)
    assert cold["usage"]["cached_tokens"] == 0
    w = o.call("prewarm", prefix=prefix)
    assert w["how"] == "prefilled" and min(w["cached_tokens"]) == w["prompt_tokens"] > 30
    first = o.call("generate", prompt=prefix + "turn on the kitchen lights\nAssistant: ", raw=True, max_tokens=4,
                   temperature=0)
    assert first["usage"]["cached_tokens"] >= w["prompt_tokens"] - 2, first["usage"]
    pid = o.call("status")["child"]["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_for(lambda: (lambda c: c if c["state"] == "ready" and c["pid"] not in (pid, None) else None)(
        o.call("status")["child"]), 60, "the restarted llama-server to be ready")
    assert st["warm"]["how"] == "restored" and st["warm"]["prompt_tokens"] == w["prompt_tokens"]
    again = o.call("generate", prompt=prefix + "turn on the kitchen lights\nAssistant: ", raw=True, max_tokens=4,
                   temperature=0)
    assert again["usage"]["cached_tokens"] >= w["prompt_tokens"] - 2
    o.stop()
    o2 = Oracd(root=o.root).start()                   # an oracd restart remembers the prefix too
    try:
        assert o2.call("status")["child"]["warm"]["how"] == "restored"
    finally:
        o2.stop()
