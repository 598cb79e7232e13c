"""Hardening for everyone, the pure parts: the admin split, quantize's disk budget, link resolution, the children's
environment, the pidfile's start time, truncated GGUFs and which model comes back after a failed load."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import anyio
import psutil
import pytest

from helpers import write_tiny_f32
from oracd.api.admin import is_admin, require_admin
from oracd.child import pidfile
from oracd.child.command import build_command, child_env, make_endpoint, supports_unix_socket
from oracd.child.http import LlamaEndpoint
from oracd.child.swap_queue import SwapQueue
from oracd.config import Config, ConfigError, from_dict, with_overrides
from oracd.models.gguf import read_gguf_header
from oracd.models.quota import Ledger, QuantizeLimits, output_limit
from oracd.models.store import ModelStore
from oracd_protocol.errors import AccessDenied, InvalidPath


@dataclass
class OldPeer:                       # the Peer before SO_PEERGROUPS: no groups attribute
    pid: Optional[int] = 1
    uid: Optional[int] = None
    gid: Optional[int] = None


@dataclass
class NewPeer(OldPeer):
    groups: Tuple[int, ...] = field(default_factory=tuple)


def cfg_with(**server) -> Config:
    return with_overrides(Config(), server=server)


# ---------------------------------------------------------------------- admin split
def test_without_admin_lists_every_allowed_client_is_admin():
    assert is_admin(Config(), OldPeer(uid=4242, gid=4242), own_uid=999)


def test_admin_uids_and_gids_decide_and_the_refusal_names_the_settings():
    cfg = cfg_with(admin_uids=(1001,), admin_gids=(2002,))
    assert is_admin(cfg, OldPeer(uid=1001, gid=5), own_uid=999)
    assert is_admin(cfg, OldPeer(uid=7, gid=2002), own_uid=999)                  # primary group
    assert is_admin(cfg, NewPeer(uid=7, gid=5, groups=(3, 2002)), own_uid=999)   # supplementary group
    assert not is_admin(cfg, NewPeer(uid=7, gid=5, groups=(3,)), own_uid=999)
    assert not is_admin(cfg, OldPeer(uid=None, gid=2002), own_uid=999)          # unknown peer: never
    assert is_admin(cfg, OldPeer(uid=0, gid=0), own_uid=999)                     # root
    assert is_admin(cfg, OldPeer(uid=999, gid=999), own_uid=999)                 # oracd's own user
    with pytest.raises(AccessDenied) as err:
        require_admin(cfg, OldPeer(uid=os.getuid() + 12345, gid=5), "quantize_model")
    assert err.value.code == -32013
    assert "server.admin_uids" in err.value.message and "server.admin_gids" in err.value.message
    assert err.value.data["reason"] == "not_admin" and err.value.data["method"] == "quantize_model"


def test_admin_lists_are_validated():
    assert from_dict({"server": {"admin_uids": [1000], "admin_gids": [27]}}, Path("/")).server.admin_gids == (27,)
    for bad in ([-1], ["root"], 5, [True]):
        with pytest.raises(ConfigError, match="server.admin_uids"):
            from_dict({"server": {"admin_uids": bad}}, Path("/"))


# ---------------------------------------------------------------------- quantize's disk budget
def test_output_limit_is_the_smallest_budget_and_names_it():
    gib = 2 ** 30
    assert output_limit(QuantizeLimits(), used=10 * gib, free=1) == (0, "")
    lim = QuantizeLimits(max_output_bytes=8 * gib, max_total_bytes=16 * gib, min_free_bytes=2 * gib)
    assert output_limit(lim, used=0, free=100 * gib) == (8 * gib, "llama.quantize_max_output_bytes")
    assert output_limit(lim, used=12 * gib, free=100 * gib) == (4 * gib, "llama.quantize_max_total_bytes")
    assert output_limit(lim, used=0, free=3 * gib) == (1 * gib, "llama.quantize_min_free_bytes")
    assert output_limit(lim, used=20 * gib, free=3 * gib) == (0, "llama.quantize_max_total_bytes")
    assert output_limit(lim, used=0, free=None) == (8 * gib, "llama.quantize_max_output_bytes")


def test_the_ledger_counts_only_quantize_outputs_that_still_exist(tmp_path):
    (tmp_path / "operators-own.gguf").write_bytes(b"x" * 5000)       # not quantize's: never counted
    ledger = Ledger(tmp_path)
    assert ledger.used() == 0
    for name, size in (("a.gguf", 100), ("b.gguf", 300)):
        (tmp_path / name).write_bytes(b"x" * size)
        ledger.add(name)
    assert ledger.used() == 400 and ledger.used(exclude=("b.gguf",)) == 100
    (tmp_path / "a.gguf").unlink()
    (tmp_path / "a.gguf").symlink_to(tmp_path / "operators-own.gguf")   # a link is not quantize's file
    assert ledger.used() == 300
    (tmp_path / "ledger-junk").write_text("")
    (tmp_path / ".oracd-quantized.json").write_text("{not json")
    assert ledger.used() == 0 and ledger.names() == []


# ---------------------------------------------------------------------- links resolved once
def test_a_link_is_resolved_once_and_children_get_the_checked_target(tmp_path):
    models, outside = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    outside.mkdir()
    inside_target = models / "real-model.gguf"
    inside_target.write_bytes(b"GGUF")
    (outside / "secret.gguf").write_bytes(b"GGUF")
    link = models / "alias.gguf"
    link.symlink_to(inside_target)
    store = ModelStore([models], confine_links=True)
    m = store.resolve("alias")
    assert m.name == "alias.gguf" and m.path == inside_target.resolve() and os.fspath(m) == str(m.path)
    link.unlink()                                  # the writer flips the link after the check ...
    link.symlink_to(outside / "secret.gguf")
    cfg = with_overrides(Config(), llama={"models_dir": models})
    cmd = build_command(cfg, "llama-server", m.path, LlamaEndpoint(unix_path="/x.sock"), name=m.name)
    assert cmd[cmd.index("-m") + 1] == str(inside_target.resolve())   # ... and changes nothing for this load
    assert cmd[cmd.index("--alias") + 1] == "alias.gguf"
    with pytest.raises(InvalidPath, match="confine_model_links"):
        store.resolve("alias")                     # a new request sees the new target, and refuses it
    assert ModelStore([models]).resolve("alias").path == (outside / "secret.gguf").resolve()


# ---------------------------------------------------------------------- the children's environment
def test_children_get_an_allow_listed_environment(monkeypatch):
    for k, v in {"SECRET_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/usr/bin", "LANG": "C.UTF-8",
                 "LC_ALL": "C", "CUDA_VISIBLE_DEVICES": "0", "GGML_CUDA_NO_PINNED": "1", "OMP_NUM_THREADS": "2",
                 "LLAMA_ARG_MODEL": "/evil.gguf", "LLAMA_API_KEY": "theirs", "MY_TUNE_A": "1",
                 "HTTPS_PROXY": "http://p"}.items():
        monkeypatch.setenv(k, v)
    env = child_env(LlamaEndpoint(port=1, api_key="ours"))
    assert "SECRET_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "HTTPS_PROXY" not in env
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8" and env["LC_ALL"] == "C"
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["GGML_CUDA_NO_PINNED"] == "1" and env["OMP_NUM_THREADS"] == "2"
    assert "LLAMA_ARG_MODEL" not in env and env["LLAMA_API_KEY"] == "ours"
    assert "LLAMA_API_KEY" not in child_env()
    extra = child_env(None, ("HTTPS_PROXY", "MY_TUNE_*", "LLAMA_ARG_*"))
    assert extra["HTTPS_PROXY"] == "http://p" and extra["MY_TUNE_A"] == "1" and "LLAMA_ARG_MODEL" not in extra


def test_child_env_setting_is_validated():
    assert from_dict({"llama": {"child_env": ["HTTPS_PROXY", "MY_*"]}}, Path("/")).llama.child_env == \
        ("HTTPS_PROXY", "MY_*")
    for bad in (["A B"], ["X=1"], "PATH", ["LLAMA_ARG_*"], ["LLAMA_API_KEY"], [""]):
        with pytest.raises(ConfigError, match="llama.child_env"):
            from_dict({"llama": {"child_env": bad}}, Path("/"))


def test_the_help_probe_runs_off_the_event_loop(tmp_path):
    """make_endpoint's ``--help`` probe (a process run, seconds on a Jetson) must not freeze the loop."""
    slow = tmp_path / "llama-server"
    marker = tmp_path / "probed"
    slow.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 1\necho '--host HOST  ip address or unix socket path ending in .sock'\n")
    slow.chmod(0o755)
    supports_unix_socket.cache_clear()
    cfg = with_overrides(Config(), server={"runtime_dir": tmp_path / "rt"})
    (tmp_path / "rt").mkdir()
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(marker.exists())
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            ep = await make_endpoint(cfg, str(slow))
            tg.cancel_scope.cancel()
        return ep

    ep = anyio.run(main)
    assert ep.unix_path and ep.unix_path.endswith(".sock")
    assert sum(ticks) >= 5, "the loop did not run while llama-server --help was probed"


# ---------------------------------------------------------------------- the pidfile
def test_pidfile_entries_need_a_start_time():
    assert pidfile.parse_pidfile("123 1700000000.25\n") == (123, 1700000000.25)
    for bad in ("123\n", "", "x 1.0", "123 x", "1 5.0", "123 0", "1 2 3"):
        assert pidfile.parse_pidfile(bad) is None
    ours = ["/opt/bin/llama-server", "-m", "/m/x.gguf", "--host", "/run/oracd/llama/llama-server.sock"]
    assert pidfile.is_our_orphan(100.0, 100.01, ours, "llama-server", ["/run/oracd/llama"])
    assert not pidfile.is_our_orphan(100.0, 250.0, ours, "llama-server", ["/run/oracd/llama"])   # pid reused
    assert not pidfile.is_our_orphan(100.0, 100.0, ["/bin/sh"] + ours[1:], "llama-server", ["/run/oracd/llama"])
    assert not pidfile.is_our_orphan(100.0, 100.0, ours, "llama-server", ["/elsewhere"])


def _spawn_group(tmp_path: Path, runtime: Path):
    """A stand-in "llama-server" (argv[0]) leading its own process group, and a bystander in that group."""
    by_file = tmp_path / "bystander.pid"
    code = ("import os, subprocess, sys; b = subprocess.Popen(['sleep', '60']); "
            "open(sys.argv[1], 'w').write(str(b.pid)); "
            "os.execv(sys.executable, ['llama-server', '-c', 'import time; time.sleep(60)', sys.argv[2]])")
    leader = subprocess.Popen([sys.executable, "-c", code, str(by_file), str(runtime / "llama-server.sock")],
                              start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(leader.pid).cmdline()[0] == "llama-server" and by_file.read_text().strip():
                break
        except (OSError, IndexError, psutil.Error):
            pass
        time.sleep(0.01)
    return leader, psutil.Process(int(by_file.read_text()))


@pytest.mark.parametrize("planted", ["bare pid", "wrong start time", "right start time"])
def test_reap_orphan_signals_only_the_recorded_process(tmp_path, planted):
    """A pidfile signals one pid, and only the process that has the recorded start time; the rest of its
    process group (here: a bystander) is never signalled."""
    runtime = tmp_path / "rt"
    runtime.mkdir()
    cfg = with_overrides(Config(), server={"runtime_dir": runtime})
    leader, bystander = _spawn_group(tmp_path, runtime)
    try:
        assert os.getpgid(bystander.pid) == leader.pid
        started = psutil.Process(leader.pid).create_time()
        text = {"bare pid": f"{leader.pid}\n", "wrong start time": f"{leader.pid} {started - 3600}\n",
                "right start time": f"{leader.pid} {started!r}\n"}[planted]
        (runtime / pidfile.PIDFILE).write_text(text)
        stopped = pidfile.reap_orphan(cfg, "llama-server", grace=5)
        assert not (runtime / pidfile.PIDFILE).exists()
        if planted == "right start time":
            leader.wait(10)             # (reap_orphan's psutil wait may have collected its status already)
            assert stopped == leader.pid and not psutil.pid_exists(leader.pid)
        else:
            assert stopped is None and leader.poll() is None
        assert bystander.is_running() and bystander.status() != psutil.STATUS_ZOMBIE
    finally:
        for p in (leader.pid, bystander.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        leader.wait(10)


def test_write_pidfile_records_the_start_time(tmp_path):
    cfg = with_overrides(Config(), server={"runtime_dir": tmp_path})
    pidfile.write_pidfile(cfg, os.getpid())
    pid, started = pidfile.parse_pidfile((tmp_path / pidfile.PIDFILE).read_text())
    assert pid == os.getpid() and abs(started - psutil.Process().create_time()) < pidfile.START_TOLERANCE


# ---------------------------------------------------------------------- truncated GGUFs
def test_tensor_data_past_the_end_of_the_file_is_truncated(tmp_path):
    path = write_tiny_f32(tmp_path / "tiny.gguf")
    meta = read_gguf_header(path)
    size = path.stat().st_size
    assert meta["valid"] and not meta["truncated"] and meta["data_end"] <= size
    with open(path, "r+b") as fh:
        fh.truncate(size - 4096)                    # the header is intact, the last tensor is cut off
    cut = read_gguf_header(path)
    assert cut["valid"] and cut["truncated"] and cut["data_end"] == meta["data_end"]


# ---------------------------------------------------------------------- the model that comes back
def test_a_failed_fresh_load_gives_back_the_model_that_was_serving():
    q = SwapQueue()
    assert q.take_previous("a") is None            # nothing wanted yet
    q.want("a")
    assert q.take_previous("a") is None            # started from nothing: nothing to go back to
    q.served()
    q.want("b")                                    # a was serving; b replaces it
    assert q.previous == "a"
    assert q.take_previous("b") == "a" and q.current == "a" and q.never_ready
    assert q.take_previous("a") is None            # the restore failing too: no ping-pong


def test_no_restore_of_a_model_that_never_became_ready_or_after_an_unload():
    q = SwapQueue()
    q.want("a")
    q.want("b")                                    # a never became ready
    assert q.take_previous("b") is None
    q.served()
    q.unload()
    q.want("c")                                    # from nothing (unloaded): nothing to restore
    assert q.take_previous("c") is None
    q.want("d")
    q.served()
    q.want("e")
    q.served()                                     # e loaded fine: its later failure... is not a fresh load
    assert q.take_previous("e") is None


def test_start_servers_host_lookup_runs_off_the_event_loop(monkeypatch):
    """_check_host resolves with anyio.getaddrinfo (a worker thread): a slow resolver cannot freeze oracd."""
    import socket as socket_mod
    from oracd.child import extra_servers

    real = socket_mod.getaddrinfo
    looked_up = []

    def slow(host, *a, **kw):
        looked_up.append(host)
        time.sleep(0.5)
        return real("127.0.0.1", *a, **kw)

    monkeypatch.setattr(socket_mod, "getaddrinfo", slow)
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(bool(looked_up))
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await extra_servers._check_host("voice-box.lan", allow_remote=False)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert looked_up and sum(ticks) >= 5, "the loop did not run while the host was looked up"
