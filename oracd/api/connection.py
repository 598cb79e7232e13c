"""One client connection: newline-framed JSON-RPC in, answers and notifications out, pipelined.

A ``Connection`` reads request lines and runs each as its own task (answers go
back by id, in any order), bounded by ``max_pending_per_connection``
(backpressure: a client that floods us is simply not read); each item of a batch
takes a slot of its own (``_LineSlots``).  Answers are
written whole, one at a time, straight to the socket when they fit.  A client
that stops reading for ``send_timeout`` is dropped, and its requests are
aborted upstream.  A half-closed client (a shell pipe) still gets its answers;
one that hung up gets its generations aborted.  Only a request (a non-blank line)
keeps an idle connection open.  ``Connections`` admits connections (limits in all and
per uid, access) and counts them for status and shutdown.
"""
from __future__ import annotations

import math
import select
import socket
import time
import uuid
from typing import Any, Dict, Optional

import anyio
import anyio.abc
from oracd_protocol.framing import TOO_LONG, NewlineFramer, encode

from ..config import ConfigHolder
from oracd_protocol.errors import AccessDenied, Busy, InternalError, RequestTooLarge, ShuttingDown
from ..logs import get as get_logger
from .jsonrpc import CallContext, Dispatcher, Peer, error_obj
from .listener import allowed, peer_of
from ..isolate import incident_id

log = get_logger("oracd.connection")


class Connections:
    """Admits connections (limit, access) and counts them and their request tasks."""

    def __init__(self, holder: ConfigHolder, dispatcher: Dispatcher):
        self.holder = holder
        self.dispatcher = dispatcher
        self.open = 0           # connections being served
        self.per_uid: Dict[Optional[int], int] = {}   # ... by peer uid (server.max_connections_per_uid)
        self.tasks = 0          # request tasks in flight (all connections)
        self.abandoning = False  # set at shutdown before in-flight requests are cancelled: they get -32009
        self.idle = anyio.Event()
        self.idle.set()

    def task_started(self) -> None:
        self.tasks += 1
        if self.tasks == 1:
            self.idle = anyio.Event()

    def task_done(self) -> None:
        self.tasks -= 1
        if self.tasks == 0:
            self.idle.set()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        raw: Optional[socket.socket] = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        peer = peer_of(raw)
        cfg = self.holder.cfg
        async with stream:
            if self.open >= cfg.server.max_connections:
                log.warning("connection refused: limit reached", peer_pid=peer.pid, peer_uid=peer.uid,
                            limit=cfg.server.max_connections)
                await _refuse(stream, Busy(f"too many connections (limit {cfg.server.max_connections})"))
                return
            if not allowed(cfg, peer):
                log.warning("connection refused: peer not allowed" if peer.known else
                            "connection refused: unknown peer (its credentials cannot be read)",
                            peer_pid=peer.pid, peer_uid=peer.uid, peer_gid=peer.gid)
                await _refuse(stream, AccessDenied(
                    f"uid {peer.uid} / gid {peer.gid} may not use oracd (server.allowed_uids/allowed_gids)"))
                return
            per_uid = cfg.server.max_connections_per_uid
            if self.per_uid.get(peer.uid, 0) >= per_uid:
                log.warning("connection refused: per-uid limit reached", peer_pid=peer.pid, peer_uid=peer.uid,
                            limit=per_uid)
                await _refuse(stream, Busy(f"too many connections from uid {peer.uid} "
                                           f"(server.max_connections_per_uid = {per_uid})",
                                           {"reason": "uid_connection_limit", "limit": per_uid}))
                return
            self.open += 1
            self.per_uid[peer.uid] = self.per_uid.get(peer.uid, 0) + 1
            try:
                log.info("connection open", peer_pid=peer.pid, peer_uid=peer.uid, peer_gid=peer.gid)
                await Connection(self, stream, raw, peer).serve()
            except Exception:      # never let one connection cancel every other one: it ends, with an answer
                incident = incident_id()
                log.exception("connection failed", peer_pid=peer.pid, incident=incident)
                await _refuse(stream, InternalError(data={"incident": incident}))
            finally:
                self.open -= 1
                left = self.per_uid.pop(peer.uid) - 1
                if left:
                    self.per_uid[peer.uid] = left
                log.info("connection closed", peer_pid=peer.pid)


async def _refuse(stream: anyio.abc.SocketStream, err: Any) -> None:
    with anyio.move_on_after(1):
        try:
            await stream.send(encode(error_obj(err.code, err.message, err.data)))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


class Connection:
    """One client: a read loop that starts a task per request line, and one writer at a time."""

    def __init__(self, owner: Connections, stream: anyio.abc.SocketStream, raw: Optional[socket.socket],
                 peer: Peer):
        cfg = owner.holder.cfg.server
        self.owner = owner
        self.stream = stream
        self.raw = raw
        self.peer = peer
        self.max_line = cfg.max_line_bytes
        self.max_pending = cfg.max_pending_per_connection
        self.idle_timeout = cfg.idle_timeout
        self.send_timeout = cfg.send_timeout
        self.broken = False                       # the client stopped reading or went away
        self.pending = 0                          # slots in use: request lines, or batch items, in flight
        self.lines = 0                            # request line tasks in flight
        self.all_done = anyio.Event()
        self.all_done.set()
        self.room = anyio.Event()                 # set when a slot is given back (waiters recheck)
        self.room.set()
        self._send_lock = anyio.Lock(fast_acquire=True)   # no event-loop trip when it is free
        self._tg: Optional[anyio.abc.TaskGroup] = None
        self._too_long = encode(error_obj(RequestTooLarge.code, RequestTooLarge.default_message,
                                                     f"request line longer than {self.max_line} bytes"))

    async def serve(self) -> None:
        framer = NewlineFramer(self.max_line)       # the protocol's framing: limits and resync in one place
        async with anyio.create_task_group() as tg:
            self._tg = tg
            deadline = math.inf
            while True:
                if self.lines == 0 and deadline == math.inf:
                    # idle: nothing in flight and no request for idle_timeout -> close
                    deadline = time.monotonic() + self.idle_timeout
                try:
                    with anyio.fail_after(max(0.0, deadline - time.monotonic()) if deadline != math.inf else math.inf):
                        chunk = await self.stream.receive(65536)
                except TimeoutError:
                    log.info("closing idle connection", peer_pid=self.peer.pid, idle_timeout_s=self.idle_timeout)
                    break
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    break
                for line in framer.feed(chunk):
                    if line is TOO_LONG or line.strip():    # a request; blank lines keep nothing alive
                        deadline = math.inf
                    await self._take(line)
            await self._finish_after_eof()
        self.owner.dispatcher.flush_log(self.peer)

    async def _take(self, line: Any) -> None:
        """Answer an over-long line at once; start a request task for any other non-blank one."""
        if line is TOO_LONG:
            await self.send(self._too_long)
            return
        if not line.strip():
            return
        await self.take_slot()                       # backpressure: a client that floods us waits
        self.lines += 1
        if self.lines == 1:
            self.all_done = anyio.Event()
        self.owner.task_started()
        assert self._tg is not None
        self._tg.start_soon(self._process, line)

    async def take_slot(self) -> None:
        """Wait for one of max_pending_per_connection slots (a request line, or one batch item)."""
        while self.pending >= self.max_pending:
            if self.room.is_set():                   # one event shared by every waiter: the reader, batches
                self.room = anyio.Event()
            await self.room.wait()
        self.pending += 1

    def give_slot(self) -> None:
        self.pending -= 1
        self.room.set()

    async def _finish_after_eof(self) -> None:
        """EOF from the client: a half-close (socat, shell pipes) still wants its answers, a full
        close does not.  Finish what is in flight unless the peer hung up."""
        while self.lines and not self.broken:
            with anyio.move_on_after(0.1):
                await self.all_done.wait()
            if self.lines and self.raw is not None and _hung_up(self.raw):
                log.info("client hung up with requests in flight; aborting them", peer_pid=self.peer.pid,
                         pending=self.lines)
                self._abort()
                return

    async def _process(self, line: bytes) -> None:
        slots = _LineSlots(self)
        try:
            try:
                out = await self.owner.dispatcher.handle_line(line, CallContext(self.peer, self.notify, slots=slots))
            except anyio.get_cancelled_exc_class():
                if self.owner.abandoning:       # oracd stops past shutdown_grace: still one answer each
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                        refusal = self.owner.dispatcher.refuse_line(line, ShuttingDown(
                            "oracd is shutting down: the request was abandoned after shutdown_grace"))
                        if refusal is not None:
                            await self.send(refusal)
                raise
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("request failed", peer_pid=self.peer.pid, incident=incident)
                out = encode(error_obj(-32603, "Internal error", {"incident": incident}))
            if out is not None:
                await self.send(out)
        finally:
            slots.give_back_line()
            self.lines -= 1
            self.owner.task_done()
            if self.lines == 0:
                self.all_done.set()

    def _abort(self) -> None:
        """The client is gone: cancel its requests (which aborts their generations upstream)."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def send(self, data: bytes) -> None:
        """One whole answer at a time, dropping a client that stops reading.

        Fast path: the answer usually fits the socket buffer, so it is written straight
        to the (non-blocking) socket, skipping a trip round the event loop and a timer;
        only what does not fit waits, under send_timeout.
        """
        if self.broken:
            return
        await self._send_lock.acquire()
        try:
            if self.raw is not None:
                try:
                    data = data[self.raw.send(data):]
                except BlockingIOError:
                    pass
            if data:
                with anyio.fail_after(self.send_timeout):
                    await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            self.broken = True
            self._abort()
        finally:
            self._send_lock.release()

    async def notify(self, method: str, params: Any) -> None:
        await self.send(encode({"jsonrpc": "2.0", "method": method, "params": params}))


class _LineSlots:
    """The pending slots of one request line.  A single request keeps the slot its line took; a batch
    gives that back and takes one per item it runs, so a batch counts against max_pending_per_connection
    like that many lines, and a batch waiting for room holds no slot (two batches never wait on each other)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.line_held = True

    def give_back_line(self) -> None:
        if self.line_held:
            self.line_held = False
            self.conn.give_slot()

    async def acquire(self) -> None:
        await self.conn.take_slot()

    def release(self) -> None:
        self.conn.give_slot()


def _hung_up(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))
