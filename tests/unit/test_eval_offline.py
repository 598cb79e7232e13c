"""The command-parsing eval's pure parts (no daemon): the corpus, the scoring rules, usage errors.  The eval run
against a real oracd: real/test_eval.py."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

CORPUS = REPO / "client" / "oracd_client" / "cli" / "data" / "commands.jsonl"


def corpus_items():
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def test_corpus_is_well_formed():
    import jsonschema
    from oracd_protocol.schemas import COMMAND_ACTIONS, COMMAND_SCHEMA
    items = corpus_items()
    assert len(items) >= 60
    assert len({i["text"].lower() for i in items}) == len(items), "duplicate utterances"
    cats = {i["category"] for i in items}
    assert {"lights", "heating", "blinds", "media", "scene", "lock", "fan", "question"} <= cats
    for i in items:
        exp = i["expected"]
        jsonschema.validate(exp, COMMAND_SCHEMA)
        assert exp["action"] in COMMAND_ACTIONS
        if exp["device"] == "none":
            assert exp == {"device": "none", "action": "none", "location": None, "value": None}, i
        for k in ("device", "location", "value"):   # oracd_client/cli/data/README.md: lower case, trimmed, no "the"
            v = exp[k]
            if isinstance(v, str):
                assert v == " ".join(v.lower().split()), i
                assert k == "value" or not v.startswith("the "), i
    assert any(isinstance(i["expected"]["value"], (int, float)) and i["category"] == "heating" for i in items)


def test_eval_usage_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi"}\n')
    res = subprocess.run([sys.executable, "-m", "oracd_client.cli.eval", "--socket", str(tmp_path / "none.sock"),
                          "--corpus", str(bad)], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "expected" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "oracd_client.cli.eval", "--socket", str(tmp_path / "none.sock")],
                         cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "cannot connect" in res.stderr, res.stderr


def test_scoring_rules():
    from oracd_client.cli.eval import parse_response, same, score, _mini_valid, _validator
    assert same(21, "21") and same(19.5, 19.50) and same("Living  Room", "living room")
    assert not same(None, "none") and not same(None, "null") and not same(1, True) and not same("21", "21 degrees")
    assert parse_response('```json\n{"a": 1}\n```') == (True, {"a": 1})
    assert parse_response('{"a": 1') == (False, None)
    item = {"expected": {"device": "lights", "action": "on", "location": "kitchen", "value": None}}
    s = score(item, '{"device": "Lights", "action": "on", "location": "hall", "value": null}', _validator())
    assert s["json"] and s["schema"] and not s["all"]
    assert s["fields"] == {"device": True, "action": True, "location": False, "value": True}
    s = score(item, '{"device": "lights", "action": "dance", "location": "kitchen", "value": null}', _validator())
    assert s["json"] and not s["schema"]
    for v in (_validator(), _mini_valid):             # jsonschema and the hand-written fallback agree
        assert v(item["expected"])
        assert not v({**item["expected"], "extra": 1})
        assert not v({**item["expected"], "value": True})
        assert not v({**item["expected"], "action": "dance"})
        assert not v({k: item["expected"][k] for k in ("device", "action", "location")})
