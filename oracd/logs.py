"""Logging: structlog events to ``<log_dir>/orac.log`` (JSON lines, rotated by size) and stderr.

Rotation keeps exactly ``orac.log``, ``orac.log.1`` ... ``orac.log.<log_backups>``
(default 2); journald gets the same events on stderr as key=value lines.
llama-server's own output arrives here too, tagged ``source=llama-server``, and
stdlib ``logging`` records from libraries are bridged in.

Why structlog's own pipeline ends in our ``LogSink`` instead of going through
stdlib handlers and ``ProcessorFormatter``: one line per request is written on
the hot path, and the stdlib route (two formatters, a stat and a seek per
record for rollover) was half the cost of a ``status`` call.

A failing log file (full disk, read-only remount, I/O error) never stops oracd:
``LogSink`` keeps writing stderr, counts the lines the file missed
(``status.logging``, ``oracd_log_lines_dropped_total``) and retries the file.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

import structlog

from .config import Config

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), default=str).encode


class LogSink:
    """Writes rendered events: JSON to a size-rotated file, key=value to stderr.

    Why it never raises: a full, read-only or failing log disk (ENOSPC, EROFS, EIO) is a box fault,
    not a reason to stop serving.  While the file fails, lines go to stderr (journald) only and are
    counted as dropped; the file is retried every ``RETRY_S`` seconds (one clock read per line
    meanwhile), and rotation resumes with it.  stderr failing too is ignored.
    """

    RETRY_S = 5.0

    def __init__(self, path: Path, max_bytes: int, backups: int, stderr: Optional[TextIO],
                 fallback: Optional[TextIO] = None):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stderr = stderr
        self.fallback = fallback if fallback is not None else stderr   # where lines go while the file fails
        self.lock = threading.Lock()     # llama-server pumps and to_thread workers may log too
        self.fd: Optional[int] = None
        self.size = 0
        self.dropped = 0                 # lines that did not reach the file
        self.last_error: Optional[str] = None
        self.since: Optional[float] = None   # wall time the current failure began (None: the file is fine)
        self._retry_at = 0.0
        try:
            self._open()
        except OSError as exc:           # choice: start anyway (stderr only, retried), not a restart loop
            self._failed(exc)

    def _open(self) -> None:
        """Open (append; read too, for the last byte) the file; a line left cut in half by a failed write
        gets its newline first."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")
                size += 1
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.size = fd, size

    def _close_fd(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def _rotate(self) -> None:
        self._close_fd()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _write_file(self, data: bytes) -> None:
        if self.fd is None:
            self._open()
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)   # type: ignore[arg-type]
            self.size += n
            view = view[n:]

    def _failed(self, exc: OSError) -> None:
        """The file failed: stop using it until the retry time, and say so once on stderr."""
        self._close_fd()
        self._retry_at = time.monotonic() + self.RETRY_S
        self.last_error = f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror or exc}"
        if self.since is None:
            self.since = time.time()
            self._to(self.fallback, f"oracd: log file {self.path} is failing ({self.last_error}); logging to "
                                    f"stderr only, retrying every {self.RETRY_S:g} s\n")

    def _recovered(self) -> None:
        """The retry: one line in the file saying what it missed (raises OSError if it still fails)."""
        note = {"event": "log file writable again", "level": "warning", "logger": "oracd.logs",
                "dropped_lines": self.dropped, "failing_since": self.since, "last_error": self.last_error,
                "timestamp": datetime.now(timezone.utc).isoformat()}
        self._write_file((_dumps(note) + "\n").encode("utf-8", "backslashreplace"))
        self.since = None
        self._to(self.fallback, f"oracd: log file {self.path} is writable again "
                                f"({self.dropped} lines dropped so far)\n")

    def write(self, event: dict) -> None:
        line = _dumps(event) + "\n"
        with self.lock:
            written = False
            if self.since is None or time.monotonic() >= self._retry_at:
                try:
                    if self.since is not None:
                        self._recovered()
                    self._write_file(line.encode("utf-8", "backslashreplace"))   # lone surrogates from requests
                    written = True
                except OSError as exc:
                    self._failed(exc)
            if not written:
                self.dropped += 1
                if self.fallback is not self.stderr:
                    self._to(self.fallback, _key_value(event))
            if self.stderr is not None:
                self._to(self.stderr, _key_value(event))

    @staticmethod
    def _to(stream: Optional[TextIO], text: str) -> None:
        """stderr is best effort: a closed or failing stderr must not take logging (or oracd) down."""
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass

    def state(self) -> Dict[str, Any]:
        """status.logging: is the file being written, and how many lines it has missed."""
        return {"file": str(self.path), "ok": self.since is None, "dropped_lines": self.dropped,
                "last_error": self.last_error, "since": self.since}

    def close(self) -> None:
        with self.lock:
            self._close_fd()


def _key_value(event: dict) -> str:
    head = f"level={event.get('level', '')} event={event.get('event', '')!r}"
    rest = " ".join(f"{k}={v!r}" for k, v in event.items() if k not in ("level", "event", "timestamp", "logger"))
    return f"{head} {rest}\n" if rest else head + "\n"


class _SinkLogger:
    """structlog's final 'logger': the last processor hands it the event dict as kwargs."""

    def __init__(self, sink: LogSink):
        self._sink = sink

    def msg(self, **event: Any) -> None:
        self._sink.write(event)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _Bridge(logging.Handler):
    """stdlib logging records (aiohttp, asyncio, ...) into the same sink."""

    def __init__(self, sink: LogSink):
        super().__init__()
        self.sink = sink
        self.stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def emit(self, record: logging.LogRecord) -> None:
        event = {"event": record.getMessage(), "logger": record.name, "level": record.levelname.lower()}
        if record.exc_info:
            event["exception"] = logging.Formatter().formatException(record.exc_info)
        self.sink.write(self.stamp(None, "", event))


_sink: Optional[LogSink] = None


def _to_sink(_logger: Any, _name: str, event: dict) -> dict:
    return event


def setup(cfg: Config) -> None:
    """Configure structlog (and bridge stdlib logging) to the rotated file and optionally stderr."""
    global _sink
    try:
        cfg.server.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass                             # the sink cannot open its file then: it says so and retries
    if _sink is not None:
        _sink.close()
    _sink = sink = LogSink(cfg.log_file, cfg.server.log_max_bytes, cfg.server.log_backups,
                           sys.stderr if cfg.server.log_stderr else None, fallback=sys.stderr)
    level = _LEVELS[cfg.server.log_level]
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_Bridge(sink))
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("jsonrpcserver").setLevel(logging.CRITICAL)   # it logs what we already report
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _to_sink,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: _SinkLogger(sink),
        cache_logger_on_first_use=True,
    )


def state() -> Optional[Dict[str, Any]]:
    """status.logging (None before setup)."""
    return _sink.state() if _sink is not None else None


def dropped_lines() -> int:
    """Lines that did not reach the log file (the metric oracd_log_lines_dropped_total)."""
    return _sink.dropped if _sink is not None else 0


def get(name: str) -> Any:
    """A structlog logger; events carry ``logger=<name>``."""
    return _Named(name)


class _Named:
    """Lazily bound logger: modules import loggers before setup() configures structlog."""

    __slots__ = ("_name", "_bound")

    def __init__(self, name: str):
        self._name = name
        self._bound: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._bound is None:
            self._bound = structlog.get_logger().bind(logger=self._name)
        return getattr(self._bound, attr)
