"""Compact JSON output and fast-forward against a real oracd, llama-server and SmolLM2 (temperature 0).

Fast-forward gives the object compact sampling gives, with fewer sampled tokens; a schema it cannot
handle falls back (compact sampling, or llama-server's own schema grammar); its chunks stream the forced
spans in order; a client hanging up mid-object stops the generation (the slot is free again).
"""
from __future__ import annotations

import json
import time

import pytest

from helpers import Conn
from llama_direct import busy_slots, llama_post
from oracd.api.ffplan import learn, make_plan
from oracd.api.jsongrammar import try_compile
from oracd_protocol.schemas import COMMAND_SCHEMA

SYSTEM = (
    "You turn one spoken smart-home command into one JSON object with exactly the keys device, action, "
    "location and value. Examples:\n"
    '"switch on the hallway lights" -> {"device": "lights", "action": "on", "location": "hallway", "value": null}\n'
    '"set the thermostat to 19" -> {"device": "thermostat", "action": "set", "location": null, "value": 19}\n'
    '"play some rock music in the living room" -> {"device": "music", "action": "play", '
    '"location": "living room", "value": "rock"}\n'
    '"what\'s the weather today" -> {"device": "none", "action": "none", "location": null, "value": null}')
COMMANDS = ["Turn on the kitchen lights", "Switch off the bedroom lights", "Set the thermostat to 21",
            "Open the garage door", "Play jazz in the living room", "What's the weather like",
            "Turn off the hallway lights", "Lock the front door"]
STORY = {"type": "object", "additionalProperties": False, "required": ["title", "story", "mood"],
         "properties": {"title": {"type": "string", "maxLength": 16}, "story": {"type": "string", "maxLength": 300},
                        "mood": {"type": "string", "maxLength": 12}}}


def gen(o, text: str, **kw):
    args = dict(prompt=text, system_prompt=SYSTEM, json_schema="command", temperature=0.0, max_tokens=96,
                timeout=300)
    return o.call("generate", **{**args, **kw})


def compact_text(text: str) -> bool:
    return text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def spelling(o, text: str):
    """How the model spells each forced span in its compact answer to ``text`` (span text -> token ids), read
    from llama-server's own token ids: what fast-forward learns (``ffplan.learn``)."""
    ep = o.call("status")["child"]["endpoint"]
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    prompt = llama_post(ep, "/apply-template", {"messages": msgs,
                                                "chat_template_kwargs": {"enable_thinking": False}})["prompt"]
    r = llama_post(ep, "/completion", {"prompt": prompt, "grammar": try_compile(COMMAND_SCHEMA), "n_predict": 96,
                                       "temperature": 0, "top_k": 40, "top_p": 0.7, "n_probs": 1,
                                       "cache_prompt": True})
    return learn(make_plan(COMMAND_SCHEMA), [(p["id"], bytes(p["bytes"])) for p in r["completion_probabilities"]])


def test_fast_forward_gives_the_object_compact_sampling_gives(oracd):
    """On a batch-invariant child (a CPU box's default) fast-forward's object is compact sampling's, except
    where the model spells a forced span with other tokens for that prompt than in the answer fast-forward
    learned them from (``{"`` as one token, not ``{`` ``"``): fast-forward writes the learned tokens, the
    context differs from there.  The bench measures the share (docs/operations.md: 97-99%)."""
    pairs = []
    for _ in range(2):                   # the first pass also checks and learns (compact answers, once)
        for text in COMMANDS:
            b, c = gen(oracd, text, fast_forward=False), gen(oracd, text, fast_forward=True)
            pairs.append((text, b, c))
    learned = spelling(oracd, COMMANDS[0])        # the check's compact answer, which taught the spans
    differ = {text for text, b, c in pairs if json.loads(c["response"]) != json.loads(b["response"])}
    assert len(differ) <= 2, differ
    for text in differ:
        own = spelling(oracd, text)
        assert own is not None and learned is not None, text
        assert any(own[k] != learned[k] for k in own.keys() & learned.keys()), (text, own, learned)
    for text, b, c in pairs:
        assert b["json_output"] == {"compact": True, "fast_forward": False}
        assert compact_text(b["response"]) and compact_text(c["response"])
        assert b["usage"]["forced_tokens"] == 0 and b["usage"]["sampled_tokens"] == b["usage"]["completion_tokens"]
    fast = [(b, c) for _, b, c in pairs[len(COMMANDS):] if c["json_output"]["fast_forward"]]
    assert len(fast) >= len(COMMANDS) - 1, [c["json_output"] for _, _, c in pairs]
    for b, c in fast:
        u = c["usage"]
        assert u["forced_tokens"] > 0 and u["sampled_tokens"] + u["forced_tokens"] == u["completion_tokens"]
        assert u["sampled_tokens"] < b["usage"]["sampled_tokens"]


def test_a_batch_invariant_child_fast_forwards_command_by_default_with_compacts_objects(oracd):
    """A CPU-only child is started batch-invariant ([llama] batch_invariant = "auto"): there a request that
    says nothing about fast-forward gets it for the built-in ``command`` schema, with compact sampling's object."""
    assert oracd.call("status")["child"]["batch_invariant"] is True
    seen = []
    for text in COMMANDS[:4]:
        b, d = gen(oracd, text, fast_forward=False), gen(oracd, text)
        assert json.loads(d["response"]) == json.loads(b["response"]), text
        seen.append(d["json_output"])
    # the first default answer may be the check's (compact sampling, once per model and schema)
    assert seen[1:] == [{"compact": True, "fast_forward": True}] * 3, seen


def test_raw_prompts_are_fast_forwarded_too(oracd):
    def chatml(text: str) -> str:
        return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
                "<|im_start|>assistant\n")
    seen = []
    for _ in range(2):
        for text in COMMANDS[:3]:
            b = gen(oracd, chatml(text), system_prompt=None, raw=True, fast_forward=False)
            c = gen(oracd, chatml(text), system_prompt=None, raw=True, fast_forward=True)
            assert b["raw"] is True and c["raw"] is True
            assert json.loads(c["response"]) == json.loads(b["response"]), text
            seen.append(c["json_output"]["fast_forward"])
    assert all(seen[3:]), seen


def test_a_schema_it_cannot_handle_falls_back(oracd):
    optional = {"type": "object", "properties": {"device": {"type": "string", "maxLength": 20},
                                                 "room": {"type": "string", "maxLength": 20}},
                "required": ["device"], "additionalProperties": False}
    r = gen(oracd, "Turn on the kitchen lights", json_schema=optional, fast_forward=True)
    assert r["json_output"] == {"compact": True, "fast_forward": False}     # key order not fixed: compact only
    assert compact_text(r["response"]) and "device" in json.loads(r["response"])
    dated = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"]}
    r = gen(oracd, "What is the date of new year 2030? Answer as JSON.", json_schema=dated, fast_forward=True)
    assert "json_output" not in r                                             # llama-server's own grammar
    assert len(json.loads(r["response"])["day"]) == 10


def test_streaming_yields_the_forced_spans_in_order(oracd):
    text = "Turn off the bedroom lights"
    for _ in range(2):
        assert gen(oracd, text, fast_forward=True)["response"]      # checked and learned before it streams
    with Conn(oracd.socket, 300) as c:
        r = c.call("generate", prompt=text, system_prompt=SYSTEM, json_schema="command", temperature=0.0,
                   max_tokens=96, timeout=300, stream=True, fast_forward=True)
        chunks = [n["params"]["text"] for n in c.notifications if n["method"] == "generate.chunk"]
    assert r["json_output"]["fast_forward"] is True
    assert "".join(chunks) == r["response"]
    forced = [s for s in make_plan(COMMAND_SCHEMA).forced]
    at = [chunks.index(s) for s in forced]
    assert at == sorted(at) and at[0] == 0 and at[-1] == len(chunks) - 1


def test_hanging_up_mid_object_stops_the_generation(oracd):
    endpoint = oracd.call("status")["child"]["endpoint"]
    prompt = "Write a long, sad story about a dragon. Answer as JSON with a title, the story and a mood."
    args = dict(prompt=prompt, json_schema=STORY, temperature=0.0, max_tokens=400, timeout=300,
                fast_forward=True, compact_json=True)
    for _ in range(2):                                           # the check, then a fast-forwarded answer
        r = oracd.call("generate", **args)
    assert r["json_output"]["fast_forward"] is True, r
    c = Conn(oracd.socket, 300)
    c.send_raw((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "generate",
                            "params": dict(args, stream=True)}) + "\n").encode())
    seen = ""
    while '","story":"' not in seen:                             # the forced span before the long value
        msg = c.recv()
        assert msg.get("method") == "generate.chunk", msg
        seen += msg["params"]["text"]
    c.close()                                                    # hang up mid-object
    deadline = time.monotonic() + 15
    while busy_slots(endpoint) or oracd.call("status")["requests"]["in_flight"]:
        assert time.monotonic() < deadline, "the generation went on after the client hung up"
        time.sleep(0.05)
    assert gen(oracd, "Turn on the kitchen lights")["response"]     # and oracd serves on
