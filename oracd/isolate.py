"""Containment for tasks that must not take the daemon down: a bug or an OS error stays in its task.

Why: anyio task groups cancel every sibling when one task raises, so an exception
in one connection, or in a supervisor helper (reaping a child, closing its HTTP
client), would otherwise end oracd.  Only ``Exception`` is contained and logged
with an incident id; cancellation (a ``BaseException``) always passes through.
"""
from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable

from .logs import get as get_logger

log = get_logger("oracd.isolate")


def incident_id() -> str:
    """The id a client (or an operator reading the log) can quote."""
    return uuid.uuid4().hex[:12]


async def contained(what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)``; an exception is logged (``<what> failed``, incident id) and goes no further."""
    try:
        await fn(*args)
    except Exception:
        log.exception(f"{what} failed", incident=incident_id())
