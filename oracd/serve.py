"""``serve()``: startup, main loop, staged shutdown -- each a named step (uvicorn's server.py is the model).

Startup (``_startup``): take the socket lock, bind (never stealing a live
oracd's socket), start the supervisor and the extra-server owner, preload the
default model (or a fallback), READY=1.  Main loop (``_main_loop``): accept
connections (``api/acceptor.py``: pauses when descriptors run out, never dies), ping the watchdog and keep STATUS= current, reload on SIGHUP,
until SIGTERM/SIGINT.  Shutdown (``_shutdown``): STOPPING=1, stop accepting,
let in-flight requests finish within ``shutdown_grace``, stop the child.  The
socket file is removed in ``finally``.  Exit code 0 on a clean stop, 1 if
startup failed or oracd crashed.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import anyio
import anyio.abc

from .api.acceptor import Acceptor
from .api.connection import Connections
from .api.jsonrpc import Dispatcher
from .api.listener import StartupError, bind_socket, inherited_socket, take_lock
from .api.methods import NAMES, App
from .api.status import status_line
from .child.door import ChildDoor
from .child.extra_servers import ExtraServers
from .child.states import ChildState
from .child.supervisor import Supervisor
from .config import Config, ConfigHolder
from oracd_protocol.errors import LoadTimeout
from . import fdbudget
from .http.server import HttpFront, serve_http_api, stop_accepting as stop_http
from .logs import get as get_logger
from .metrics import Metrics, serve_http
from .models.store import ModelStore
from .notify import Notifier

log = get_logger("oracd.serve")


@dataclass
class Bound:
    """The listening socket and what we must clean up for it."""
    sock: socket.socket
    lock_fd: Optional[int] = None
    inode: Optional[int] = None            # the socket file we created (None: systemd's)
    accept_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


def _bind(cfg: Config) -> Bound:
    """Startup, step 1: the lock and the socket (or the one systemd passed)."""
    sock = inherited_socket()
    if sock is not None:
        return Bound(sock)
    lock_fd = take_lock(cfg)
    try:
        sock = bind_socket(cfg)
    except BaseException:
        os.close(lock_fd)
        raise
    return Bound(sock, lock_fd, os.stat(cfg.server.socket).st_ino)


def _unbind(cfg: Config, bound: Bound) -> None:
    """Remove our socket file (not a successor's) and release the lock."""
    if bound.inode is not None:
        try:
            if os.stat(cfg.server.socket).st_ino == bound.inode:
                cfg.server.socket.unlink()
        except FileNotFoundError:
            pass
    if bound.lock_fd is not None:
        os.close(bound.lock_fd)


def build_app(holder: ConfigHolder) -> App:
    """The App and its parts, wired: metrics read the App's state at scrape time and time every load."""
    cfg = holder.cfg
    supervisor = Supervisor(holder)
    prom = Metrics(NAMES)
    app = App(holder, ModelStore(cfg.models_dirs, cfg.llama.confine_model_links), supervisor,
              ChildDoor(supervisor), ExtraServers(holder), prom)
    prom.attach(app)
    supervisor.on_ready = prom.load_seconds.observe
    return app


async def serve(cfg: Config) -> int:
    """Run oracd until SIGTERM/SIGINT.  Returns the process exit code."""
    t_start = time.monotonic()
    fds = fdbudget.apply(cfg, log)
    try:
        bound = _bind(cfg)
    except (StartupError, OSError) as exc:
        log.error("startup failed", error=str(exc))
        return 1
    app = build_app(ConfigHolder(cfg))
    srv = cfg.server
    app.dispatcher = dispatcher = Dispatcher(app.methods(), app.prom.request, max_batch_items=srv.max_batch_items,
                                             log_rate=srv.request_log_rate, log_burst=srv.request_log_burst)
    app.connections = conns = Connections(app.holder, dispatcher)
    app.fds = fds
    http: Optional[HttpFront] = None
    try:
        app.http = http = HttpFront(app) if cfg.http.listen else None     # reads http.api_key_file
    except StartupError as exc:
        log.error("startup failed", error=str(exc))
        _unbind(cfg, bound)
        return 1
    notifier = Notifier()
    exit_code = 0
    try:
        listener = await anyio.abc.SocketListener.from_socket(bound.sock)
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                await _startup(app, tg, http)
                async with anyio.create_task_group() as conn_tg:    # connections outlive the acceptor
                    app.acceptor = acceptor = Acceptor(listener, conns.handle, conn_tg)

                    async def accept() -> None:
                        with bound.accept_scope:
                            await acceptor.run()

                    tg.start_soon(accept)
                    notifier.ready(status_line(app))
                    log.info("oracd ready", socket=str(cfg.server.socket), pid=os.getpid(),
                             startup_s=round(time.monotonic() - t_start, 3), model=app.supervisor.model,
                             event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
                    tg.start_soon(_heartbeat, app, notifier)
                    await _main_loop(app, tg, signals)
                    await _stop_accepting(app, notifier, bound, listener, conns, http)
                    conns.abandoning = True      # what is still running gets -32009, not a closed connection
                    conn_tg.cancel_scope.cancel()
                await _stop_child(app)
                tg.cancel_scope.cancel()
    except Exception:
        log.exception("oracd crashed")
        exit_code = 1
    finally:
        _unbind(cfg, bound)
        log.info("oracd stopped", exit_code=exit_code)
    return exit_code


async def _startup(app: App, tg: anyio.abc.TaskGroup, http: Optional[HttpFront]) -> None:
    """Startup, step 2: the owners of the child and of the extra servers, then the preload."""
    await tg.start(app.supervisor.run)
    await tg.start(app.extra_servers.run)
    if app.cfg.server.metrics_listen:
        await tg.start(serve_http, app, app.prom, app.cfg.server.metrics_listen)
    if http is not None:
        await tg.start(serve_http_api, http)      # Ollama's and OpenAI's APIs ([http] listen)
    if app.cfg.llama.preload and app.cfg.llama.default_model:
        await _preload(app)
    if app.active_default:
        try:
            app.supervisor.set_default(app.active_default, app.store.resolve(app.active_default))
        except Exception as exc:      # no such file: nothing to return to, and status says why elsewhere
            log.warning("default model not found; return_to_default_after has nothing to return to",
                        model=app.active_default, error=getattr(exc, "message", str(exc)))


async def _main_loop(app: App, tg: anyio.abc.TaskGroup, signals: Any) -> None:
    """Until SIGTERM/SIGINT; SIGHUP reloads (in its own task: a slow reload never blocks signals)."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            tg.start_soon(_reload, app)
            continue
        log.info("signal received, shutting down", signal=signal.Signals(signum).name)
        return


async def _stop_accepting(app: App, notifier: Notifier, bound: Bound, listener: Any, conns: Connections,
                          http: Optional[HttpFront]) -> None:
    """Shutdown, step 1: STOPPING=1, no new connections or work, in-flight requests get shutdown_grace."""
    notifier.stopping("stopping: finishing in-flight requests")
    app.accepting = False
    bound.accept_scope.cancel()
    await listener.aclose()
    t0 = time.monotonic()
    with anyio.move_on_after(app.cfg.server.shutdown_grace):
        await conns.idle.wait()
    if conns.tasks:
        log.warning("shutdown grace over, abandoning requests", pending=conns.tasks)
    if http is not None:      # the HTTP listeners close; their requests share the same grace
        await stop_http(http, max(0.0, app.cfg.server.shutdown_grace - (time.monotonic() - t0)))


async def _stop_child(app: App) -> None:
    """Shutdown, step 2: the supervisor stops llama-server (TERM, grace, KILL) and finishes."""
    app.supervisor.shutdown()
    with anyio.move_on_after(app.cfg.llama.stop_grace + 15):
        await app.supervisor.finished.wait()


async def _preload(app: App) -> None:
    """Load default_model before READY; if it cannot be loaded, try fallback_models in order."""
    cfg = app.cfg
    tried = []
    for name in (cfg.llama.default_model, *cfg.llama.fallback_models):
        try:
            path = app.store.resolve(name)
            await app.check_loadable(path)
            with anyio.fail_after(cfg.llama.load_timeout + 5):
                await app.door.load(path.name, path)
        except TimeoutError:
            reason = LoadTimeout(f"load of {name} timed out after {cfg.llama.load_timeout + 5:g} seconds").message
            log.error("preload failed", model=name, error=reason)
            tried.append({"model": name, "error": reason})
            continue
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
        await app.reload_config()
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
        if interval and now - last_ping >= interval and app.supervisor.snapshot.state != ChildState.SHUTDOWN:
            notifier.watchdog()
            last_ping = now
        await anyio.sleep(period)
