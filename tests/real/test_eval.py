"""The command-parsing eval (python -m oracd_client.cli.eval) against a real oracd with the shipped profiles.

Accuracy is reported, not asserted (SmolLM2-135M is a weak parser); what is asserted is what the
grammar promises: every answer is JSON and fits the built-in ``command`` schema.  The harness
runs the whole corpus with 2 requests in flight on 2 llama-server slots (about a minute here).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from helpers import REPO, SMOL, Oracd
from oracd_client.cli.eval import same

CORPUS = REPO / "client" / "oracd_client" / "cli" / "data" / "commands.jsonl"
FIELDS = ("device", "action", "location", "value")


def corpus_items():
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shipped():
    o = Oracd(llama={"profiles_file": str(REPO / "etc" / "models.toml"), "parallel": 2, "ctx_size": 2048})
    o.start()
    yield o
    o.cleanup()


def run_eval(o: Oracd, *args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oracd_client.cli.eval", "--socket", str(o.socket), *args],
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def test_eval_full_corpus_grammar_gives_valid_json(shipped):
    t0 = time.monotonic()
    res = run_eval(shipped, "--json", "--concurrency", "2", "--timeout", "120")
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    report = json.loads(res.stdout)
    assert report["schema_constrained"] is True and report["n"] == len(corpus_items())
    (m,) = report["models"]                         # no --model: the active default model
    assert m["model"] == SMOL and "error" not in m, m.get("error")
    assert m["errors"] == 0
    bad = [(i["id"], i["finish_reason"], i["response"]) for i in m["items"] if not (i["json"] and i["schema"])]
    assert m["valid_json"] == 1.0, f"not valid JSON (finish_reason 'length' = cut off at max_tokens): {bad}"
    assert m["schema_valid"] == 1.0, bad
    assert len(m["items"]) == report["n"]
    # the figures are what the items say (not asserted as good: a 135M model is not that accurate)
    items = m["items"]
    for k in FIELDS:
        assert m["field_accuracy"][k] == pytest.approx(sum(bool(i["fields"][k]) for i in items) / len(items))
        for i in items:                              # each item's verdict is its parsed answer vs. the corpus
            got = i["parsed"] if isinstance(i["parsed"], dict) else {}
            assert i["fields"][k] == (k in got and same(i["expected"][k], got[k])), (i, k)
    assert m["all_fields"] == pytest.approx(sum(all(i["fields"][k] for k in FIELDS) for i in items) / len(items))
    assert m["median_ms"] > 0
    # the grammar came from the request, max_tokens from the shipped profile
    from oracd.config.profiles import load_profiles_file
    limit = load_profiles_file(REPO / "etc" / "models.toml")[SMOL].max_tokens
    assert all(i["completion_tokens"] <= limit for i in m["items"])
    print(f"\nSmolLM2 eval: {elapsed:.0f}s, all fields {m['all_fields']:.1%}, "
          f"fields { {k: round(v, 3) for k, v in m['field_accuracy'].items()} }, median {m['median_ms']} ms")
    assert elapsed < 180


def test_eval_markdown_table_and_model_errors(shipped, tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(CORPUS.read_text().splitlines()[:2]) + "\n")
    res = run_eval(shipped, "--corpus", str(small), "--model", SMOL, "--model", "no-such-model")
    assert res.returncode == 1, res.stderr          # a model that could not be evaluated
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    for col in ("valid JSON", "schema-valid", "device", "action", "location", "value", "all fields", "median ms"):
        assert col in header
    assert any(line.startswith(f"| {SMOL} | ") and "%" in line for line in lines), res.stdout
    assert any("no-such-model" in line and "-32001" in line for line in lines), res.stdout
    # the harness put the model it found back (no swap left behind)
    assert shipped.call("status")["child"]["model"] == SMOL
