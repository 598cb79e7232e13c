"""The accept loop: it never dies.  Out of file descriptors or kernel memory, it pauses and retries.

Why our own loop instead of anyio's ``listener.serve``: there, one ``accept()``
failing with EMFILE (fd exhaustion: a flood of clients on a low RLIMIT_NOFILE)
raises out of the acceptor task and ends oracd.  Here the transient errors
(``PAUSE_ERRNOS``) pause accepting for ``PAUSE_S`` (the kernel keeps new clients
in the listen backlog), are counted for ``status.accept`` and the
``oracd_accept_errors_total`` metric, and are logged at most once per
``LOG_EVERY_S``; open connections carry on.  An unexpected error is logged with an
incident id and retried after a longer pause.  Each connection runs contained:
its failure is its own.
"""
from __future__ import annotations

import errno
import time
from typing import Any, Awaitable, Callable, Dict, Optional

import anyio
import anyio.abc

from oracd_protocol.errors import InternalError
from oracd_protocol.framing import encode

from ..isolate import incident_id
from ..logs import get as get_logger
from .jsonrpc import error_obj

log = get_logger("oracd.acceptor")
PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED})
PAUSE_S = 0.1            # short: a freed descriptor is taken up quickly, yet no busy loop on a readable socket
UNEXPECTED_PAUSE_S = 1.0
LOG_EVERY_S = 10.0


def accept_errno(exc: BaseException) -> Optional[int]:
    """The errno behind an accept failure (anyio wraps the OSError in BrokenResourceError's __cause__)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        exc = exc.__cause__ or exc.__context__        # type: ignore[assignment]
        seen += 1
    return None


class Acceptor:
    """Accepts connections on ``listener`` and hands each to ``handler`` in ``task_group``."""

    def __init__(self, listener: Any, handler: Callable[[Any], Awaitable[None]],
                 task_group: anyio.abc.TaskGroup):
        self.listener = listener
        self.handler = handler
        self.tg = task_group
        self.errors: Dict[str, int] = {}        # accept failures by errno name
        self.last_error: Optional[str] = None
        self.last_error_at: Optional[float] = None
        self._logged_at = -LOG_EVERY_S

    def state(self) -> Dict[str, Any]:
        """status.accept."""
        return {"errors": dict(self.errors), "last_error": self.last_error, "last_error_at": self.last_error_at}

    async def run(self) -> None:
        """Until cancelled or the listener is closed (shutdown)."""
        while True:
            try:
                stream = await self.listener.accept()
            except anyio.ClosedResourceError:
                return
            except Exception as exc:
                await self._failed(exc)
                continue
            self.tg.start_soon(self._serve_one, stream)

    async def _serve_one(self, stream: Any) -> None:
        """The handler, contained: its failure ends this connection only, with an InternalError answer
        (incident id) when one can still be sent."""
        try:
            await self.handler(stream)
        except Exception:
            incident = incident_id()
            log.exception("connection failed", incident=incident)
            with anyio.move_on_after(1):
                try:
                    await stream.send(encode(error_obj(InternalError.code, InternalError.default_message,
                                                       {"incident": incident})))
                except Exception:
                    pass
            with anyio.move_on_after(1):
                try:
                    await stream.aclose()
                except Exception:
                    pass

    async def _failed(self, exc: Exception) -> None:
        code = accept_errno(exc)
        name = errno.errorcode.get(code, "OSError") if code is not None else type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        self.last_error, self.last_error_at = name, time.time()
        now = time.monotonic()
        if code in PAUSE_ERRNOS:
            if now - self._logged_at >= LOG_EVERY_S:
                self._logged_at = now
                log.warning("accept paused", error=name, pause_s=PAUSE_S, errors=dict(self.errors),
                            hint="out of file descriptors or kernel memory: see RLIMIT_NOFILE / LimitNOFILE"
                            if code in (errno.EMFILE, errno.ENFILE) else None)
            await anyio.sleep(PAUSE_S)
            return
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("accept failed", error=name, incident=incident_id(), exc_info=exc)
        await anyio.sleep(UNEXPECTED_PAUSE_S)
