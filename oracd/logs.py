"""Logging: structlog events to ``<log_dir>/orac.log`` (JSON lines, rotated by size) and stderr.

Rotation keeps exactly ``orac.log``, ``orac.log.1`` ... ``orac.log.<log_backups>``
(default 2); journald gets the same events on stderr as key=value lines.
llama-server's own output arrives here too, tagged ``source=llama-server``, and
stdlib ``logging`` records from libraries are bridged in.

Why structlog's own pipeline ends in our ``LogSink`` instead of going through
stdlib handlers and ``ProcessorFormatter``: one line per request is written on
the hot path, and the stdlib route (two formatters, a stat and a seek per
record for rollover) was half the cost of a ``status`` call.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional, TextIO

import structlog

from .config import Config

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), default=str).encode


class LogSink:
    """Writes rendered events: JSON to a size-rotated file, key=value to stderr."""

    def __init__(self, path: Path, max_bytes: int, backups: int, stderr: Optional[TextIO]):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stderr = stderr
        self.lock = threading.Lock()     # llama-server pumps and to_thread workers may log too
        self.fh = open(path, "a", encoding="utf-8", errors="backslashreplace")   # lone surrogates from requests
        self.size = self.fh.tell()

    def _rotate(self) -> None:
        self.fh.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.fh = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
        self.size = 0

    def write(self, event: dict) -> None:
        line = _dumps(event) + "\n"
        n = len(line.encode("utf-8", "replace")) if not line.isascii() else len(line)
        with self.lock:
            if self.size and self.size + n > self.max_bytes:
                self._rotate()
            self.fh.write(line)
            self.fh.flush()
            self.size += n
            if self.stderr is not None:
                self.stderr.write(_key_value(event))
                self.stderr.flush()

    def close(self) -> None:
        with self.lock:
            self.fh.close()


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
    cfg.server.log_dir.mkdir(parents=True, exist_ok=True)
    if _sink is not None:
        _sink.close()
    _sink = sink = LogSink(cfg.log_file, cfg.server.log_max_bytes, cfg.server.log_backups,
                           sys.stderr if cfg.server.log_stderr else None)
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
