"""Extra llama-servers on TCP host:port, for the old client's ``start_server()``.

Old ORAC code starts a llama-server and then talks HTTP to it.  oracd keeps
that working: it spawns and supervises a separate llama-server bound to the
requested host:port (loopback only unless ``llama.allow_remote_http``), stops
it on request or at shutdown, and never lets it disturb the warm server.
"""
from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import anyio
import anyio.abc

from ..config import ConfigHolder
from oracd_protocol.errors import Busy, InvalidParams, ServerStartFailed
from ..isolate import contained
from ..logs import get as get_logger
from ..models.store import ModelFile
from . import exits
from .command import build_command, child_env, find_binary
from .http import LlamaEndpoint, LlamaHTTP
from .process import ManagedProcess
from .readiness import TIMED_OUT, wait_healthy

log = get_logger("oracd.extra_servers")
PROBE_TIMEOUT = 2.0     # seconds one /health probe may take while a server starts
EXITED = "exited"       # the server exited before it was ready


class ExtraServer:
    def __init__(self, proc: ManagedProcess, model: str, host: str, port: int, args: List[str],
                 api_key: Optional[str] = None):
        self.proc = proc
        self.model = model
        self.host = host
        self.port = port
        self.args = args
        self.api_key = api_key      # given to start_server's caller only; info() never shows it

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def info(self) -> Dict[str, Any]:
        return {"pid": self.proc.pid, "args": self.args, "model": self.model, "host": self.host,
                "port": self.port, "running": self.returncode is None, "returncode": self.returncode}


async def _check_host(host: str, allow_remote: bool) -> None:
    """Loopback only, unless allowed.  anyio.getaddrinfo: a slow resolver must not stall the event loop."""
    if allow_remote:
        return
    try:
        addrs = {ai[4][0] for ai in await anyio.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError, ValueError, OSError):
        raise InvalidParams(f"unknown host {host[:100]!r}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise InvalidParams(f"host {host!r} is not a loopback address; set llama.allow_remote_http = true "
                            "to let oracd start llama-servers reachable from the network")


class ExtraServers:
    """The set of extra llama-servers; their lifetime is bounded by oracd's."""

    def __init__(self, holder: ConfigHolder):
        self.holder = holder
        self.servers: Dict[int, ExtraServer] = {}
        self._starting = 0           # start_server calls past the cap check, not yet in ``servers``
        self._tg: Optional[anyio.abc.TaskGroup] = None

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for pid in list(self.servers):
                    await self.stop(pid)

    async def start(self, model: ModelFile, host: str, port: int, temperature: float, top_p: float,
                    top_k: int, timeout: float) -> Dict[str, Any]:
        assert self._tg is not None
        cfg = self.holder.cfg
        running = [p for p, s in self.servers.items() if s.returncode is None]
        if len(running) + self._starting >= cfg.llama.max_extra_servers:
            raise Busy(f"{len(running) + self._starting} extra llama-servers are running or starting "
                       f"(llama.max_extra_servers = {cfg.llama.max_extra_servers}); stop one first (stop_server)",
                       {"reason": "max_extra_servers", "running": running})
        self._starting += 1          # counted until it is in self.servers: concurrent starts cannot pass the cap
        try:
            srv = await self._spawn(cfg, model, host, port, temperature, top_p, top_k)
        finally:
            self._starting -= 1
        return await self._wait_ready(srv, timeout)

    async def _spawn(self, cfg: Any, model: ModelFile, host: str, port: int, temperature: float, top_p: float,
                     top_k: int) -> ExtraServer:
        assert self._tg is not None
        await _check_host(host, cfg.llama.allow_remote_http)
        if not 1 <= port <= 65535:
            raise InvalidParams("port must be between 1 and 65535")
        binary = find_binary(cfg.llama.server_bin)
        api_key = None if cfg.llama.extra_servers_keyless else secrets.token_urlsafe(24)
        endpoint = LlamaEndpoint(port=port, api_key=api_key)
        cmd = build_command(cfg, binary, model.path, endpoint, name=model.name)
        cmd[cmd.index("--host") + 1] = host
        cmd += ["--temp", str(temperature), "--top-p", str(top_p), "--top-k", str(top_k)]
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ServerStartFailed(f"Failed to start llama server: cannot bind {host}:{port}: {exc.strerror}",
                                        {"host": host, "port": port}) from None
        try:
            proc = await ManagedProcess.spawn(cmd, env=child_env(endpoint, cfg.llama.child_env), tail=20)
        except OSError as exc:
            raise ServerStartFailed(f"Failed to start llama server: {exc}") from None
        srv = ExtraServer(proc, model.name, host, port, cmd, api_key)
        self.servers[proc.pid] = srv
        self._tg.start_soon(contained, "watching an extra llama-server", self._watch, srv)
        log.info("extra llama-server spawned", pid=proc.pid, host=host, port=port, model=model.name)
        return srv

    async def _wait_ready(self, srv: ExtraServer, timeout: float) -> Dict[str, Any]:
        """Until /health says 200; a server that exits or is not ready in time is stopped and reported."""
        proc, host, port, api_key = srv.proc, srv.host, srv.port, srv.api_key
        probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        http = LlamaHTTP(LlamaEndpoint(port=port, host=probe_host, api_key=api_key))
        try:
            outcome = await wait_healthy(http, time.monotonic() + timeout, PROBE_TIMEOUT,
                                         lambda: EXITED if srv.returncode is not None else None,
                                         anyio.sleep, first_pause=0.05, max_pause=0.05)
            if outcome == EXITED:
                raise ServerStartFailed(
                    f"Failed to start llama server: {exits.describe(srv.returncode)}: "
                    f"{srv.proc.tail[-1] if srv.proc.tail else ''}", {"stderr_tail": list(srv.proc.tail)})
            if outcome == TIMED_OUT:
                raise ServerStartFailed(f"Failed to start llama server: not ready after {timeout:g}s",
                                        {"stderr_tail": list(srv.proc.tail)})
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(proc.pid)
            raise
        finally:
            await http.close()
        return {**srv.info(), "api_key": api_key}

    async def _watch(self, srv: ExtraServer) -> None:
        rc = await srv.proc.wait_and_drain()
        log.info("extra llama-server exited", pid=srv.proc.pid, message=exits.describe(rc), **exits.exit_info(rc))

    async def stop(self, pid: int, force: bool = False) -> Dict[str, Any]:
        srv = self.servers.get(pid)
        if srv is None:
            raise InvalidParams(f"no llama-server with pid {pid} was started by oracd")
        await srv.proc.stop(self.holder.cfg.llama.stop_grace, first=signal.SIGKILL if force else signal.SIGTERM)
        return srv.info()

    def info(self, pid: int) -> Dict[str, Any]:
        srv = self.servers.get(pid)
        if srv is None:
            raise InvalidParams(f"no llama-server with pid {pid} was started by oracd")
        return srv.info()

