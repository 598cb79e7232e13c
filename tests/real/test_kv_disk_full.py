"""A full KV cache disk against the real llama-server and SmolLM2: the save after a prefill fails, nothing
half-written is left, service goes on, and status (and ``oracctl status``) say why restore has nothing to use.

(The log disk, fd exhaustion and injected failures are in tests/fake/test_box_faults.py: a stand-in
llama-server suffices there.)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import SMOL, Oracd, log_events, mount_tmpfs, umount_tmpfs

SYSTEM = "You parse spoken home commands into JSON objects. " * 24


@pytest.fixture
def root():
    root = Path(tempfile.mkdtemp(prefix="oracd-b-", dir="/tmp"))
    yield root
    umount_tmpfs(root / "kv")
    shutil.rmtree(root, ignore_errors=True)


def test_a_full_kv_cache_disk_is_reported_in_status_and_oracctl_and_serving_goes_on(root):
    (root / "models.toml").write_text(f'[profiles."{SMOL}"]\nsystem_prompt = """{SYSTEM}"""\n'
                                      "temperature = 0.0\nmax_tokens = 8\n")
    mount_tmpfs(root / "kv", "64k")                     # an entry for this prompt is over 1 MB
    o = Oracd(root=root, llama={"profiles_file": str(root / "models.toml")})
    try:
        o.start()
        warm = o.call("status")["child"]["warm"]
        assert warm["how"] == "prefilled" and warm["restore"] == "on", warm
        save = warm["save"]
        assert save["ok"] is False and save["reason"] == "no_space", save
        assert save["free_bytes"] is not None and save["free_bytes"] < 1 << 20
        assert warm["outcomes"].get("save_failed") == 1 and "saved" not in warm["outcomes"]
        leftovers = [p.name for p in (root / "kv").iterdir()]
        assert not [n for n in leftovers if n.endswith((".kv", ".sha256")) or n.startswith("tmp-")], leftovers
        failed = log_events(o, "kv cache save failed")
        assert failed and failed[0]["reason"] == "no_space"
        shown = subprocess.run([sys.executable, "-m", "oracd_client.cli", "--socket", str(o.socket), "status"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "KV cache save failed: no space left, nothing to restore next load" in shown, shown
        assert o.call("generate", prompt="Turn on the kitchen lights.")["response"]
        pid = o.call("status")["child"]["pid"]          # a crash restart: nothing to restore, prefill again
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:
            st = o.call("status")["child"]
            if st["state"] == "ready" and st["pid"] not in (pid, None):
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["warm"]["how"] == "prefilled" and st["warm"]["save"]["reason"] == "no_space"
        assert st["warm"]["outcomes"]["save_failed"] == 2
        assert o.call("generate", prompt="Turn on the kitchen lights.")["response"]
        assert o.proc.poll() is None
    finally:
        o.stop()
