"""``GenerateStream``: the text of one ``generate`` as oracd streams it (``generate.chunk`` notifications).

Why a connection of its own per stream: oracd aborts the requests of a
connection whose client hangs up (the upstream llama-server generation is
cancelled and its slot freed at once).  A stream that is left early -- ``break``
out of ``async for``, ``aclose()``, leaving ``async with``, the consumer task
cancelled, the object garbage-collected -- closes its connection, and that is
what stops the generation.  Cancelling a call on the shared, pipelined
connection would only stop *waiting* for it while llama-server kept generating.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable, Dict, Optional

from oracd_protocol.names import GENERATE_CHUNK

from .transport import Connection, OracdClient

_END = object()


def _retrieve(task: "asyncio.Task[Any]") -> None:
    """Done callback: mark the call's outcome as seen (no 'exception was never retrieved' noise)."""
    if not task.cancelled():
        task.exception()


def _hang_up(conn: Connection) -> None:
    """Tell oracd at once, even if the event loop does not run again soon (a transport only closes
    its socket on the loop's next iteration): shutdown() is immediate and safe from any thread."""
    try:
        conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _abort(conn: Optional[Connection], task: "Optional[asyncio.Task[Any]]") -> None:
    if conn is not None:
        _hang_up(conn)
    if task is not None and not task.done():
        task.cancel()
    if conn is not None:
        conn.close()


class GenerateStream:
    """``async for text in stream``: pieces of generated text as they arrive.

    Built by ``LlamaCppClient.generate_stream()``; nothing is sent until the first
    ``__anext__``.  When the iteration ends normally, ``result`` holds oracd's
    result dict (``response``, ``usage``, ``finish_reason``, ``elapsed_ms``...) and
    ``response`` the ``PromptResponse`` that ``generate()`` would have returned.
    Errors are raised from the iteration, mapped like ``generate()``'s.

    Leaving early aborts the generation in oracd: ``break`` out of an inline
    ``async for`` (the stream is dropped at once), ``await stream.aclose()``, or
    ``async with client.generate_stream(...) as stream:``.
    """

    def __init__(self, rpc: OracdClient, params: Dict[str, Any], call_timeout: Optional[float], *,
                 before: Optional[Callable[[], Awaitable[None]]] = None,
                 map_error: Optional[Callable[[BaseException], BaseException]] = None,
                 make_response: Optional[Callable[[Dict[str, Any], float], Any]] = None):
        self._rpc = rpc
        self._params = params
        self._call_timeout = call_timeout
        self._before = before
        self._map_error = map_error
        self._make_response = make_response
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: "Optional[asyncio.Queue[Any]]" = None
        self._conn: Optional[Connection] = None
        self._task: "Optional[asyncio.Task[Any]]" = None
        self._t0 = 0.0
        self._done = False
        self.result: Optional[Dict[str, Any]] = None
        self.response: Any = None

    # ------------------------------------------------------------------ iteration
    def __aiter__(self) -> "GenerateStream":
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        if self._task is None:
            await self._start()
        assert self._queue is not None
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:       # the consumer was cancelled: stop the generation too
            self._done = True
            conn, self._conn = self._conn, None
            _abort(conn, self._task)
            raise
        if item is not _END:
            return item
        await self._finish()
        raise StopAsyncIteration

    async def _start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Any]" = asyncio.Queue()
        self._queue = queue
        try:
            if self._before is not None:
                await self._before()
            self._conn = await self._rpc.open_connection()
        except BaseException:
            self._done = True
            raise

        def on_notify(method: str, params: Dict[str, Any]) -> None:
            if method == GENERATE_CHUNK:
                text = params.get("text")
                if isinstance(text, str) and text:
                    queue.put_nowait(text)

        self._t0 = loop.time()
        task = self._task = loop.create_task(
            self._conn.call("generate", self._params, self._call_timeout, on_notify))
        task.add_done_callback(_retrieve)
        # the reader delivers every chunk before it resolves the call, so _END always comes last
        task.add_done_callback(lambda _t: queue.put_nowait(_END))

    async def _finish(self) -> None:
        self._done = True
        conn, task = self._conn, self._task
        self._conn = None
        assert task is not None and self._loop is not None
        elapsed_ms = (self._loop.time() - self._t0) * 1000.0
        if conn is not None:
            await conn.aclose()
        if task.cancelled():
            raise asyncio.CancelledError()
        exc = task.exception()
        if exc is not None:
            raise (self._map_error(exc) if self._map_error is not None else exc) from None
        self.result = task.result()
        if self._make_response is not None:
            self.response = self._make_response(self.result, elapsed_ms)

    # ------------------------------------------------------------------ leaving early
    async def aclose(self) -> None:
        """Stop now: close the stream's connection, which makes oracd abort the generation."""
        self._done = True
        conn, task = self._conn, self._task
        self._conn = None
        _abort(conn, task)
        if conn is not None:
            await conn.aclose()

    async def __aenter__(self) -> "GenerateStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        conn, loop = self._conn, self._loop
        if conn is None or conn.closed or loop is None:
            return
        _hang_up(conn)           # dropped mid-stream (break out of an inline async for): stop oracd now
        try:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_abort, conn, self._task)
        except Exception:   # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "done" if self._done else ("running" if self._task is not None else "not started")
        return f"<GenerateStream {state} model={self._params.get('model')!r}>"
