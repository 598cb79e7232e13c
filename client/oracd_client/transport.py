"""JSON-RPC 2.0 to oracd over its Unix socket: one pipelined connection per client per event loop.

Wire format: one JSON object per line in each direction.  Requests are written
as soon as they are made; a reader task per connection hands each response to
the waiting call by ``id``, so concurrent calls share one connection and may be
answered out of order.

Why a connection per *event loop*: asyncio streams belong to the loop that made
them, and old ORAC code runs ``asyncio.run()`` more than once (or in threads).
The map is keyed by the running loop; a loop's connection is closed when that
loop cancels its tasks at shutdown (``asyncio.run`` does), when the client is
garbage-collected, or by ``aclose()``.

Reconnects: before a request is written the connection is checked with a
non-blocking ``MSG_PEEK``; a socket whose peer hung up (oracd restarted) is
replaced, so the request goes to the new daemon and nothing is lost.  If the
connection breaks *after* a request was written, the call fails with
``ConnectionLost``; ``call(..., idempotent=True)`` then retries once on a new
connection.  A failed connect is retried once after ``RECONNECT_DELAY`` for
every method (nothing was sent yet).

Notifications about a request in flight (``generate.chunk``, ``quantize.progress``,
``load.progress``: JSON-RPC notifications whose ``params.id`` is the request's id)
go to the ``on_notify(method, params)`` callback given to that call; without one
they are dropped.  The lookup happens only for id-less messages, so plain
responses never pay for it.

Framing: answers are read with asyncio's ``StreamReader.readline`` (limit
``LINE_LIMIT``) rather than ``oracd_protocol.framing.NewlineFramer``.  The reader
already buffers in a ``bytearray`` and resumes its newline search where it
stopped, so the framer would save nothing here, and switching would mean
replacing the streams (reconnect checks, ``drain``, ``GenerateStream``'s
hang-up) with a hand-written ``asyncio.Protocol``.  An answer line over the limit
ends the connection (its calls fail with ``ConnectionLost``).
Requests are written with the protocol's ``encode``; errors are rebuilt with
its ``from_wire``.
"""
from __future__ import annotations

import asyncio
import json
import socket
import weakref
from typing import Any, Callable, Dict, Optional

from oracd_protocol.errors import CallTimeout, ConnectionLost, OracdUnavailable, RequestTooLarge, from_wire
from oracd_protocol.framing import CLIENT_MAX_LINE, encode
from oracd_protocol.names import CONNECT_TIMEOUT_S, default_socket_path, start_hint

#: ``on_notify(method, params)``: called from the connection's reader for each notification about a call.
NotifyCallback = Callable[[str, Dict[str, Any]], None]

#: Longest response line accepted (asyncio's StreamReader frames the lines; see the module docstring).
LINE_LIMIT = CLIENT_MAX_LINE
#: Request lines longer than this are remembered, to pin an id-less RequestTooLarge on the right call.
_BIG_LINE = 64 * 1024
_HIGH_WATER = 256 * 1024
CONNECT_TIMEOUT = CONNECT_TIMEOUT_S
RECONNECT_DELAY = 0.2
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_loads = json.loads


def _expire(fut: "asyncio.Future[Any]", method: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(CallTimeout(f"oracd did not answer {method} within {timeout:g} seconds"))


class Connection:
    """One stream connection to oracd and the reader task that dispatches its responses."""

    def __init__(self, sock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 path: str, loop: asyncio.AbstractEventLoop):
        self.sock = sock
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.path = path
        self.loop = loop
        self.pending: Dict[int, "asyncio.Future[Any]"] = {}
        self.big: Dict[int, int] = {}
        self.listeners: Dict[int, NotifyCallback] = {}   # request id -> on_notify, for calls that asked
        self.closed = False          # reader finished or close() called: no new writes, pending failed
        self.dead = False            # peer hung up (seen by peek): no new writes; reader drains what is left
        self.close_reason: Optional[BaseException] = None
        self._last_id = 0
        self.reader_task = loop.create_task(self._read_loop())

    @classmethod
    async def open(cls, path: str, timeout: float = CONNECT_TIMEOUT) -> "Connection":
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, path), timeout)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, (OSError, asyncio.TimeoutError)):
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                    str(exc) or type(exc).__name__)
                raise OracdUnavailable(f"cannot connect to oracd at {path}: {reason}. {start_hint(path)}",
                                       path, getattr(exc, "errno", None)) from None
            raise
        return cls(sock, reader, writer, path, loop)

    # ------------------------------------------------------------------ writing
    def usable(self) -> bool:
        """True if a new request may be written (the peer has not hung up, as far as we can tell)."""
        if self.closed or self.dead:
            return False
        try:
            data = self.sock.recv(1, _PEEK)
        except BlockingIOError:
            return True
        except OSError:
            self.dead = True
            return False
        if data:
            return True        # an answer is waiting to be read: the peer is alive
        self.dead = True       # EOF queued: oracd closed (restart); let the reader drain, use a new connection
        return False

    async def call(self, method: str, params: Any, timeout: Optional[float] = None,
                   on_notify: Optional[NotifyCallback] = None) -> Any:
        """Send one request and wait for its answer; ``on_notify(method, params)`` (optional) gets the
        notifications oracd sends about this request (``params.id`` == its id) until the answer."""
        self._last_id = rid = self._last_id + 1
        line = encode({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
        fut = self.loop.create_future()
        self.pending[rid] = fut
        if on_notify is not None:
            self.listeners[rid] = on_notify
        if len(line) > _BIG_LINE:
            self.big[rid] = len(line)
        self.transport.write(line)
        timer = self.loop.call_later(timeout, _expire, fut, method, timeout) if timeout else None
        try:
            if self.transport.get_write_buffer_size() > _HIGH_WATER:
                try:
                    await self.writer.drain()
                except OSError:
                    pass        # connection lost: the reader fails this call with ConnectionLost
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self.pending.pop(rid, None)
            if self.big:
                self.big.pop(rid, None)
            if on_notify is not None:
                self.listeners.pop(rid, None)

    # ------------------------------------------------------------------ reading
    async def _read_loop(self) -> None:
        readline = self.reader.readline
        exc: Optional[BaseException] = None
        try:
            while True:
                line = await readline()
                if not line:
                    break
                try:
                    msg = _loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self._deliver(msg)
                elif isinstance(msg, list):
                    for m in msg:
                        if isinstance(m, dict):
                            self._deliver(m)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # reset, line over LINE_LIMIT...
            exc = e
        finally:
            self._shutdown(exc)

    def _deliver(self, msg: Dict[str, Any]) -> None:
        rid = msg.get("id")
        fut = self.pending.pop(rid, None) if rid is not None else None
        if fut is None:
            if rid is None:
                if "error" in msg:
                    self._orphan_error(msg["error"])
                elif self.listeners:
                    self._notification(msg)
            return                # a late answer to a call that timed out or was cancelled
        if fut.done():
            return
        if "error" in msg:
            fut.set_exception(from_wire(msg["error"]))
        else:
            fut.set_result(msg.get("result"))

    def _notification(self, msg: Dict[str, Any]) -> None:
        """A notification about a request in flight: hand it to that call's ``on_notify``."""
        params = msg.get("params")
        method = msg.get("method")
        if not isinstance(params, dict) or not isinstance(method, str):
            return
        rid = params.get("id")
        cb = self.listeners.get(rid) if isinstance(rid, int) else None
        if cb is None:
            return
        try:
            cb(method, params)
        except Exception:     # a faulty callback must not kill the reader (and every pending call)
            pass

    def _orphan_error(self, err: Any) -> None:
        """An error without an id: a line oracd could not take (too large) or a refused connection."""
        code = err.get("code") if isinstance(err, dict) else None
        if code == RequestTooLarge.code and self.big:
            rid = max(self.big, key=self.big.__getitem__)
            del self.big[rid]
            fut = self.pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(from_wire(err))
            return
        if not self.pending:
            self.close_reason = from_wire(err)   # e.g. Busy: oracd is about to close this connection
            return
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(from_wire(err))
        self.pending.clear()

    # ------------------------------------------------------------------ closing
    def _shutdown(self, exc: Optional[BaseException]) -> None:
        if not self.closed:
            self.closed = True
            if self.pending:
                reason = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by oracd"
                for fut in self.pending.values():
                    if not fut.done():
                        fut.set_exception(self.close_reason if self.close_reason is not None else ConnectionLost(
                            f"connection to oracd at {self.path} lost with the request in flight ({reason})",
                            self.path))
                self.pending.clear()
        if not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        """Close now (any loop thread-safety is the caller's business: use call_soon_threadsafe)."""
        self._shutdown(None)
        if not self.reader_task.done():
            self.reader_task.cancel()

    async def aclose(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.reader_task), 5)
        except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
            pass
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
            pass


class _LoopState:
    __slots__ = ("conn", "lock")

    def __init__(self) -> None:
        self.conn: Optional[Connection] = None
        self.lock = asyncio.Lock()


def _close_all(loops: Dict[Any, _LoopState]) -> None:
    """Finalizer: close every connection a garbage-collected client left open."""
    for loop, st in list(loops.items()):
        conn, st.conn = st.conn, None
        if conn is None or conn.closed:
            continue
        try:
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(conn.close)
        except RuntimeError:
            pass
    loops.clear()


class OracdClient:
    """Low-level async JSON-RPC client for oracd: ``await client.call(method, params)``.

    Opens nothing until the first call.  Safe to share between tasks (calls
    pipeline over one connection) and to use from several event loops (one
    connection each).  Errors oracd returns are raised as the classes of
    ``oracd_protocol.errors`` (``from_wire``); no daemon -> ``OracdUnavailable``
    (a ``ConnectionError`` naming the socket).
    """

    def __init__(self, socket_path: Optional[str] = None, connect_timeout: float = CONNECT_TIMEOUT):
        self.socket_path = str(socket_path) if socket_path else default_socket_path()
        self.connect_timeout = connect_timeout
        self._loops: Dict[Any, _LoopState] = {}
        fin = weakref.finalize(self, _close_all, self._loops)
        fin.atexit = False

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None, *,
                   timeout: Optional[float] = None, idempotent: bool = False,
                   on_notify: Optional[NotifyCallback] = None) -> Any:
        """Call ``method`` with named ``params``; ``idempotent`` calls are retried once if the
        connection breaks with the request in flight (others raise ``ConnectionLost``).
        ``on_notify(method, params)`` receives oracd's notifications about this call (progress,
        ``generate.chunk`` with ``stream: true``).  Cancelling a call does not stop it in oracd
        (the shared connection stays open); use ``open_connection()`` and close it for that."""
        st = self._loops.get(asyncio.get_running_loop())
        conn = st.conn if st is not None else None
        if conn is None or not conn.usable():
            conn = await self._connect()
        if params is None:
            params = {}
        if not idempotent:
            return await conn.call(method, params, timeout, on_notify)
        try:
            return await conn.call(method, params, timeout, on_notify)
        except ConnectionLost:
            conn = await self._connect()
            return await conn.call(method, params, timeout, on_notify)

    async def open_connection(self) -> Connection:
        """A new connection of its own (not shared, not cached), for a call that must be abortable:
        oracd aborts a connection's requests when its client hangs up, so closing it stops the work
        upstream and frees the llama-server slot.  The caller closes it (``await conn.aclose()``)."""
        try:
            return await Connection.open(self.socket_path, self.connect_timeout)
        except OracdUnavailable:
            await asyncio.sleep(RECONNECT_DELAY)      # oracd may be restarting: the socket comes back
            return await Connection.open(self.socket_path, self.connect_timeout)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        st = self._loops.get(loop)
        if st is None:
            for other in [lp for lp in list(self._loops) if lp.is_closed()]:
                self._loops.pop(other, None)     # list() first: other threads may use this client too
            st = self._loops[loop] = _LoopState()
        async with st.lock:
            conn = st.conn
            if conn is not None and conn.usable():
                return conn
            try:
                conn = await Connection.open(self.socket_path, self.connect_timeout)
            except OracdUnavailable:
                await asyncio.sleep(RECONNECT_DELAY)   # oracd may be restarting: the socket comes back
                conn = await Connection.open(self.socket_path, self.connect_timeout)
            st.conn = conn
            return conn

    def connection(self) -> Optional[Connection]:
        """The running loop's connection, if one is open (introspection and tests)."""
        try:
            st = self._loops.get(asyncio.get_running_loop())
        except RuntimeError:
            return None
        return st.conn if st is not None and st.conn is not None and not st.conn.closed else None

    async def aclose(self) -> None:
        """Close this client's connections (the client stays usable: the next call reconnects)."""
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for lp, st in list(self._loops.items()):
            conn, st.conn = st.conn, None
            if conn is None:
                continue
            if lp is loop:
                await conn.aclose()
            elif not lp.is_closed():
                try:
                    lp.call_soon_threadsafe(conn.close)
                except RuntimeError:
                    pass

    async def __aenter__(self) -> "OracdClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def status(self) -> Dict[str, Any]:
        return await self.call("status", timeout=30, idempotent=True)
