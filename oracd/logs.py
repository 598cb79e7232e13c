"""Logging: structlog events to ``<log_dir>/orac.log`` (JSON lines, rotated by size) and stderr.

Why stdlib's RotatingFileHandler: with ``backupCount=log_backups`` (default 2) it
keeps exactly ``orac.log``, ``orac.log.1`` and ``orac.log.2``; journald gets the
same events on stderr as key=value lines.  llama-server's own output arrives
here too, tagged ``source=llama-server``.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys

import structlog

from .config import Config

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(cfg: Config) -> None:
    """Route structlog through stdlib logging to the rotated file and (optionally) stderr."""
    cfg.server.log_dir.mkdir(parents=True, exist_ok=True)
    pre_chain = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    file_handler = logging.handlers.RotatingFileHandler(
        cfg.log_file, maxBytes=cfg.server.log_max_bytes, backupCount=cfg.server.log_backups,
        encoding="utf-8",
    )
    file_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        foreign_pre_chain=pre_chain,
    ))
    root.addHandler(file_handler)
    if cfg.server.log_stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        structlog.processors.KeyValueRenderer(
                            key_order=["level", "event"], drop_missing=True)],
            foreign_pre_chain=[structlog.stdlib.add_log_level],
        ))
        root.addHandler(err)
    root.setLevel(_LEVELS[cfg.server.log_level])
    # jsonrpcserver and aiohttp log through stdlib too; keep them quiet unless debugging
    logging.getLogger("jsonrpcserver").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
