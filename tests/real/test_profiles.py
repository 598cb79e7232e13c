"""Model profiles against a real oracd + llama-server + SmolLM2.

What a request leaves out comes from the model's profile, what it sends wins (checked in the
answers, in usage, and in llama-server's own /slots params); think=false adds "/no_think"; bad
profiles fail config loading naming the key; reload/SIGHUP re-read profiles and restart the warm
model only when its load options changed; default_model, preload and fallback_models; warm-up
leaves every slot's KV cache holding the system prompt.

SmolLM2-135M follows "Your name is Zorblax." reliably at temperature 0 ("I'm Zorblax..."), which
makes the profile's system prompt visible in the answer.  Extra model names are hard links to the
same SmolLM2 file, so a second profile (or none) costs no extra disk.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from helpers import wait_for, MODELS, REPO, SMOL, Oracd, RPCError, toml_value, log_events
from llama_direct import _UnixHTTPConnection, llama_get

NAME_PROMPT = "Your name is Zorblax."
LONG = "Write a long story about a dragon who lives in a castle."
NOTHINK = "smol-nothink.gguf"     # same file, profile with think = false
BARE = "smol-bare.gguf"           # same file, no profile


# ---------------------------------------------------------------------- helpers
def write_profiles(path: Path, tables: Dict[str, Dict[str, Any]]) -> Path:
    lines: List[str] = []
    for model, table in tables.items():
        lines.append(f'[profiles."{model}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)            # a reload never sees half a file
    return path


def new_root() -> Path:
    """A short temp dir (Unix socket paths) to write a profiles file into before Oracd() is built."""
    return Path(tempfile.mkdtemp(prefix="oracd-t-", dir="/tmp"))


def alias(o: Oracd, name: str) -> None:
    os.link(MODELS / SMOL, o.models_dir / name)


def llama_post(endpoint: str, path: str, body: Dict[str, Any]) -> Any:
    assert endpoint.startswith("unix:"), endpoint
    conn = _UnixHTTPConnection(endpoint[5:], 10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return json.loads(resp.read())
    finally:
        conn.close()


def n_tokens(o: Oracd, text: str) -> int:
    return len(llama_post(o.call("status")["child"]["endpoint"], "/tokenize", {"content": text})["tokens"])


def slots(o: Oracd) -> List[Dict[str, Any]]:
    status, data = llama_get(o.call("status")["child"]["endpoint"], "/slots")
    assert status == 200, data
    return data


def last_slot(o: Oracd) -> Dict[str, Any]:
    """The slot that ran the most recent task (llama-server numbers tasks in order)."""
    return max(slots(o), key=lambda s: -1 if s.get("id_task") is None else s["id_task"])




def gen(o: Oracd, prompt: str, **kw: Any) -> Dict[str, Any]:
    return o.call("generate", prompt=prompt, timeout=90, **kw)


# ---------------------------------------------------------------------- profile > default, request > profile
@pytest.fixture(scope="module")
def prof():
    root = new_root()
    pfile = write_profiles(root / "models.toml", {
        SMOL: {"system_prompt": NAME_PROMPT, "temperature": 0.0, "top_k": 7, "top_p": 0.55, "max_tokens": 8},
        NOTHINK: {"system_prompt": NAME_PROMPT, "think": False, "temperature": 0.0, "max_tokens": 8},
    })
    o = Oracd(root=root, llama={"ctx_size": 1024, "parallel": 2, "profiles_file": str(pfile)})
    alias(o, NOTHINK)
    alias(o, BARE)
    o.start()
    yield o
    o.cleanup()


def test_profile_system_prompt_fills_in_and_request_wins(prof):
    r = gen(prof, "What is your name?")
    assert "Zorblax" in r["response"], r
    assert r["model"] == SMOL
    # the request's own system prompt replaces the profile's (not appended to it)
    own = gen(prof, "What is your name?", system_prompt="You are a pirate captain.")
    assert "Zorblax" not in own["response"], own
    same = gen(prof, "What is your name?", system_prompt=NAME_PROMPT)
    assert same["response"] == r["response"]                      # temperature 0: same prompt, same answer
    assert same["usage"]["prompt_tokens"] == r["usage"]["prompt_tokens"]
    assert own["usage"]["prompt_tokens"] != r["usage"]["prompt_tokens"]


def test_profile_max_tokens_when_request_sends_null_and_request_wins(prof):
    r = gen(prof, LONG, system_prompt="You are a storyteller.", max_tokens=None)
    assert r["usage"]["completion_tokens"] <= 8 and r["finish_reason"] == "length", r
    r = gen(prof, LONG, system_prompt="You are a storyteller.", max_tokens=20)
    assert 8 < r["usage"]["completion_tokens"] <= 20, r
    assert last_slot(prof)["params"]["n_predict"] == 20


def test_profile_sampling_reaches_llama_server_and_request_wins(prof):
    gen(prof, "Hello there.")
    p = last_slot(prof)["params"]
    assert p["temperature"] == 0.0 and p["top_k"] == 7 and p["n_predict"] == 8
    assert p["top_p"] == pytest.approx(0.55, abs=1e-6)
    gen(prof, "Hello again.", temperature=0.9, top_k=3, max_tokens=11)
    p = last_slot(prof)["params"]
    assert p["temperature"] == pytest.approx(0.9, abs=1e-6) and p["top_k"] == 3 and p["n_predict"] == 11
    assert p["top_p"] == pytest.approx(0.55, abs=1e-6)          # not sent: still the profile's
    # a model without a profile gets the built-in defaults (temperature 0.7, top_p 0.7, top_k 40)
    r = gen(prof, "Hello.", model=BARE, max_tokens=4)
    assert r["model"] == BARE
    p = last_slot(prof)["params"]
    assert p["temperature"] == pytest.approx(0.7, abs=1e-6) and p["top_k"] == 40
    assert p["top_p"] == pytest.approx(0.7, abs=1e-6)


def test_think_false_adds_no_think(prof):
    prompt = "What is your name?"
    dflt = gen(prof, prompt, model=NOTHINK)
    explicit = gen(prof, prompt, model=NOTHINK, system_prompt=NAME_PROMPT + "\n/no_think")
    without = gen(prof, prompt, model=NOTHINK, system_prompt=NAME_PROMPT)
    # the profile's prompt plus "\n/no_think" is exactly what went to the model...
    assert dflt["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    assert dflt["response"] == explicit["response"]
    # ...and those are the extra tokens over the bare system prompt
    extra = dflt["usage"]["prompt_tokens"] - without["usage"]["prompt_tokens"]
    assert extra == n_tokens(prof, "\n/no_think"), (dflt["usage"], without["usage"])


def test_status_and_list_models_show_profiles(prof):
    gen(prof, "Hi", model=SMOL, max_tokens=2)
    st = prof.call("status")
    assert st["profiles"] == sorted([SMOL, NOTHINK])
    assert st["child"]["model"] == SMOL and st["child"]["profile"] == SMOL
    assert st["default_model"] == SMOL and st["active_default_model"] == SMOL and st["fallback"] is None
    items = {m["name"]: m for m in prof.call("list_models")}
    assert items[SMOL]["profile"] == SMOL and items[NOTHINK]["profile"] == NOTHINK
    assert items[BARE]["profile"] is None
    gen(prof, "Hi", model=BARE, max_tokens=2)
    assert prof.call("status")["child"]["profile"] is None


def test_default_model_used_when_request_names_none(prof):
    r = gen(prof, "Hi", model=BARE, max_tokens=2)
    assert prof.call("status")["child"]["model"] == BARE
    r = gen(prof, "What is your name?")                           # no model: the default, not the loaded one
    assert r["model"] == SMOL and "Zorblax" in r["response"], r
    assert prof.call("status")["child"]["model"] == SMOL


def test_warmup_fills_every_slot_after_load(prof):
    prof.call("unload_model")
    prof.call("load_model", model=SMOL)
    st = prof.call("status")["child"]
    assert st["state"] == "ready" and isinstance(st["warmup_ms"], float) and st["warmup_ms"] > 0
    need = n_tokens(prof, NAME_PROMPT)
    ss = slots(prof)
    assert len(ss) == 2
    for s in ss:      # each slot ran the warm-up task and keeps its prompt (system prompt + "ok")
        assert s.get("id_task") is not None and s["n_prompt_tokens"] > need, ss
    # a model without a profile (no system prompt) is not warmed
    prof.call("load_model", model=BARE)
    st = prof.call("status")["child"]
    assert st["model"] == BARE and st["warmup_ms"] is None
    assert all(not s.get("n_prompt_tokens") for s in slots(prof))


# ---------------------------------------------------------------------- preload, warmup = false
def test_preload_ready_before_ready_and_warmup_off(fresh_oracd, tmp_path):
    pfile = write_profiles(tmp_path / "p.toml", {"smol-copy.gguf": {"system_prompt": NAME_PROMPT,
                                                                    "temperature": 0.0}})
    o = fresh_oracd(llama={"profiles_file": str(pfile), "default_model": "smol-copy.gguf", "preload": True,
                           "warmup": False})
    alias(o, "smol-copy.gguf")
    o.start()
    st = o.call("status")                                       # the first answer oracd gives
    assert st["child"]["state"] == "ready" and st["child"]["model"] == "smol-copy.gguf", st["child"]
    assert st["child"]["loads"] == 1 and st["child"]["profile"] == "smol-copy.gguf"
    assert st["child"]["warmup_ms"] is None                      # warmup = false
    assert all(not s.get("n_prompt_tokens") for s in slots(o))   # nothing was prefilled
    r = gen(o, "What is your name?")
    assert r["model"] == "smol-copy.gguf" and "Zorblax" in r["response"], r


# ---------------------------------------------------------------------- bad profiles fail config loading
def _check(tmp_path: Path, main_extra: str = "", profiles: Optional[str] = None) -> subprocess.CompletedProcess:
    llama = f'models_dir = "{tmp_path}"\n'
    if profiles is not None:
        (tmp_path / "models.toml").write_text(profiles)
        llama += 'profiles_file = "models.toml"\n'
    cfg = tmp_path / "oracd.toml"
    cfg.write_text(f'[server]\nsocket_group = ""\n\n[llama]\n{llama}\n{main_extra}')
    return subprocess.run([sys.executable, "-m", "oracd", "--config", str(cfg), "--check"], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)


BAD_PROFILES = [
    ("temprature = 0.1", f'profiles."{SMOL}".temprature: unknown key'),
    ('temperature = "hot"', f'profiles."{SMOL}".temperature: expected a number'),
    ("top_p = 1.5", f'profiles."{SMOL}".top_p'),
    ("max_tokens = 0", f'profiles."{SMOL}".max_tokens'),
    ("think = \"no\"", f'profiles."{SMOL}".think'),
    ('stop = "###"', f'profiles."{SMOL}".stop'),
    ('grammar = "command"', "use json_schema"),
    ('json_schema = "nope"', f'profiles."{SMOL}".json_schema'),
    ('grammar = "json"\njson_schema = "command"', "mutually exclusive"),
    ("ctx_size = -1", f'profiles."{SMOL}".ctx_size'),
    ('rpc_workers = ["nohost"]', f'profiles."{SMOL}".rpc_workers: expected host:port'),
    ('rpc_workers = ["[::1]:50052"]', "IPv4 only"),
    ("tensor_split = [0, 0]", f'profiles."{SMOL}".tensor_split'),
]


@pytest.mark.parametrize("body,needle", BAD_PROFILES, ids=[b.split()[0] for b, _ in BAD_PROFILES])
def test_bad_profile_fails_check_naming_the_key(tmp_path, body, needle):
    res = _check(tmp_path, profiles=f'[profiles."{SMOL}"]\n{body}\n')
    assert res.returncode == 2, res.stdout + res.stderr
    assert "config error" in res.stderr and needle in res.stderr, res.stderr
    # the same table inline in oracd.toml fails the same way
    res = _check(tmp_path, main_extra=f'[profiles."{SMOL}"]\n{body}\n')
    assert res.returncode == 2 and needle in res.stderr, res.stderr


def test_profile_file_problems_fail_check(tmp_path):
    res = _check(tmp_path, profiles='[profiles."not-a-gguf"]\ntemperature = 0.1\n')
    assert res.returncode == 2 and 'profiles."not-a-gguf"' in res.stderr, res.stderr
    res = _check(tmp_path, profiles='[llama]\nctx_size = 1\n')
    assert res.returncode == 2 and "unknown section" in res.stderr, res.stderr
    (tmp_path / "oracd.toml").write_text(f'[llama]\nmodels_dir = "{tmp_path}"\nprofiles_file = "gone.toml"\n')
    res = subprocess.run([sys.executable, "-m", "oracd", "--config", str(tmp_path / "oracd.toml"), "--check"],
                         cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "llama.profiles_file" in res.stderr, res.stderr
    res = _check(tmp_path, profiles=f'[profiles."{SMOL}"]\ntemperature = 0.2\njson_schema = "command"\n')
    assert res.returncode == 0, res.stderr
    assert _check(tmp_path, profiles=(REPO / "etc" / "models.toml").read_text()).returncode == 0


# ---------------------------------------------------------------------- reload RPC and SIGHUP
def test_reload_and_sighup_keep_or_restart_the_warm_model(fresh_oracd):
    root = new_root()
    pfile = root / "models.toml"
    base = {"system_prompt": NAME_PROMPT, "temperature": 0.0}
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 8}})
    o = fresh_oracd(root=root, llama={"ctx_size": 1024, "parallel": 2, "profiles_file": str(pfile)})
    o.start()
    pid0 = o.child_pid()
    assert slots(o)[0]["n_ctx"] == 512
    assert gen(o, LONG, system_prompt="You tell stories.")["usage"]["completion_tokens"] == 8

    # 1. reload RPC, sampling only: same llama-server, new max_tokens in effect at once
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 5}})
    res = o.call("reload")
    assert res["restarted"] is False and res["profiles"] == [SMOL], res
    assert o.call("status")["child"]["state"] == "ready" and o.child_pid() == pid0
    assert gen(o, LONG, system_prompt="You tell stories.")["usage"]["completion_tokens"] == 5
    assert o.child_pid() == pid0

    # 2. SIGHUP does the same
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 3}})
    n_reloads = len(log_events(o, "config reloaded"))
    o.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(log_events(o, "config reloaded")) > n_reloads, 20, "the SIGHUP reload")
    assert gen(o, LONG, system_prompt="You tell stories.")["usage"]["completion_tokens"] == 3
    assert o.child_pid() == pid0 and o.call("status")["child"]["restarts"] == 0

    # 3. a broken profile: the RPC says which key, the old profiles stay, the model stays
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 3, "temperature": "hot"}})
    with pytest.raises(RPCError) as exc:
        o.call("reload")
    assert exc.value.code == -32602 and f'profiles."{SMOL}".temperature' in exc.value.message
    n_fail = len(log_events(o, "reload on SIGHUP failed"))
    o.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(log_events(o, "reload on SIGHUP failed")) > n_fail, 20, "the failed SIGHUP reload")
    assert gen(o, LONG, system_prompt="You tell stories.")["usage"]["completion_tokens"] == 3
    assert o.child_pid() == pid0

    # 4. reload RPC with a load option changed (ctx_size): the model restarts with it
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 3, "ctx_size": 2048}})
    loads = o.call("status")["child"]["loads"]
    res = o.call("reload")
    assert res["restarted"] is True, res
    st = wait_for(lambda: (lambda c: c if c["state"] == "ready" and c["pid"] not in (None, pid0) else None)(
        o.call("status")["child"]), 60, "the restart with ctx_size 2048")
    assert st["loads"] == loads + 1 and st["model"] == SMOL and st["warmup_ms"] is not None
    pid1 = st["pid"]
    assert all(s["n_ctx"] == 1024 for s in slots(o))              # 2048 / 2 slots
    assert "Zorblax" in gen(o, "What is your name?", max_tokens=8)["response"]

    # 5. SIGHUP with the load option removed again: back to [llama] ctx_size 1024
    write_profiles(pfile, {SMOL: {**base, "max_tokens": 3}})
    o.proc.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (lambda c: c if c["state"] == "ready" and c["pid"] not in (None, pid1) else None)(
        o.call("status")["child"]), 60, "the restart after SIGHUP")
    assert all(s["n_ctx"] == 512 for s in slots(o))
    assert gen(o, LONG, system_prompt="You tell stories.")["usage"]["completion_tokens"] == 3


# ---------------------------------------------------------------------- fallback_models
def _bad_models(o: Oracd) -> None:
    (o.models_dir / "garbage.gguf").write_bytes(os.urandom(4096))           # not a GGUF at all
    data = (MODELS / SMOL).read_bytes()
    (o.models_dir / "trunc.gguf").write_bytes(data[: len(data) // 2])     # valid header, tensors cut off


@pytest.fixture(scope="module")
def fallback():
    o = Oracd(llama={"default_model": "missing.gguf", "preload": True,
                     "fallback_models": ["garbage.gguf", "trunc.gguf", SMOL]})
    _bad_models(o)
    o.start()
    yield o
    o.cleanup()


def test_fallback_serves_the_next_model_and_says_why(fallback):
    st = fallback.call("status")
    assert st["child"]["state"] == "ready" and st["child"]["model"] == SMOL
    assert st["default_model"] == "missing.gguf" and st["active_default_model"] == SMOL
    fb = st["fallback"]
    assert fb["serving"] == SMOL
    assert [f["model"] for f in fb["failed"]] == ["missing.gguf", "garbage.gguf", "trunc.gguf"]
    why = {f["model"]: f["error"] for f in fb["failed"]}
    assert "Model not found" in why["missing.gguf"]
    assert "not a GGUF" in why["garbage.gguf"]
    assert "trunc.gguf is truncated" in why["trunc.gguf"]                  # refused before llama-server
    # the log says why, per model, and which model is served instead
    failed = {e["model"]: e["error"] for e in log_events(fallback, "preload failed")}
    assert failed == why
    (served,) = log_events(fallback, "serving a fallback model")
    assert served["model"] == SMOL and served["failed"] == ["missing.gguf", "garbage.gguf", "trunc.gguf"]
    # a request naming no model is served by the fallback
    r = gen(fallback, "Hi", max_tokens=3)
    assert r["model"] == SMOL


def test_broken_model_named_explicitly_is_an_error_never_another_model(fallback):
    pid = fallback.child_pid()
    with pytest.raises(RPCError) as exc:
        gen(fallback, "Hi", model="missing.gguf", max_tokens=3)
    assert exc.value.code == -32001 and "missing.gguf" in exc.value.message
    with pytest.raises(RPCError) as exc:
        gen(fallback, "Hi", model="garbage", max_tokens=3)
    assert exc.value.code == -32002 and exc.value.data["reason"] == "not_gguf"
    assert "garbage.gguf" in exc.value.message
    assert fallback.child_pid() == pid                                # header check: the warm model stays
    with pytest.raises(RPCError) as exc:
        gen(fallback, "Hi", model="trunc.gguf", max_tokens=3)
    assert exc.value.code == -32002 and "trunc.gguf" in exc.value.message
    assert exc.value.data["reason"] == "truncated"
    assert fallback.child_pid() == pid                                # cheap check: the warm model stays
    r = gen(fallback, "Hi", max_tokens=3)
    assert r["model"] == SMOL
    assert fallback.call("status")["child"]["state"] == "ready"


def test_truncated_model_error_says_how_much_is_missing(fallback):
    """Tensor data cut off is found by oracd before llama-server runs: the message and data say where the
    data should end and how big the file is (llama-server would only say "not within the file bounds")."""
    with pytest.raises(RPCError) as exc:
        gen(fallback, "Hi", model="trunc.gguf", max_tokens=3)
    assert exc.value.code == -32002
    assert exc.value.data["reason"] == "truncated", exc.value.data["reason"]
    size = (fallback.models_dir / "trunc.gguf").stat().st_size
    assert exc.value.data["size"] == size and exc.value.data["expected_size"] == (MODELS / SMOL).stat().st_size
    assert f"the file has {size} bytes" in exc.value.message, exc.value.message
    why = {f["model"]: f["error"] for f in fallback.call("status")["fallback"]["failed"]}
    assert "is truncated" in why["trunc.gguf"], why
    assert gen(fallback, "Hi", max_tokens=3)["model"] == SMOL


def test_truncated_default_falls_back(fresh_oracd):
    o = fresh_oracd(llama={"default_model": "trunc.gguf", "preload": True, "fallback_models": [SMOL]})
    _bad_models(o)
    o.start()
    st = o.call("status")
    assert st["child"]["state"] == "ready" and st["child"]["model"] == SMOL
    assert st["active_default_model"] == SMOL
    assert st["fallback"]["serving"] == SMOL and st["fallback"]["failed"][0]["model"] == "trunc.gguf"
    assert gen(o, "Hi", max_tokens=3)["model"] == SMOL
    with pytest.raises(RPCError) as exc:
        gen(o, "Hi", model="trunc.gguf", max_tokens=3)
    assert exc.value.code == -32002


def test_no_loadable_model_still_starts(fresh_oracd):
    o = fresh_oracd(llama={"default_model": "missing.gguf", "preload": True, "fallback_models": ["garbage.gguf"]})
    _bad_models(o)
    o.start()
    st = o.call("status")
    assert st["fallback"]["serving"] is None and len(st["fallback"]["failed"]) == 2
    assert st["child"]["model"] is None
    with pytest.raises(RPCError) as exc:                              # no silent substitute
        gen(o, "Hi", max_tokens=3)
    assert exc.value.code == -32001
    assert gen(o, "Hi", model=SMOL, max_tokens=3)["model"] == SMOL    # an explicit good model still works


def test_rpc_options_from_profile_and_llama_reach_the_command_line(tmp_path):
    """A profile's rpc_workers/tensor_split win over [llama]'s; [] keeps that model local."""
    from oracd.config import from_dict
    from oracd.child.http import LlamaEndpoint
    from oracd.child.command import build_command
    from oracd.workers.pool import workers_for
    cfg = from_dict({"llama": {"rpc_workers": ["10.0.0.2:50052"], "tensor_split": [3, 1], "n_gpu_layers": 0},
                     "profiles": {"big.gguf": {"rpc_workers": ["10.0.0.3:50052", "10.0.0.4:50052"],
                                               "tensor_split": [1, 1], "n_gpu_layers": 20},
                                  "small.gguf": {"rpc_workers": []}}}, tmp_path)
    ep = LlamaEndpoint(unix_path="/run/x.sock")
    assert workers_for(cfg, "other.gguf") == ("10.0.0.2:50052",)
    assert workers_for(cfg, "big.gguf") == ("10.0.0.3:50052", "10.0.0.4:50052")
    assert workers_for(cfg, "small.gguf") == ()
    cmd = " ".join(build_command(cfg, "llama-server", tmp_path / "other.gguf", ep, workers_for(cfg, "other.gguf")))
    assert "--rpc 10.0.0.2:50052 -ts 3,1" in cmd and "-ngl 999" in cmd       # 0 = all layers with workers
    cmd = " ".join(build_command(cfg, "llama-server", tmp_path / "big.gguf", ep, workers_for(cfg, "big.gguf")))
    assert "--rpc 10.0.0.3:50052,10.0.0.4:50052 -ts 1,1" in cmd and "-ngl 20" in cmd
    cmd = " ".join(build_command(cfg, "llama-server", tmp_path / "small.gguf", ep, ()))   # local (or fallback)
    assert "--rpc" not in cmd and "-ts" not in cmd and "-ngl 0" in cmd
