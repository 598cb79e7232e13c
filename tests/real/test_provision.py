"""Provisioning proves the binaries run here: a cached llama-server that crashes is caught, named and replaced.

Real pieces: the provisioned llama.cpp entry (the safe baseline) and SmolLM2.  The
crashing llama-server is planted: a stand-in that dies with SIGSEGV, at start or on
its first decode (the AMX segfault), in a "native" cache entry of a private cache.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import BIN, MODELS, REPO, SMOL
from oracd.provision import flavors as fl
from oracd.provision.build import TARGETS
from oracd.provision.cache import locked
from oracd.provision.machine import cpu_flags, machine_key

CRASH_AT_START = "#!/bin/sh\nkill -SEGV $$\n"
# answers /health like llama-server, then dies by SIGSEGV on the first completion (the AMX kernel's crash)
CRASH_AT_DECODE = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, signal, socketserver, sys
    from http.server import BaseHTTPRequestHandler
    sock = sys.argv[sys.argv.index("--host") + 1]
    class H(BaseHTTPRequestHandler):
        def address_string(self): return "local"
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{{}}")
        def do_POST(self):
            print("ggml_backend_amx_mul_mat: pretending to fault", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
    socketserver.UnixStreamServer(sock, H).serve_forever()
""")


def _entry(cache: Path, flavor: str) -> Path:
    cpu = cpu_flags()
    key = machine_key(fl.flavors_for(platform.machine())[flavor], cpu)
    return cache / "llama.cpp" / fl.entry_name(key), key


def _plant(cache: Path, flavor: str, server_script: str) -> Path:
    entry, key = _entry(cache, flavor)
    (entry / "bin").mkdir(parents=True)
    for name in TARGETS.values():
        p = entry / "bin" / name
        p.write_text(server_script if name == "llama-server" else "#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    (entry / "KEY.json").write_text(json.dumps(key))
    (entry / "BUILT").write_text("planted by a test\n")
    return entry


def _seed_real(cache: Path, flavor: str) -> Path:
    """Hard-link the real provisioned entry (the one bin/ points at) into the private cache."""
    real = Path(os.path.realpath(BIN / "llama-server")).parent.parent
    entry, key = _entry(cache, flavor)
    assert json.loads((real / "KEY.json").read_text()) == key, "bin/ is not this machine's baseline entry"
    shutil.copytree(real, entry, copy_function=os.link)
    return entry


@pytest.fixture
def cache(tmp_path) -> Path:
    c = tmp_path / "cache"
    (c / "models").mkdir(parents=True)
    os.link(MODELS / SMOL, c / "models" / SMOL)
    return c


@pytest.mark.parametrize("script", [CRASH_AT_START, CRASH_AT_DECODE], ids=["at-start", "at-first-decode"])
def test_crashing_cached_llama_server_is_named_dropped_and_replaced(cache, tmp_path, script):
    safe = fl.safe_flavor(platform.machine(), cpu_flags())
    planted = _plant(cache, "native", script)
    good = _seed_real(cache, safe)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").symlink_to(planted / "bin" / "llama-server")   # what an earlier setup linked
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "oracd.provision", "--flavor", "native", "--cache", str(cache),
                          "--bin-dir", str(bin_dir), "--models-dir", str(tmp_path / "models")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "smoke test FAILED" in log and "llama-server crashed (SIGSEGV)" in log, log
    assert "likely a CPU kernel in this build does not work on this machine" in log
    assert f"retrying with the safe baseline {safe!r}" in log
    assert not planted.exists(), "the crashing entry must be dropped"
    assert os.path.realpath(bin_dir / "llama-server") == str(good / "bin" / "llama-server")
    assert (tmp_path / "models" / SMOL).stat().st_size == (MODELS / SMOL).stat().st_size
    assert time.monotonic() - t0 < 120


def test_failure_of_every_candidate_says_what_to_do(cache, tmp_path):
    """Both the requested flavor and the cached baseline crash, and the baseline's rebuild is
    refused (no network, no sdist): setup fails, naming each crash and what a person can do."""
    safe = fl.safe_flavor(platform.machine(), cpu_flags())
    _plant(cache, "native", CRASH_AT_START)
    _plant(cache, safe, CRASH_AT_START)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "nothing"))
    out = subprocess.run([sys.executable, "-m", "oracd.provision", "--flavor", "native", "--cache", str(cache),
                          "--bin-dir", str(tmp_path / "bin"), "--models-dir", str(tmp_path / "models")],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    log = out.stdout + out.stderr
    assert out.returncode != 0, log
    assert log.count("llama-server crashed (SIGSEGV)") >= 2, log
    assert f"retrying with the safe baseline {safe!r} (fresh build)" in log
    assert "downloading llama-cpp-python==0.3.36" in log      # the fresh build was really attempted
    tail = log[log.index("llama-server does not run on this machine:"):]
    assert "- native: llama-server crashed (SIGSEGV)" in tail and f"- {safe}: llama-server crashed (SIGSEGV)" in tail
    assert f"- {safe} (fresh build): cannot download llama-cpp-python==0.3.36 from PyPI" in tail
    assert "What you can do:" in tail and "ORACD_LLAMA_FLAVOR=generic scripts/setup" in tail
    assert "Traceback" not in log
    assert not (tmp_path / "bin" / "llama-server").exists()   # nothing broken was linked


def test_second_setup_waits_for_the_first_then_proceeds(tmp_path):
    lock = tmp_path / "entry.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from oracd.provision.cache import locked
        with locked(__import__('pathlib').Path({str(lock)!r}), print, "x"):
            print("held", flush=True); time.sleep(1.5)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    t0 = time.monotonic()
    with locked(lock, said.append, "entry X"):
        waited = time.monotonic() - t0
    holder.wait(10)
    assert waited > 0.5, waited
    assert said[0] == f"waiting for another setup (pid {holder.pid}) working on entry X", said


def test_a_half_built_entry_and_a_killed_builds_leftovers_are_never_taken_as_done(cache, tmp_path):
    """An entry without its BUILT marker (a build cut short before the marker and rename) and a temporary
    sibling left by a killed setup: both are removed under the lock and a build is started, never reused."""
    safe = fl.safe_flavor(platform.machine(), cpu_flags())
    entry = _seed_real(cache, safe)
    (entry / "BUILT").unlink()
    leftover = entry.with_name(f".{entry.name}.tmp-99999")
    (leftover / "bin").mkdir(parents=True)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "nothing"))
    out = subprocess.run([sys.executable, "-m", "oracd.provision", "--flavor", safe, "--cache", str(cache),
                          "--bin-dir", str(tmp_path / "bin"), "--models-dir", str(tmp_path / "models")],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    log = out.stdout + out.stderr
    assert f"llama.cpp {entry.name}: cached" not in log and "smoke test" not in log, log
    assert "downloading llama-cpp-python==0.3.36" in log, log                  # a build was started instead
    assert out.returncode != 0 and "cannot download llama-cpp-python==0.3.36" in log
    assert not entry.exists() and not leftover.exists()
    assert not (tmp_path / "bin" / "llama-server").exists()
