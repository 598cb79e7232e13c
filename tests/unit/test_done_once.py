"""Logic that two places need, written once: the /health wait, the ``--help`` probe, the memory refusal, the
chat warm-up target, the TOML import.  Each test drives the shared piece the way both callers use it."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List, Optional

import anyio
import pytest

from helpers import REPO
from oracd.child.command import help_text, supports_unix_socket
from oracd.child.readiness import HEALTHY, TIMED_OUT, wait_healthy
from oracd.child.warmup import chat_target, warm_target
from oracd.config import Config, Profile
from oracd.memory import MiB, judge
from oracd.models.quantize import allowed_types
from oracd_protocol.errors import ModelLoadFailed, QuantizeFailed


# ---------------------------------------------------------------------- the /health wait
class FakeHealth:
    """Answers /health from a script: an int is a status, an exception is raised, None never answers."""

    def __init__(self, answers: List[object]):
        self.answers = list(answers)
        self.asked = 0

    async def health(self) -> int:
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else 503
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            await anyio.sleep_forever()
        return answer


def run_wait(http: FakeHealth, seconds: float, stop=lambda: None, probe_timeout: float = 5.0):
    pauses: List[float] = []

    async def pause(s: float) -> None:
        pauses.append(s)

    async def main():
        return await wait_healthy(http, time.monotonic() + seconds, probe_timeout, stop, pause,
                                  first_pause=0.02, max_pause=0.05)
    return anyio.run(main), pauses


def test_health_wait_ends_at_the_first_200_through_errors_and_non_200s():
    http = FakeHealth([ConnectionRefusedError(), 503, OSError("reset"), 200])
    outcome, pauses = run_wait(http, 30)
    assert outcome == HEALTHY and http.asked == 4
    assert pauses == [0.02, 0.03, 0.045]            # grows by half, capped at max_pause


def test_health_wait_times_out_even_when_a_probe_never_answers():
    http = FakeHealth([None])                       # the first probe hangs: bounded by the deadline
    t0 = time.monotonic()
    outcome, _ = run_wait(http, 0.3, probe_timeout=60)
    assert outcome == TIMED_OUT
    assert time.monotonic() - t0 < 30               # answers at all, long before the probe timeout


def test_health_wait_returns_what_stop_says_before_probing_again():
    http = FakeHealth([503, 503, 200])
    calls = []

    def stop() -> Optional[str]:
        calls.append(1)
        return "exited" if len(calls) == 2 else None
    outcome, _ = run_wait(http, 30, stop)
    assert outcome == "exited" and http.asked == 1  # the second check stopped it: no probe after it


# ---------------------------------------------------------------------- the --help probe
def tool(tmp_path: Path, name: str, stdout: str, stderr: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --help ] || exit 3\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\n")
    path.chmod(0o755)
    return str(path)


def test_help_text_is_stdout_and_stderr_and_both_probes_read_it(tmp_path):
    # llama-quantize prints its type list on stderr; llama-server its options on stdout
    quantize = tool(tmp_path, "llama-quantize", "usage: llama-quantize ...\n",
                    "Allowed quantization types:\n   2  or  Q4_0    :  4.34G\n   8  or  Q5_0  :  5.21G\n")
    assert "usage" in help_text(quantize) and "Q5_0" in help_text(quantize)
    allowed_types.cache_clear()
    assert allowed_types(quantize) == ("Q4_0", "Q5_0")
    server = tool(tmp_path, "llama-server", "--host HOST   ip address or unix socket path ending in .sock\n")
    supports_unix_socket.cache_clear()
    assert supports_unix_socket(server)


def test_a_help_probe_that_cannot_run_is_each_callers_own_answer(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(OSError):
        help_text(missing)
    supports_unix_socket.cache_clear()
    assert supports_unix_socket(missing) is False           # fall back to TCP
    allowed_types.cache_clear()
    with pytest.raises(QuantizeFailed, match="cannot run"):
        allowed_types(missing)
    allowed_types.cache_clear()
    with pytest.raises(QuantizeFailed, match="could not read the type list"):
        allowed_types(tool(tmp_path, "llama-quantize", "no list here\n"))


# ---------------------------------------------------------------------- the memory refusal
def test_a_verdict_that_does_not_fit_raises_the_one_refusal_and_one_that_fits_returns_itself():
    meta = {"weights_bytes": 100 * MiB, "block_count": 30, "head_count": 9, "head_count_kv": 3,
            "embedding_length": 576, "context_length": 8192}
    fits = judge("m", meta, 512, [], 0, 16 * MiB, room=4096 * MiB, parallel=1, fit_ctx=False)
    assert fits.fits_or_raise("MemAvailable") is fits
    tight = judge("m", meta, 512, [], 0, 16 * MiB, room=120 * MiB, parallel=1, fit_ctx=False)
    with pytest.raises(ModelLoadFailed) as err:
        tight.fits_or_raise("MemAvailable", freed=20 * MiB)
    assert err.value.data["reason"] == "insufficient_memory"
    assert err.value.data["required_bytes"] == tight.need and err.value.data["available_bytes"] == 120 * MiB
    assert "including 20 MiB the current model frees" in err.value.message


# ---------------------------------------------------------------------- the chat warm-up target
def test_the_profile_warm_target_and_a_prewarm_system_prompt_are_the_same_shape():
    cfg = Config(profiles={"m.gguf": Profile(model="m.gguf", system_prompt="Be brief.", think=False)})
    target = warm_target(cfg, "m.gguf")
    assert target == chat_target("Be brief.\n/no_think", False)
    assert target == {"messages": [{"role": "system", "content": "Be brief.\n/no_think"},
                                   {"role": "user", "content": "ok"}],
                      "template_kwargs": {"enable_thinking": False}}
    assert chat_target("x", True)["template_kwargs"] is None


# ---------------------------------------------------------------------- the TOML import
def test_the_tomllib_version_guard_is_written_once():
    guarded = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "oracd").rglob("*.py"))
               if re.search(r"import tomli as tomllib", p.read_text())]
    assert guarded == ["oracd/config/toml.py"]


# ---------------------------------------------------------------------- the Unix listener
def test_both_unix_listeners_are_made_one_way_stale_replaced_live_and_non_sockets_refused(tmp_path):
    import os
    import socket
    import stat

    from oracd.api.listener import StartupError, bind_unix_listener
    from oracd.config.settings import with_overrides
    from oracd.http.server import bind_unix
    cfg = with_overrides(Config(), server={"socket_mode": 0o600, "socket_group": ""})
    path = tmp_path / "run" / "http.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.parent.mkdir()
    stale.bind(str(path))
    stale.close()                                       # a socket file nobody listens on
    live = bind_unix(str(path), cfg)                    # the HTTP API's door to the shared one
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
        assert [p.name for p in path.parent.iterdir()] == ["http.sock"]      # no temp name left
        with pytest.raises(StartupError, match=r"^http.listen: another process is already serving"):
            bind_unix(str(path), cfg)
        with pytest.raises(StartupError, match=r"^another process is already serving"):
            bind_unix_listener(path, cfg)
    finally:
        live.close()
    plain = tmp_path / "run" / "file"
    plain.write_text("keep me")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        bind_unix(str(plain), cfg)
    assert plain.read_text() == "keep me"
    os.unlink(path)
