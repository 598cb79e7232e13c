"""Today's ORAC shim, the pure parts: the grammar-file cache, ORAC's prompt rules, the warm prefix records."""
from __future__ import annotations

import os
import time

from oracd_client.compat.grammar_files import GrammarFiles
from oracd_client.compat.today_prompts import (DEFAULT_INSTRUCTION, JSON_SYSTEM_PROMPT, clean_response, command_head,
                                               generate_params,
                                               format_prompt, grammar_hint, predicted_prefix, sampling,
                                               stable_prefix, system_slot, template_head, user_lead_in)
from oracd_client.compat.today_warm import WarmRecord, WarmState

CHATML = ("<|im_start|>system\n{system_prompt}\n<|im_end|>\n<|im_start|>user\n{user_prompt}\n<|im_end|>\n"
          "<|im_start|>assistant\n")
GRAMMAR = ('root ::= "{" device action location "}"\n'
           'device ::= "lights" | "heating" | "UNKNOWN"\n'
           'set-action ::= "set " pct\n'
           'action ::= "on" | "off" | set-action\n'
           'location ::= "kitchen" | "living room" | "UNKNOWN"\n')


# ---------------------------------------------------------------------- grammar files
def test_unchanged_grammar_file_costs_one_stat(tmp_path):
    p = tmp_path / "g.gbnf"
    p.write_text(GRAMMAR)
    old = time.time_ns() - 10 * 10**9
    os.utime(p, ns=(old, old))                 # written long ago: its stat can be trusted
    g = GrammarFiles()
    assert g.read(str(p)) == GRAMMAR and g.reads == 1
    t0 = time.perf_counter()
    for _ in range(10_000):
        assert g.read(str(p)) is not None
    per_call = (time.perf_counter() - t0) / 10_000
    assert g.reads == 1 and per_call < 50e-6, per_call       # a stat and a dict lookup, no open


def test_rewrites_are_seen_at_once_even_with_the_same_size_and_inode(tmp_path):
    p = tmp_path / "g.gbnf"
    g = GrammarFiles()
    texts = [GRAMMAR.replace("kitchen", f"room{i:02d}"[:7]) for i in range(20)]
    assert len({len(t) for t in texts}) == 1            # all the same size
    p.write_text(texts[0])
    inode = p.stat().st_ino
    assert g.read(str(p)) == texts[0]
    for t in texts[1:]:                                 # in place, back to back: within one timestamp tick
        with open(p, "w") as fh:
            fh.write(t)
        assert g.read(str(p)) == t
    assert p.stat().st_ino == inode
    v = g.version(str(p))
    p.write_text(texts[-1])                             # same text again: same version
    assert g.read(str(p)) == texts[-1] and g.version(str(p)) == v
    tmp = tmp_path / "new"
    tmp.write_text(GRAMMAR)
    os.replace(tmp, p)                                  # an atomic replace (new inode)
    assert g.read(str(p)) == GRAMMAR and g.version(str(p)) == v + 1
    p.unlink()
    assert g.read(str(p)) is None and g.read(str(tmp_path / "missing.gbnf")) is None


# ---------------------------------------------------------------------- ORAC's prompt rules
def test_template_pieces_and_system_slot():
    assert template_head(CHATML, "S") == "<|im_start|>system\nS\n<|im_end|>\n<|im_start|>user\n"
    assert user_lead_in(CHATML) == "\n<|im_end|>\n<|im_start|>user\n"
    assert format_prompt("{system_prompt}\n\n{user_prompt}", "S", "U") == "S\n\nU"
    cfg = {"system_prompt": "model's"}
    assert system_slot(cfg, True, "mine") == JSON_SYSTEM_PROMPT
    assert system_slot(cfg, False, "mine") == "mine" and system_slot(cfg, False, None) == "model's"


def test_grammar_hint_reads_the_grammar_as_orac_does():
    assert grammar_hint(GRAMMAR) == ("Devices: [lights, heating]. Locations: [kitchen, living room]. "
                                     "Use UNKNOWN if no match.")
    assert grammar_hint('root ::= "x"\n') == "Output JSON with device, action, location. Use UNKNOWN if unclear."
    assert grammar_hint('device ::= "fan"\n') == "Devices: [fan]. Locations: [UNKNOWN]. Use UNKNOWN if no match."


def test_predicted_prefix_is_the_prefix_of_the_prompt_orac_sends():
    service_prompt = command_head("/no_think Match input to JSON.", GRAMMAR) + \
        'turn on the kitchen lights\nAssistant: {"device":"'
    sent = format_prompt(CHATML, "S", service_prompt)
    predicted = predicted_prefix(CHATML, "S", None, GRAMMAR)
    assert sent.startswith(predicted) and predicted.endswith("\n\nUser: ")
    assert stable_prefix(CHATML, "S", service_prompt) == predicted
    assert DEFAULT_INSTRUCTION in predicted
    # a free-form prompt that carries the template itself: shared up to its own user slot
    inner = format_prompt(CHATML, "inner", "cmd")
    assert stable_prefix(CHATML, "S", inner) == template_head(CHATML, "S") + template_head(CHATML, "inner")
    assert stable_prefix(CHATML, "S", "just text") == template_head(CHATML, "S")
    assert predicted_prefix(CHATML, "S", None, None) == template_head(CHATML, "S")


def test_sampling_rules():
    assert sampling(0.7, 0.7, 40, True, {"temperature": 0.2}) == (0.0, 0.8, 30)
    assert sampling(0.7, 0.2, 10, True, {}) == (0.0, 0.2, 10)          # the caller's values are kept
    assert sampling(0.7, 0.7, 40, False, {"temperature": 0.2, "top_p": 0.5, "top_k": 7}) == (0.2, 0.5, 7)
    assert sampling(0.3, 0.6, 5, False, {"temperature": 0.2}) == (0.3, 0.6, 5)


def test_generate_params_send_orac_prompts_raw_with_its_grammar_rules():
    p = generate_params("<|im_start|>user\nhi", "m.gguf", 0.1, 0.9, 10, 64, 30, json_mode=True, grammar_text=None)
    assert p == {"prompt": "<|im_start|>user\nhi", "model": "m.gguf", "raw": True, "temperature": 0.1, "top_p": 0.9,
                 "top_k": 10, "max_tokens": 64, "timeout": 30.0, "grammar": "json"}
    g = 'root ::= "{" "}"'
    p = generate_params("x", "m.gguf", 0.1, 0.9, 10, 64, 30, json_mode=False, grammar_text=g)
    assert p["grammar"] == g and p["stop"] == ["<|im_end|>", "<|im_start|>", "<think>", "</think>"]
    # GBNF text that happens to end in ".gbnf" must not be read by oracd as a file name
    tricky = 'root ::= "{}"  # shaped like default.gbnf'
    assert generate_params("x", "m", 0, 1, 1, 1, 1, True, tricky)["grammar"] == tricky + "\n"


def test_clean_response_as_orac():
    assert clean_response(' {"a": 1} ', True) == '{"a": 1}'
    assert clean_response('sure: {"a": 1} done', True) == '{"a": 1}'
    assert clean_response('{"a": }', True) == \
        '{"error": "Invalid JSON generated by model", "raw_response": "{\\"a\\": }"}'
    assert clean_response("nothing", True) == '{"error": "No JSON found in model response", "raw_response": "nothing"}'
    assert clean_response("<think></think> hello\n  there<|im_end|>", False) == "hello there"
    assert clean_response("  ", False) == "No response generated"


# ---------------------------------------------------------------------- warm records
def test_warm_record_follows_the_grammar_and_persists(tmp_path):
    head = template_head(CHATML, "S")
    rec = WarmRecord(head + command_head("Be terse.", GRAMMAR), False, None, "/g.gbnf", grammar_hint(GRAMMAR))
    new_grammar = GRAMMAR.replace('"kitchen" | ', '"garage" | ')
    moved = rec.with_grammar("/g.gbnf", new_grammar)
    assert moved.prefix == head + command_head("Be terse.", new_grammar) and moved.hint == grammar_hint(new_grammar)
    assert rec.with_grammar("/g.gbnf", GRAMMAR) == rec
    path = tmp_path / "state.json"
    WarmState(str(path)).set("m.gguf", moved)
    assert WarmState(str(path)).get("m.gguf") == moved
    s = WarmState(str(path))
    s.set("m.gguf", None)
    assert WarmState(str(path)).get("m.gguf") is None
    WarmState(str(tmp_path / "no" / "dir" / "state.json")).set("m", moved)     # unwritable: kept in memory only
