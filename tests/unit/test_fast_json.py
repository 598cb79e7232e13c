"""Compact JSON grammar, fast-forward plan and span learning: the pure parts (api/jsongrammar.py, api/ffplan.py).

The grammars oracd writes have no recursion, so the tests turn them into Python regexes (``to_regex``)
and check the exact set of texts they accept against json.dumps of valid and invalid values.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from oracd.api.ffplan import Plan, kept, learn, make_plan, try_plan
from oracd.api.generate import Sent, build_request, json_output
from oracd.api.jsongrammar import Unsupported, compile_compact, try_compile
from oracd.config import Config, Profile
from oracd_protocol.schemas import COMMAND_SCHEMA

_TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z][A-Za-z0-9-]*|\{\d*,?\d*\}|[()|*+?])')


def _literal(text: str) -> str:
    return re.escape(_unescape(text[1:-1]))


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\":
            c = s[i + 1]
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(c, c))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def to_regex(grammar: str) -> "re.Pattern[str]":
    """A Python regex accepting what a non-recursive GBNF grammar accepts (test helper)."""
    rules = {}
    for line in grammar.strip().splitlines():
        name, body = line.split(" ::= ", 1)
        rules[name] = body

    def expand(name: str, depth: int = 0) -> str:
        assert depth < 50, "recursive grammar"
        body = rules[name]
        out = []
        for tok in _TOKEN.findall(body):
            if tok.startswith('"'):
                out.append(_literal(tok))
            elif tok.startswith("["):
                out.append(tok)
            elif tok[0].isalpha():
                out.append("(?:" + expand(tok, depth + 1) + ")")
            elif tok == "(":
                out.append("(?:")
            else:
                out.append(tok)
        return "".join(out)

    return re.compile(expand("root"), re.S)


def accepts(grammar: str, value) -> bool:
    return to_regex(grammar).fullmatch(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) is not None


CMD = compile_compact(COMMAND_SCHEMA)


@pytest.mark.parametrize("value", [
    {"device": "lights", "action": "on", "location": "kitchen", "value": None},
    {"device": "thermostat", "action": "set", "location": None, "value": 21},
    {"device": "blinds", "action": "open", "location": "bedroom", "value": -0.5e3},
    {"device": "none", "action": "none", "location": None, "value": "50%"},
    {"device": 'say \"hi\" \\ é', "action": "toggle", "location": "x" * 32, "value": "a\nb"},
    {"device": "", "action": "lock", "location": "", "value": 0},
])
def test_command_grammar_accepts_valid_commands_written_compactly(value):
    assert accepts(CMD, value)


@pytest.mark.parametrize("value", [
    {"device": "lights", "action": "dim", "location": None, "value": None},          # not in the enum
    {"device": "x" * 33, "action": "on", "location": None, "value": None},           # over maxLength
    {"device": "lights", "action": "on", "location": None},                          # value missing
    {"action": "on", "device": "lights", "location": None, "value": None},           # order is fixed
    {"device": "lights", "action": "on", "location": None, "value": True},           # not a number/string/null
    {"device": "lights", "action": "on", "location": None, "value": None, "x": 1},   # no additional properties
])
def test_command_grammar_rejects_invalid_commands(value):
    assert not accepts(CMD, value)


def test_no_optional_whitespace_only_the_compact_text():
    pretty = json.dumps({"device": "lights", "action": "on", "location": None, "value": None}, indent=1)
    spaced = '{"device": "lights", "action": "on", "location": null, "value": null}'
    assert not to_regex(CMD).fullmatch(pretty) and not to_regex(CMD).fullmatch(spaced)
    assert to_regex(CMD).fullmatch('{"device":"lights on","action":"on","location":null,"value":null}')


def test_numbers_escapes_and_leading_zeros_as_llama_cpp_accepts_them():
    g = compile_compact({"type": "object", "properties": {"n": {"type": "number"}, "i": {"type": "integer"},
                                                          "s": {"type": "string"}}, "required": ["n", "i", "s"]})
    rx = to_regex(g)
    assert rx.fullmatch('{"n":1.5E+10,"i":-7,"s":"\\u00e9\\t"}')
    assert not rx.fullmatch('{"n":01,"i":-7,"s":""}')            # integral-part: no leading zero
    assert not rx.fullmatch('{"n":1,"i":1.5,"s":""}')            # integer
    assert not rx.fullmatch('{"n":1,"i":1,"s":"\\x"}')           # bad escape
    assert not rx.fullmatch('{"n":1,"i":1,"s":"\x01"}')          # control character


def test_optional_properties_any_subset_in_order_nested_objects_and_arrays():
    schema = {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "boolean"}},
        "c": {"type": "object", "properties": {"d": {"type": "null"}}, "additionalProperties": False},
        "e": {"enum": ["x", 1, None, True]}}, "required": ["a"]}
    g = compile_compact(schema)
    for v in ({"a": 1}, {"a": 1, "b": []}, {"a": 1, "c": {}}, {"a": 1, "b": [True, False], "c": {"d": None}},
              {"a": 1, "e": None}, {"a": 1, "b": [True], "e": "x"}):
        assert accepts(g, v), v
    for v in ({}, {"b": [True]}, {"a": 1, "c": {"d": 1}}, {"a": 1, "e": "y"}, {"a": 1, "c": {}, "b": []}):
        assert not accepts(g, v), v
    assert accepts(compile_compact({"type": "object", "properties": {"o": {"type": "integer"}}}), {})


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x$"}}},
    {"type": "object", "properties": {"a": {"type": "string", "format": "date"}}},
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
    {"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}},
    {"type": "object", "additionalProperties": True, "properties": {}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}},
    {"type": "object", "properties": {"a": {"enum": [1.5]}}},
    {"type": "object", "properties": {"a": {}}},
    {"type": "array"},
    "command",
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10 ** 9}}},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 2001}}},     # llama.cpp's parser refuses
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 2001}}},     # more than 2000 repetitions
    {"type": "object", "properties": {f"k{n}": {"type": "string", "description": "x" * 100} for n in range(1000)}},
])
def test_anything_outside_the_subset_is_unsupported(schema):
    with pytest.raises(Unsupported):
        compile_compact(schema)
    assert try_compile(schema) is None


# ------------------------------------------------------------------ the fast-forward plan

def test_command_plan_forces_keys_and_string_quotes_and_leaves_colons_before_unions_to_the_model():
    plan = make_plan(COMMAND_SCHEMA)
    assert plan.forced == ('{"device":"', '","action":"', '","location', ',"value', "}")
    assert [v.lead for v in plan.values] == ["", "", '":', '":']
    assert [v.quoted for v in plan.values] == [True, True, False, False]
    assert [plan.stop(i) for i in range(4)] == ['"', '"', ",", "}"]


def test_each_step_grammar_is_the_compact_grammar_of_the_rest_of_the_object():
    plan = make_plan(COMMAND_SCHEMA)
    whole = '{"device":"lights","action":"on","location":"kitchen","value":21}'
    assert to_regex(plan.step_grammar(0)).fullmatch(whole[len('{"device":"'):])
    assert to_regex(plan.step_grammar(2)).fullmatch('":"kitchen","value":21}')
    assert to_regex(plan.step_grammar(3)).fullmatch('":null}')
    assert not to_regex(plan.step_grammar(3)).fullmatch('": null}')
    assert not to_regex(plan.step_grammar(1)).fullmatch('dim","location":null,"value":null}')


def test_value_complete_tells_a_real_stop_from_one_inside_a_value():
    plan = make_plan(COMMAND_SCHEMA)
    assert plan.value_complete(0, "lights") == "lights"
    assert plan.value_complete(0, 'say \\') is None              # the stop fired on \" inside the string
    assert plan.value_complete(2, '":"kitchen"') == '"kitchen"'
    assert plan.value_complete(2, '":null') == "null"
    assert plan.value_complete(2, '":"kitchen') is None          # the stop fired on a , inside the string
    assert plan.value_complete(3, '":21') == "21"


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a"]},
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}, "required": ["a"]},
    {"type": "object", "properties": {}, "required": []},
    {"type": "string"},
    {"type": "object", "properties": {"a,": {"type": "null"}, "b": {"type": "null"}},   # the stop "," is in
     "required": ["a,", "b"]},                                                         # the text sampled first
])
def test_no_plan_where_order_is_not_fixed_or_stops_are_not_clean(schema):
    assert try_plan(schema) is None


def test_nested_all_required_objects_are_flattened():
    schema = {"type": "object", "required": ["a", "n"], "properties": {
        "a": {"type": "string"},
        "n": {"type": "object", "required": ["b"], "properties": {"b": {"type": "integer"}}}}}
    plan = make_plan(schema)
    assert plan.forced == ('{"a":"', '","n":{"b', "}}")
    assert plan.values[1].lead == '":'


# ------------------------------------------------------------------ learning the model's own span tokens

def _pieces(*texts):
    return [(1000 + n, t.encode()) for n, t in enumerate(texts)]


def test_learn_reads_the_models_tokens_for_each_span_off_a_compact_answer():
    plan = make_plan(COMMAND_SCHEMA)
    # SmolLM2's way: '{' '"' 'device' '":' '"' then the value, then '",' (crosses the value's end) ...
    pieces = _pieces('{', '"', 'device', '":', '"', 'kit', 'chen', '",', '"', 'action', '":', '"', 'on', '",',
                     '"', 'location', '":', '"', 'kit', 'chen', '"', ',"', 'value', '":', '21', '}')
    spans = learn(plan, pieces)
    ids = [t for t, _ in pieces]
    assert spans[b'{"device":"'] == ids[:5]
    assert spans[b'","action":"'] == ids[7:12]      # the crossing '",' belongs to the span
    assert spans[b'","location'] == ids[13:16]
    assert spans[b',"value'] == ids[21:23]          # after '"kitchen"' the model wrote '"' then ',"'
    assert spans[b"}"] == ids[25:26]
    assert learn(plan, pieces + [(2, b"")]) == spans                    # the end-of-generation token


def test_learn_refuses_an_answer_where_a_span_is_merged_with_a_value():
    plan = make_plan(COMMAND_SCHEMA)
    merged = _pieces('{"', 'device', '":"l', 'ights', '",', '"', 'action', '":', '"', 'on', '","', 'location',
                     '":', 'null', ',"', 'value', '":', 'null', '}')
    assert learn(plan, merged) is None


def test_kept_drops_the_token_that_crossed_into_the_forced_span():
    assert kept(_pieces("kit", "chen", '",'), b"kitchen") == (2, 7)
    assert kept(_pieces('":', '"', "kit", "chen", '","'), b'":"kitchen"') == (4, 10)   # '"' re-inserted
    assert kept([], b"x") == (0, 0)
    assert kept(_pieces("bed", "room", ""), b"bedroom") == (2, 7)      # a stream reports the stop token empty


def test_check_tells_a_tokenization_mismatch_from_a_numerical_one():
    from oracd.api.fastforward import check
    forced_at = {0, 1, 4}
    assert check([1, 2, 3, 4, 5], forced_at, [1, 2, 3, 4, 5, 6]) == (True, "same tokens")
    ok, why = check([1, 2, 3, 4, 5], forced_at, [1, 2, 9, 4, 5])     # a sampled token: the model chose otherwise
    assert ok and "sampled token 2" in why
    ok, why = check([1, 2, 3, 4, 5], forced_at, [1, 2, 3, 4, 8])     # a forced token: not the model's own
    assert not ok and "forced token 4" in why


def test_what_requests_teach_is_bounded():
    from oracd.api import fastforward as F
    cal = F.Calibration()
    for n in range(F.MAX_ENTRIES + 50):
        schema = {"type": "object", "properties": {f"k{n}": {"type": "null"}}, "required": [f"k{n}"]}
        assert cal.grammar(schema) and cal.plan(schema)
        cal.judge(("m", cal.key(schema)), True)
    assert len(cal.grammars) <= F.MAX_ENTRIES and len(cal.plans) <= F.MAX_ENTRIES
    assert len(cal.verdicts) <= F.MAX_ENTRIES


# ------------------------------------------------------------------ when it applies

def _prof(**kw) -> Profile:
    return Profile(model="m.gguf", **kw)


def test_json_output_defaults_compact_for_command_only_and_fast_forward_when_asked():
    other = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    default = json_output(Sent("x"), _prof(), COMMAND_SCHEMA)
    assert default.fast_forward is None                   # "command": the child answering decides
    assert default.use_fast_forward(True) is True and default.use_fast_forward(False) is False
    assert default.use_fast_forward(None) is False        # wanted batch-invariant, but the build lacked the flags
    assert json_output(Sent("x", fast_forward=True), _prof(), COMMAND_SCHEMA).use_fast_forward(False) is True
    assert json_output(Sent("x"), _prof(fast_forward=True), COMMAND_SCHEMA).fast_forward is True
    assert json_output(Sent("x"), _prof(fast_forward=False), COMMAND_SCHEMA).use_fast_forward(True) is False
    assert json_output(Sent("x"), _prof(), other) is None
    assert json_output(Sent("x", compact_json=True), _prof(), other).use_fast_forward(True) is False
    assert json_output(Sent("x"), _prof(fast_forward=True), other).fast_forward is True
    assert json_output(Sent("x", fast_forward=False), _prof(), COMMAND_SCHEMA).use_fast_forward(True) is False
    assert json_output(Sent("x", compact_json=False, fast_forward=False), _prof(), COMMAND_SCHEMA) is None
    assert json_output(Sent("x", prefill="{", fast_forward=True), _prof(), COMMAND_SCHEMA).fast_forward is False
    assert json_output(Sent("x", prefill="{"), _prof(), COMMAND_SCHEMA).use_fast_forward(True) is False
    assert json_output(Sent("x", fast_forward=True), _prof(stop=("\n",)), COMMAND_SCHEMA).fast_forward is False
    assert json_output(Sent("x", stop=[], fast_forward=True), _prof(stop=("\n",)), COMMAND_SCHEMA).fast_forward


def test_build_request_sends_the_compact_grammar_or_the_schema_it_cannot_compile(tmp_path: Path):
    cfg = Config()
    body, out = build_request(Sent("x", json_schema="command"), _prof(), cfg)
    assert body["grammar"] == CMD and "json_schema" not in body and out.schema == COMMAND_SCHEMA
    odd = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}, "required": ["d"]}
    body, out = build_request(Sent("x", json_schema=odd, compact_json=True), _prof(), cfg)
    assert body["json_schema"] == odd and "grammar" not in body and out is None
    body, out = build_request(Sent("x", json_schema="command", compact_json=False, fast_forward=False), _prof(),
                              cfg)
    assert body["json_schema"] == COMMAND_SCHEMA and out is None


def test_string_bounds_up_to_llama_cpps_repetition_limit_compile():
    grammar = compile_compact({"type": "object", "properties": {"a": {"type": "string", "minLength": 2000,
                                                                          "maxLength": 2000}}})
    assert "{2000,2000}" in grammar or "{2000}" in grammar
