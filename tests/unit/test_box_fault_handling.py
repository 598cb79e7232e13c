"""The box's own faults, in milliseconds: a failing log file, accept() out of descriptors, the fd budget,
why a KV cache save failed, and contained tasks."""
from __future__ import annotations

import errno
import io
import json
import os
import resource
from pathlib import Path

import anyio
import pytest

from oracd import fdbudget, logs
from oracd.api import acceptor as acc
from oracd.child.kvstore import classify_save_failure
from oracd.config.settings import from_dict
from oracd.isolate import contained
from oracd.logs import LogSink
from oracd_client.cli.status import warm_line


def _lines(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class _FailingStream(io.StringIO):
    def write(self, s):
        raise OSError(errno.EIO, "Input/output error")


# ---------------------------------------------------------------------- the log sink
def test_a_full_log_file_drops_lines_to_stderr_says_so_once_and_recovers(tmp_path):
    """/dev/full answers every write with ENOSPC: nothing raises, each line still reaches stderr and is
    counted, the notice comes once; once the file works again the first line there says what was missed."""
    path = tmp_path / "orac.log"
    path.symlink_to("/dev/full")
    err = io.StringIO()
    sink = LogSink(path, 1 << 20, 2, err)
    for i in range(5):
        sink.write({"event": "request", "level": "info", "n": i})
    st = sink.state()
    assert st["ok"] is False and st["dropped_lines"] == 5 and st["last_error"].startswith("ENOSPC")
    assert st["since"] is not None and st["file"] == str(path)
    out = err.getvalue()
    assert out.count("is failing (ENOSPC") == 1
    assert sum(1 for line in out.splitlines() if line.startswith("level=info event='request'")) == 5
    path.unlink()                        # the disk has room again
    sink._retry_at = 0                   # the retry time has come
    sink.write({"event": "after", "level": "info"})
    recs = _lines(path)
    assert [r["event"] for r in recs] == ["log file writable again", "after"]
    assert recs[0]["dropped_lines"] == 5 and recs[0]["last_error"].startswith("ENOSPC")
    assert sink.state()["ok"] is True and "writable again" in err.getvalue()


def test_the_file_is_retried_only_when_the_retry_time_comes(tmp_path):
    path = tmp_path / "orac.log"
    path.symlink_to("/dev/full")
    sink = LogSink(path, 1 << 20, 2, None, fallback=io.StringIO())
    sink.write({"event": "a"})
    path.unlink()
    sink.write({"event": "b"})           # within RETRY_S: not tried, dropped
    assert not path.exists() and sink.dropped == 2
    sink._retry_at = 0
    sink.write({"event": "c"})
    assert [r["event"] for r in _lines(path)] == ["log file writable again", "c"]


def test_without_log_stderr_lines_go_to_stderr_while_the_file_fails(tmp_path):
    path = tmp_path / "orac.log"
    path.symlink_to("/dev/full")
    fallback = io.StringIO()
    sink = LogSink(path, 1 << 20, 2, None, fallback=fallback)
    sink.write({"event": "kept", "level": "info"})
    assert "event='kept'" in fallback.getvalue()


def test_a_line_cut_in_half_by_enospc_never_glues_onto_the_next(tmp_path, monkeypatch):
    path = tmp_path / "orac.log"
    sink = LogSink(path, 1 << 20, 2, None, fallback=io.StringIO())
    sink.write({"event": "first"})
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logs.os, "write", half_then_full)
    sink.write({"event": "cut", "payload": "x" * 100})
    monkeypatch.setattr(logs.os, "write", real_write)
    sink._retry_at = 0
    sink.write({"event": "next"})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["event"] == "first"
    assert lines[1].startswith('{"event": "cut"') and not lines[1].endswith("}")     # the cut line, alone
    assert [json.loads(x)["event"] for x in lines[2:]] == ["log file writable again", "next"]


def test_a_failing_rotation_is_a_failing_file_and_rotation_resumes(tmp_path, monkeypatch):
    path = tmp_path / "orac.log"
    sink = LogSink(path, 2048, 2, None, fallback=io.StringIO())
    real_replace = os.replace

    def read_only(*a):
        raise OSError(errno.EROFS, "Read-only file system")

    for i in range(15):
        sink.write({"event": "fill", "i": i, "pad": "p" * 100})
    monkeypatch.setattr(logs.os, "replace", read_only)
    for i in range(20):
        sink.write({"event": "more", "i": i, "pad": "p" * 100})
    assert sink.state()["last_error"].startswith("EROFS") and sink.dropped > 0
    monkeypatch.setattr(logs.os, "replace", real_replace)
    sink._retry_at = 0
    for i in range(20):
        sink.write({"event": "later", "i": i, "pad": "p" * 100})
    assert sink.state()["ok"] and (tmp_path / "orac.log.1").exists()
    assert path.stat().st_size <= 2048
    assert all(r["event"] in ("later", "log file writable again", "fill", "more") for r in _lines(path))


def test_a_log_file_that_cannot_be_opened_at_start_is_a_failing_file_not_a_fatal_error(tmp_path):
    """A log dir that is gone (or read-only) at start: oracd runs on stderr and retries, instead of exiting
    into a systemd restart loop; the file is used once it can be opened."""
    path = tmp_path / "missing" / "orac.log"
    err = io.StringIO()
    sink = LogSink(path, 1 << 20, 2, err)
    sink.write({"event": "still here"})
    st = sink.state()
    assert not st["ok"] and st["dropped_lines"] == 1 and st["last_error"].startswith("ENOENT")
    assert "is failing (ENOENT" in err.getvalue() and "event='still here'" in err.getvalue()
    path.parent.mkdir()
    sink._retry_at = 0
    sink.write({"event": "in the file"})
    assert [r["event"] for r in _lines(path)] == ["log file writable again", "in the file"]


def test_stderr_failing_too_does_not_raise(tmp_path):
    path = tmp_path / "orac.log"
    path.symlink_to("/dev/full")
    sink = LogSink(path, 1 << 20, 2, _FailingStream())
    sink.write({"event": "x"})
    assert sink.dropped == 1


# ---------------------------------------------------------------------- the accept loop
def test_accept_errno_unwraps_anyios_broken_resource():
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
    except anyio.BrokenResourceError as wrapped:
        assert acc.accept_errno(wrapped) == errno.EMFILE
    assert acc.accept_errno(RuntimeError("x")) is None


class _Listener:
    """accept() fails with each of ``errors`` (anyio-style), then yields ``streams``, then is closed."""

    def __init__(self, errors, streams):
        self.script = list(errors) + list(streams)

    async def accept(self):
        await anyio.sleep(0)
        if not self.script:
            raise anyio.ClosedResourceError
        item = self.script.pop(0)
        if isinstance(item, int):
            raise anyio.BrokenResourceError from OSError(item, os.strerror(item))
        if isinstance(item, Exception):
            raise item
        return item


class _Stream:
    def __init__(self, name):
        self.name, self.sent, self.closed = name, [], False

    async def send(self, data):
        self.sent.append(data)

    async def aclose(self):
        self.closed = True


def test_the_acceptor_pauses_on_fd_exhaustion_counts_it_and_serves_on(monkeypatch):
    """EMFILE and friends pause and count; a handler that raises ends its own connection, with an
    InternalError answer carrying an incident id, and the next connection is served."""
    monkeypatch.setattr(acc, "PAUSE_S", 0)
    monkeypatch.setattr(acc, "UNEXPECTED_PAUSE_S", 0)
    served = []
    s1, boom, s2 = _Stream("s1"), _Stream("boom"), _Stream("s2")

    async def handler(stream):
        if stream is boom:
            raise RuntimeError("a bug in one connection")
        served.append(stream.name)

    async def main():
        errors = [errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
                  ValueError("unexpected")]
        async with anyio.create_task_group() as tg:
            a = acc.Acceptor(_Listener(errors, [s1, boom, s2]), handler, tg)
            await a.run()
        return a

    a = anyio.run(main)
    assert served == ["s1", "s2"]
    answer = json.loads(boom.sent[0])
    assert answer["error"]["code"] == -32603 and len(answer["error"]["data"]["incident"]) == 12
    assert boom.closed and not s1.sent
    assert a.errors == {"EMFILE": 2, "ENFILE": 1, "ENOBUFS": 1, "ENOMEM": 1, "ECONNABORTED": 1, "ValueError": 1}
    assert a.state()["last_error"] == "ValueError"


def test_contained_logs_an_exception_but_never_swallows_cancellation():
    async def bad():
        raise OSError(errno.EIO, "I/O error")

    async def main():
        await contained("a helper", bad)            # no raise
        with anyio.CancelScope() as scope:
            scope.cancel()
            await contained("a helper", anyio.sleep, 10)
        return scope.cancelled_caught

    assert anyio.run(main) is True


# ---------------------------------------------------------------------- the fd budget
def _cfg(**server):
    return from_dict({"server": {"max_connections": 256, **server}, "llama": {"parallel": 2}}, Path("/tmp"))


def test_the_budget_names_every_part_with_a_reserve_for_http():
    parts = fdbudget.budget(_cfg())
    assert parts["connections"] == 257 and parts["http_reserve"] == fdbudget.HTTP_RESERVE
    assert parts["llama_server"] == 2 + fdbudget.CHILD_EXTRA
    assert set(parts) == {"connections", "http_reserve", "llama_server", "extra_servers", "model_files",
                          "logs", "base"}
    assert sum(fdbudget.budget(_cfg(max_connections=1000)).values()) - sum(parts.values()) == 744


def test_plan_raises_soft_to_hard_and_says_whether_it_fits():
    p = fdbudget.plan(400, 1024, 4096)
    assert p.new_soft == 4096 and p.fits
    p = fdbudget.plan(400, 64, 64)
    assert p.new_soft is None and not p.fits
    p = fdbudget.plan(400, 1024, 1024)
    assert p.new_soft is None and p.fits
    p = fdbudget.plan(400, 256, 300)
    assert p.new_soft == 300 and not p.fits
    p = fdbudget.plan(400, 1024, resource.RLIM_INFINITY)
    assert p.new_soft == fdbudget.INFINITE_CAP and p.fits


# ---------------------------------------------------------------------- why a KV save failed
@pytest.mark.parametrize("exc, free, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), 10 << 20, "no_space"),
    (OSError(errno.EIO, "Input/output error"), 10 << 20, "io_error"),
    (OSError(errno.EROFS, "Read-only file system"), None, "read_only"),
    (RuntimeError("llama-server answered 500: failed to save slot"), 4096, "no_space"),
    (RuntimeError("llama-server answered 500: failed to save slot"), 10 << 20, "failed"),
    (RuntimeError("write error: Input/output error"), 10 << 20, "io_error"),
])
def test_a_failed_kv_save_is_classified(exc, free, reason):
    assert classify_save_failure(exc, free) == reason


def test_oracctl_status_says_why_the_save_failed():
    line = warm_line({"how": "prefilled", "ms": 120, "cached_tokens": [40, 40], "prompt_tokens": 41,
                      "restore": "on", "cache_dir": "/var/cache/oracd/kv", "cache_dir_bytes": 0,
                      "save": {"ok": False, "reason": "no_space", "free_bytes": 4096}})
    assert "KV cache save failed: no space left, nothing to restore next load" in line
    assert "free in /var/cache/oracd/kv" in line
    assert "save failed" not in warm_line({"how": "restored", "ms": 5, "restore": "on", "save": {"ok": True}})
