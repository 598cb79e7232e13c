"""Today's ORAC, unchanged, on oracd: the shim ``oracd_client.compat.today`` inside a stand-in app.

``orac_today_app/`` is an app package laid out as ORAC HEAD's (generation service, lifecycle, routes,
backend manager), whose ``orac/llama_cpp_client.py`` is the README's short re-export.  Each case copies it
to a temp dir and runs one of its scenarios (``scenario.py``) in a subprocess against a real oracd,
llama-server and SmolLM2; the scenario prints what happened as JSON.  ``orac_old_app/`` does the same for the
old app (commit 35c7904) and the old shim.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Set

from helpers import SMOL, Oracd

HERE = Path(__file__).resolve().parent
TODAY_APP = HERE / "orac_today_app"
OLD_APP = HERE / "orac_old_app"
HEAD_HEALTH_KEYS = {"status", "total_restart_count", "max_consecutive_failures", "servers"}
HEAD_SERVER_KEYS = {"model", "port", "process_running", "consecutive_failures", "restart_count", "last_health_check",
                    "last_used"}


def copy_app(src: Path, tmp_path: Path, name: str = "app") -> Path:
    root = tmp_path / name
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", ".oracd-prewarm*"))
    return root


def app_env(o: Oracd, root: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ, ORACD_SOCKET=str(o.socket), DATA_DIR=str(root / "data"), LOG_DIR=str(root / "logs"))
    for k in ("ORAC_MODELS_PATH", "PYTHONPATH", "ORACD_PREWARM_STATE"):
        env.pop(k, None)
    env.update(extra)
    return env


def scenario(o: Oracd, root: Path, *args: str, **env: str) -> Dict[str, Any]:
    res = subprocess.run([sys.executable, str(root / "scenario.py"), *args], cwd=str(root), env=app_env(o, root, **env),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def alternatives(grammar: str, rule: str) -> Set[str]:
    """The quoted alternatives of ``rule ::= ...`` in a GBNF text."""
    m = re.search(rf"^{rule}\s*::=\s*(.+)$", grammar, re.M)
    assert m, f"no {rule} rule"
    return set(re.findall(r'"([^"]+)"', m.group(1)))


def check_command(answer: str, grammar: str) -> Dict[str, str]:
    """The answer is one JSON object with exactly the grammar's three keys, each value one of its enumerations."""
    parsed = json.loads(answer)
    assert list(parsed) == ["device", "action", "location"], answer
    assert parsed["device"] in alternatives(grammar, "device"), answer
    assert parsed["location"] in alternatives(grammar, "location"), answer
    action = parsed["action"]
    assert action in alternatives(grammar, "action") or re.fullmatch(r"set (\d+%|\d+C)", action), answer
    return parsed


def share(usage: Dict[str, int]) -> float:
    return usage["cached_tokens"] / usage["prompt_tokens"]


# ---------------------------------------------------------------------- grammar answers, warm first command
def test_prewarmed_first_command_answers_in_the_grammar_and_comes_mostly_from_the_cache(fresh_oracd, tmp_path):
    o = fresh_oracd().start()
    grammar = (TODAY_APP / "data" / "grammars" / "default.gbnf").read_text()
    # control: the same kind of command on a cold server (no app startup, nothing warmed, nothing remembered)
    cold = scenario(o, copy_app(TODAY_APP, tmp_path, "cold"), "commands", "--topic", "home",
                    "switch off the bedroom heating", ORACD_PREWARM_STATE="")["commands"][0]
    assert cold["usage"]["cached_tokens"] == 0, cold["usage"]

    out = scenario(o, copy_app(TODAY_APP, tmp_path), "commands", "--startup", "--topic", "general",
                   "Computer, turn on the kitchen lights", "set the bedroom heating to 20C")
    warm = out["warm_after_startup"]
    assert warm["how"] == "prefilled" and warm["prompt_tokens"] > 100 and min(warm["cached_tokens"]) == \
        warm["prompt_tokens"], warm
    first, second = out["commands"]
    for c in (first, second):
        check_command(c["response"], grammar)
        assert c["status"] == "success" and c["app_class"]               # the app's own PromptResponse
        assert c["temperature"] == 0.0 and c["top_k"] == 10 and c["top_p"] == 0.9   # ORAC's grammar-mode rules
        assert c["prompt"].endswith('\nAssistant: {"device":"') and c["finish_reason"] == "stop"
    # the first command after startup: its whole shared prefix was already in the KV cache
    assert first["usage"]["cached_tokens"] >= warm["prompt_tokens"] - 2, first["usage"]
    assert share(first["usage"]) > 0.8 and share(second["usage"]) > 0.8
    assert first["pid"] == second["pid"]
    rec = out["state_file"]["models"][SMOL]
    assert rec["prefix"].endswith("\n\nUser: ") and rec["hint"] in rec["prefix"]
    assert "Devices: [lights, heating, blinds, music]" in rec["prefix"]
    assert out["grammar_reads"] == 1                   # read once, then served from the stat-checked cache


# ---------------------------------------------------------------------- grammar regeneration
def test_rewriting_the_grammar_changes_the_next_answer_on_the_same_llama_server(fresh_oracd, tmp_path):
    o = fresh_oracd().start()
    out = scenario(o, copy_app(TODAY_APP, tmp_path), "grammar_change", "turn on the kitchen lights",
                   "switch on the fan in the garage")
    before, after = out["before"], out["after"]
    old_grammar = (tmp_path / "app" / "data" / "grammars" / "backend_ha1.gbnf").read_text()
    assert old_grammar == out["grammar"]               # the file as the backend manager last wrote it
    new = check_command(after[0]["response"], out["grammar"])
    check_command(after[1]["response"], out["grammar"])
    assert alternatives(out["grammar"], "device") == {"fan", "kettle", "UNKNOWN"}
    assert new["action"] in {"spin", "boil"}           # no action of the old grammar is left: the answer changed
    assert json.loads(before["response"])["action"] not in {"spin", "boil"}
    assert after[0]["response"] != before["response"]
    assert out["same_inode"]                           # rewritten in place, as ORAC's generator does
    assert before["pid"] == after[0]["pid"] == after[1]["pid"]      # no restart, no reload
    assert out["reset_count"] == 1                     # stop_all_servers_sync's int, as ORAC's
    # the new prompt (new devices in the hint) was warmed by stop_all_servers_sync: the next command hit it
    assert "Devices: [fan, kettle]. Locations: [garage, shed]" in after[0]["prompt"]
    assert share(after[0]["usage"]) > 0.8, after[0]["usage"]


# ---------------------------------------------------------------------- restarts keep the warm prefix
def test_learned_prefix_survives_an_app_restart_and_a_llama_server_crash(fresh_oracd, tmp_path):
    o = fresh_oracd().start()
    root = copy_app(TODAY_APP, tmp_path)
    # the "home" topic has its own instruction: the first command teaches the shim the real prefix
    a = scenario(o, root, "commands", "--startup", "--topic", "home", "turn on the kitchen lights",
                 "turn off the hall lights")["commands"]
    assert share(a[1]["usage"]) > 0.8 and a[1]["usage"]["cached_tokens"] > a[0]["usage"]["cached_tokens"] + 20
    # the app restarts: its startup prewarm warms the learned prefix (kept in data/.oracd-prewarm.json)
    b = scenario(o, root, "commands", "--startup", "--topic", "home", "switch on the bedroom heating")
    assert share(b["commands"][0]["usage"]) > 0.8, b["commands"][0]["usage"]
    assert "You are a helpful AI assistant." in b["state_file"]["models"][SMOL]["prefix"]
    # llama-server crashes: oracd restarts it and restores the prefix; the app does nothing
    pid = o.child_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        st = o.call("status")["child"]
        if st["state"] == "ready" and st["pid"] != pid:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st["warm"]["how"] in ("restored", "prefilled")
    c = scenario(o, root, "commands", "--topic", "home", "turn off the kitchen lights")["commands"][0]
    assert c["pid"] == st["pid"] and share(c["usage"]) > 0.8, c["usage"]


# ---------------------------------------------------------------------- health, models, reset, cleanup
def test_health_models_reset_and_cleanup_keep_orac_shapes_and_kill_nothing(fresh_oracd, tmp_path):
    o = fresh_oracd().start()
    out = scenario(o, copy_app(TODAY_APP, tmp_path), "routes_health")
    for h in (out["health_first"], out["health_reloaded"]):
        assert h["status"] == "healthy" and h["checks"]["llama_server"] == "healthy"
        (server,) = h["checks"]["llama_servers"]
        assert HEAD_SERVER_KEYS <= set(server) and server["model"] == SMOL and server["process_running"] is True
    health = out["health"]
    assert HEAD_HEALTH_KEYS <= set(health) and health["status"] == "healthy"
    assert health["max_consecutive_failures"] == 2 and health["total_restart_count"] == 0
    assert health["servers"][0]["pid"] == out["pid_before"] and isinstance(health["servers"][0]["last_used"], float)
    assert out["status"] == {"status": "ok", "models_available": 1}
    assert [m["name"] for m in out["models"]] == [SMOL] and out["models"][0]["backend"] == "llama_cpp"
    assert out["load"]["status"] == "success" and out["load"]["elapsed_seconds"] is not None
    assert out["server"]["pid"] == out["pid_before"] and out["server"]["state"] == "ready"
    assert out["server"]["process"] is None and out["prewarm"] is True
    # stop_all_servers_sync: ORAC's int (the models it had made ready), and nothing stopped
    assert out["stopped"] == 1 and out["stopped_again"] == 0 and out["stopped_in_thread"] == 0
    assert out["pid_after_stop"] == out["pid_before"]
    # from a thread, after the grammar changed: the new prefix was warmed before it returned
    assert out["warm_after_thread"]["how"] == "prefilled"
    assert "Locations: [garage, hall]" in out["command"]["prompt"] and share(out["command"]["usage"]) > 0.8
    assert out["command"]["pid"] == out["pid_before"]
    assert out["unload_other"]["status"] == "success" and "not loaded" in out["unload_other"]["message"]
    assert out["unload"] == {"status": "success", "message": f"Model {SMOL} unloaded", "error": None}
    assert out["state_unloaded"] == "stopped"
    assert out["health_unloaded"]["status"] == "healthy" and out["health_unloaded"]["checks"]["llama_server"] == \
        "no_servers" and out["health_unloaded"]["checks"]["llama_servers"] == []
    assert out["load_missing"]["status"] == "error" and "Model not found" in out["load_missing"]["error"]
    assert out["load_again"]["status"] == "success" and out["pid_reloaded"] != out["pid_before"]
    # cleanup() at shutdown closes the client only: the model stays loaded in the same llama-server
    assert out["after_shutdown"] == {"state": "ready", "pid": out["pid_reloaded"]}


def test_json_mode_without_a_grammar_file_and_orac_sampling_rules(oracd, tmp_path):
    out = scenario(oracd, copy_app(TODAY_APP, tmp_path), "json_builtin")
    assert isinstance(json.loads(out["text"]), dict), out["text"]      # oracd's built-in "json" grammar
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.0, 0.8, 30)
    assert out["system_prompt"].startswith("You must respond with valid JSON only.")
    # free-form: the model's recommended_settings replace the defaults, the caller's max_tokens is kept
    assert (out["free_temperature"], out["free_top_p"], out["free_top_k"], out["free_max_tokens"]) == (0.1, 0.2, 10, 12)
    assert out["free_text"] and "<|im_end|>" not in out["free_text"]
    assert out["blank"] == "Prompt cannot be empty" and out["missing"].startswith("Model not found: ")


# ---------------------------------------------------------------------- the old app, old shim
def test_old_app_chatml_prompt_reaches_the_model_once(oracd, tmp_path):
    root = copy_app(OLD_APP, tmp_path)
    res = subprocess.run([sys.executable, str(root / "scenario.py"), SMOL, "Turn on the kitchen lights.",
                          "You answer briefly."], cwd=str(root), env=app_env(oracd, root), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["formatted"].startswith("<|im_start|>system\nYou answer briefly.<|im_end|>")
    assert out["prompt"] == out["formatted"] and out["class"] == "orac.models"
    assert set(out["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    once = oracd.call("generate", prompt=out["formatted"], raw=True, max_tokens=1)["usage"]["prompt_tokens"]
    twice = oracd.call("generate", prompt=out["formatted"], raw=False, max_tokens=1)["usage"]["prompt_tokens"]
    assert out["usage"]["prompt_tokens"] == once < twice - 10, (out["usage"], once, twice)


def test_old_cli_shows_the_request_and_the_cleaned_response_in_the_apps_log(oracd, tmp_path):
    """ORAC's old tests/test_cli_generation.py runs the CLI and looks for the prompt in its output, which
    only the client's own INFO log line carries (the CLI prints just the answer)."""
    root = copy_app(OLD_APP, tmp_path)
    prompt = "Write a haiku about AI running on a Jetson Orin"
    result = subprocess.run([sys.executable, "-m", "orac.cli", "generate", "--model", SMOL, "--prompt", prompt],
                            cwd=str(root), env=app_env(oracd, root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert prompt in result.stdout, "Prompt not found in output"             # the old test's assertions
    assert len(result.stdout.split("\n")) > 3, "Response too short"
    request = f" - INFO - orac.llama_cpp_client - Running generation on oracd: -m {SMOL} -p {prompt} --temp 0.7"
    assert request in result.stdout
    answer = result.stdout.split("Generated response:\n", 1)[1].strip()
    marker = " - INFO - orac.llama_cpp_client - Cleaned response: "
    (logged,) = [line.split(marker, 1)[1] for line in result.stdout.splitlines() if marker in line]
    assert ast.literal_eval(logged).strip() == answer
    log: List[str] = (root / "logs" / "orac.log").read_text().splitlines()
    assert any("orac.llama_cpp_client" in line and f"-p {prompt} " in line for line in log)
    assert any("Cleaned response: " in line for line in log)
