"""``serve()``: startup, main loop, staged shutdown -- and the Unix-socket connections.

Startup: take the socket lock, bind (never stealing a live oracd's socket),
start the supervisor, preload, READY.  Main loop: accept connections, ping the
watchdog, keep STATUS current, wait for SIGTERM/SIGINT.  Shutdown: STOPPING,
stop accepting, let in-flight requests finish within ``shutdown_grace``, stop
the child, remove the socket file (``finally``).  Exit code 0 on a clean stop,
1 if startup failed.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import signal
import socket
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Tuple

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .config import Config
from .errors import AccessDenied, Busy, RequestTooLarge
from .logs import get as get_logger
from .methods import App
from .notify import Notifier
from .rpc import CallContext, Dispatcher, Peer, error_obj
from .supervisor import ChildState

log = get_logger("oracd.server")


class StartupError(RuntimeError):
    """oracd cannot start (socket taken, bad permissions...); the message says why."""


# ---------------------------------------------------------------------- the listening socket
def _take_lock(cfg: Config) -> int:
    """Hold an flock next to the socket for our lifetime: two oracd never share a socket."""
    lock_path = cfg.server.socket.with_name(cfg.server.socket.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.read(fd, 32).decode().strip()
        finally:
            os.close(fd)
        raise StartupError(f"another oracd (pid {other or '?'}) is running on {cfg.server.socket}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)


def inherited_socket() -> Optional[socket.socket]:
    """The listening socket passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if n < 1:
        return None
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)
    return sock


def socket_gid(cfg: Config) -> Optional[int]:
    """The gid for server.socket_group ("" = oracd's own group: None), or a StartupError saying how to fix it."""
    name = cfg.server.socket_group
    if not name:
        return None
    import grp
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(
            f"server.socket_group: there is no group {name} on this machine, so the socket cannot be shared "
            f"with it. Either create it and add the users who may talk to oracd "
            f"(sudo groupadd --system {name}; sudo usermod -aG {name} $USER; scripts/install does both), "
            f"or set socket_group = \"\" in [server] of {cfg.path or 'the config'} to keep the group oracd runs as"
        ) from None


def bind_socket(cfg: Config) -> socket.socket:
    """Create the listening socket with socket_mode (and socket_group), atomically in place."""
    path = cfg.server.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_alive(path):
            raise StartupError(f"another process is already serving {path}")
        log.warning("removing stale socket", path=str(path))
        path.unlink()
    gid = socket_gid(cfg)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, cfg.server.socket_mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(1024)
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock


def _peer(sock: Optional[socket.socket]) -> Peer:
    if sock is None:
        return Peer()
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return Peer(pid, uid, gid)
    except OSError:
        return Peer()


# ---------------------------------------------------------------------- connections
class Connections:
    """Serves JSON-RPC lines on accepted connections."""

    def __init__(self, cfg: Config, app: App, dispatcher: Dispatcher):
        self.cfg = cfg
        self.app = app
        self.dispatcher = dispatcher
        self.tasks = 0          # request tasks in flight (all connections)
        self.idle = anyio.Event()
        self.idle.set()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        raw: Optional[socket.socket] = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        peer = _peer(raw)
        app = self.app
        async with stream:
            if app.connections >= self.cfg.server.max_connections:
                log.warning("connection refused: limit reached", peer_pid=peer.pid, peer_uid=peer.uid,
                            limit=self.cfg.server.max_connections)
                await self._send_raw(stream, Busy(f"too many connections (limit {self.cfg.server.max_connections})"))
                return
            if not _allowed(self.cfg, peer):
                log.warning("connection refused: peer not allowed", peer_pid=peer.pid, peer_uid=peer.uid,
                            peer_gid=peer.gid)
                await self._send_raw(stream, AccessDenied(
                    f"uid {peer.uid} / gid {peer.gid} may not use oracd (server.allowed_uids/allowed_gids)"))
                return
            app.connections += 1
            log.info("connection open", peer_pid=peer.pid, peer_uid=peer.uid, peer_gid=peer.gid)
            try:
                await self._serve(stream, raw, peer)
            except Exception:      # never let one connection cancel every other one (conn_tg)
                log.exception("connection failed", peer_pid=peer.pid)
            finally:
                app.connections -= 1
                log.info("connection closed", peer_pid=peer.pid)

    async def _send_raw(self, stream: anyio.abc.SocketStream, err: Any) -> None:
        with anyio.move_on_after(1):
            try:
                await stream.send(Dispatcher._encode(error_obj(err.code, err.message, err.data)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def _serve(self, stream: anyio.abc.SocketStream, raw: Optional[socket.socket], peer: Peer) -> None:
        max_line = self.cfg.server.max_line_bytes
        buffered = BufferedByteReceiveStream(stream)
        send_lock = anyio.Lock(fast_acquire=True)   # no event-loop trip when it is free
        ctx = CallContext(peer=peer)
        broken = False
        pending = 0
        all_done = anyio.Event()
        all_done.set()
        room = anyio.Event()          # set when pending drops below max_pending again
        room.set()
        max_pending = self.cfg.server.max_pending_per_connection
        idle_timeout = self.cfg.server.idle_timeout
        send_timeout = self.cfg.server.send_timeout
        too_long = Dispatcher._encode(error_obj(RequestTooLarge.code, RequestTooLarge.default_message,
                                                f"request line longer than {max_line} bytes"))

        async def send(data: bytes) -> None:
            """One whole answer at a time (send_lock), dropping a client that stops reading.

            Fast path: the answer usually fits the socket buffer, so it is written straight
            to the (non-blocking) socket, skipping a trip round the event loop and a timer;
            only what does not fit waits, under send_timeout.
            """
            nonlocal broken
            if broken:
                return
            await send_lock.acquire()
            try:
                if raw is not None:
                    try:
                        data = data[raw.send(data):]
                    except BlockingIOError:
                        pass
                if data:
                    with anyio.fail_after(send_timeout):
                        await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
                broken = True
                tg.cancel_scope.cancel()   # the client is gone: abort its requests upstream
            finally:
                send_lock.release()

        async def notify(method: str, params: Any) -> None:
            await send(Dispatcher._encode({"jsonrpc": "2.0", "method": method, "params": params}))

        ctx.notify = notify

        async def process(line: bytes) -> None:
            nonlocal pending
            try:
                try:
                    out = await self.dispatcher.handle_line(line, ctx)
                except Exception:
                    incident = uuid.uuid4().hex[:12]
                    log.exception("request failed", peer_pid=peer.pid, incident=incident)
                    out = Dispatcher._encode(error_obj(-32603, "Internal error", {"incident": incident}))
                if out is not None:
                    await send(out)
            finally:
                pending -= 1
                self.tasks -= 1
                room.set()
                if pending == 0:
                    all_done.set()
                if self.tasks == 0:
                    self.idle.set()

        async with anyio.create_task_group() as tg:
            while True:
                if pending >= max_pending:      # backpressure: a client that floods us waits
                    room = anyio.Event()
                    await room.wait()
                try:
                    # idle: nothing in flight and no complete line for idle_timeout -> close
                    with anyio.fail_after(idle_timeout if pending == 0 else math.inf):
                        line = await buffered.receive_until(b"\n", max_line + 1)   # exactly max_line is allowed
                except TimeoutError:
                    log.info("closing idle connection", peer_pid=peer.pid, idle_timeout_s=idle_timeout)
                    break
                except anyio.DelimiterNotFound:
                    await send(too_long)
                    if not await self._skip_to_newline(buffered, max_line):
                        break
                    continue
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, OSError):
                    break
                if len(line) > max_line:   # the delimiter arrived in the chunk that crossed the limit
                    await send(too_long)
                    continue
                if not line.strip():
                    continue
                pending += 1
                self.tasks += 1
                all_done = anyio.Event() if pending == 1 else all_done
                self.idle = anyio.Event() if self.tasks == 1 else self.idle
                tg.start_soon(process, line)
            # EOF from the client: a half-close (socat, shell pipes) still wants its answers,
            # a full close does not.  Finish what is in flight unless the peer hung up.
            while pending and not broken:
                with anyio.move_on_after(0.1):
                    await all_done.wait()
                if pending and raw is not None and _hung_up(raw):
                    log.info("client hung up with requests in flight; aborting them", peer_pid=peer.pid,
                             pending=pending)
                    tg.cancel_scope.cancel()
                    break

    @staticmethod
    async def _skip_to_newline(buffered: BufferedByteReceiveStream, max_line: int) -> bool:
        """Discard the rest of an oversized line; False if the connection ended first."""
        while True:
            idx = buffered.buffer.find(b"\n")
            try:
                if idx >= 0:
                    await buffered.receive(idx + 1)
                    return True
                if buffered.buffer:
                    await buffered.receive(len(buffered.buffer))
                chunk = await buffered.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return False
            idx = chunk.find(b"\n")
            if idx >= 0:
                buffered.feed_data(chunk[idx + 1:])
                return True


def _supplementary_gids(pid: Optional[int]) -> Tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def _allowed(cfg: Config, peer: Peer) -> bool:
    """allowed_uids/allowed_gids: empty lists mean the socket's permissions alone decide."""
    uids, gids = cfg.server.allowed_uids, cfg.server.allowed_gids
    if not uids and not gids:
        return True
    if peer.uid is not None and peer.uid in uids:
        return True
    if gids and peer.gid is not None:
        if peer.gid in gids or any(g in gids for g in _supplementary_gids(peer.pid)):
            return True
    return False


def _hung_up(sock: socket.socket) -> bool:
    import select
    p = select.poll()
    p.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))


# ---------------------------------------------------------------------- serve
def status_line(app: App) -> str:
    sup = app.supervisor
    st = sup.state
    if st == ChildState.READY:
        return f"ready: model {sup.model}, {app.requests_in_flight} requests in flight"
    if st in (ChildState.STARTING, ChildState.STOPPING):
        return f"{st.value}: model {sup.model or ''}".rstrip()
    if st == ChildState.BACKOFF:
        return f"backoff: llama-server restarting after {sup.consecutive_failures} failure(s)"
    if st == ChildState.FAILED:
        return f"idle: last load failed: {(sup.last_error or {}).get('message', '')}"[:200]
    return f"idle: no model loaded, {app.requests_in_flight} requests in flight"


async def serve(cfg: Config) -> int:
    """Run oracd until SIGTERM/SIGINT.  Returns the process exit code."""
    notifier = Notifier()
    app = App(cfg)
    lock_fd: Optional[int] = None
    sock: Optional[socket.socket] = None
    owns_socket_file = False
    t_start = time.monotonic()
    try:
        sock = inherited_socket()
        if sock is None:
            lock_fd = _take_lock(cfg)
            sock = bind_socket(cfg)
            owns_socket_file = True
        socket_ino = os.stat(cfg.server.socket).st_ino if owns_socket_file else None
    except (StartupError, OSError) as exc:
        log.error("startup failed", error=str(exc))
        if lock_fd is not None:
            os.close(lock_fd)
        return 1
    dispatcher = Dispatcher(app.methods())
    app.dispatcher_stats = dispatcher
    conns = Connections(cfg, app, dispatcher)
    exit_code = 0
    try:
        listener = await anyio.abc.SocketListener.from_socket(sock)
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                await tg.start(app.supervisor.run)
                await tg.start(app.extra_servers.run)
                if cfg.llama.preload and cfg.llama.default_model:
                    await _preload(app)
                async with anyio.create_task_group() as conn_tg:    # connections outlive the acceptor
                    accept_scope = anyio.CancelScope()

                    async def accept() -> None:
                        with accept_scope:
                            await listener.serve(conns.handle, task_group=conn_tg)

                    tg.start_soon(accept)
                    notifier.ready(status_line(app))
                    log.info("oracd ready", socket=str(cfg.server.socket), pid=os.getpid(),
                             startup_s=round(time.monotonic() - t_start, 3), model=app.supervisor.model,
                             event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
                    tg.start_soon(_heartbeat, app, notifier)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            tg.start_soon(_reload, app)
                            continue
                        log.info("signal received, shutting down", signal=signal.Signals(signum).name)
                        break
                    # ---- staged shutdown: stop accepting, finish in-flight requests, stop the child
                    notifier.stopping("stopping: finishing in-flight requests")
                    app.accepting = False
                    accept_scope.cancel()
                    await listener.aclose()
                    with anyio.move_on_after(cfg.server.shutdown_grace):
                        await conns.idle.wait()
                    if conns.tasks:
                        log.warning("shutdown grace over, abandoning requests", pending=conns.tasks)
                    conn_tg.cancel_scope.cancel()
                app.supervisor.shutdown()
                with anyio.move_on_after(cfg.llama.stop_grace + 15):
                    await app.supervisor.finished.wait()
                tg.cancel_scope.cancel()
    except Exception:
        log.exception("oracd crashed")
        exit_code = 1
    finally:
        if owns_socket_file:
            try:
                if os.stat(cfg.server.socket).st_ino == socket_ino:
                    cfg.server.socket.unlink()
            except FileNotFoundError:
                pass
        if lock_fd is not None:
            os.close(lock_fd)
        log.info("oracd stopped", exit_code=exit_code)
    return exit_code


async def _preload(app: App) -> None:
    """Load default_model before READY; if it cannot be loaded, try fallback_models in order."""
    cfg = app.cfg
    tried = []
    for name in (cfg.llama.default_model, *cfg.llama.fallback_models):
        try:
            path = app.store.resolve(name)
            app._check_loadable(path)
            with anyio.fail_after(cfg.llama.load_timeout + 5):
                await app.supervisor.load(path.name, path, time.monotonic() + cfg.llama.load_timeout)
        except Exception as exc:  # reported in status; the next candidate is tried
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            log.error("preload failed", model=name, error=reason)
            tried.append({"model": name, "error": reason})
            continue
        app.active_default = path.name
        if tried:
            app.fallback = {"serving": path.name, "failed": tried}
            log.warning("serving a fallback model", model=path.name, failed=[t["model"] for t in tried])
        else:
            log.info("default model preloaded", model=name)
        return
    app.fallback = {"serving": None, "failed": tried}


async def _reload(app: App) -> None:
    """SIGHUP: re-read profiles like the ``reload`` RPC (errors are logged, the old config stays)."""
    try:
        await app.reload(CallContext(peer=Peer()))
    except Exception as exc:
        log.error("reload on SIGHUP failed", error=getattr(exc, "message", str(exc)))


async def _heartbeat(app: App, notifier: Notifier) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC while the loop runs and the supervisor is alive; STATUS= updates."""
    interval = Notifier.watchdog_interval()
    period = min(interval, 1.0) if interval else 1.0
    last_ping = 0.0
    while True:
        notifier.status(status_line(app))
        now = time.monotonic()
        if interval and now - last_ping >= interval and app.supervisor.state != ChildState.SHUTDOWN:
            notifier.watchdog()
            last_ping = now
        await anyio.sleep(period)
