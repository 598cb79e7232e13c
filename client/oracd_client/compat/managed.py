"""``ManagedServer``: a llama-server that oracd started for ``start_server()``, with ``subprocess.Popen``'s interface.

Why Popen-like: the old client spawned llama-server itself and returned the Popen;
callers poll, wait and terminate it.  Here oracd owns the process, so each method
is one short blocking call to oracd (``server_info`` / ``stop_server``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

from oracd_protocol.blocking import call_sync
from oracd_protocol.errors import InvalidParams


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedServer:
    """A llama-server that oracd started (``start_server``) and supervises, with ``subprocess.Popen``'s interface.

    ``pid``/``args``/``returncode``, ``poll()``, ``wait(timeout)``, ``communicate()``,
    ``terminate()``, ``kill()``, ``send_signal()`` and ``with`` work as on a Popen.
    They are synchronous like Popen's: each is one short blocking call to oracd
    (``server_info`` / ``stop_server``), usable from sync and async code alike.
    ``terminate()``/``kill()`` return once oracd has stopped the server, so
    ``poll()`` is not None right after them.  ``stdin``/``stdout``/``stderr`` are
    None (oracd keeps the server's output; see its log).  ``api_key``: the server answers only requests
    with ``Authorization: Bearer <api_key>`` (None when oracd runs it keyless,
    ``llama.extra_servers_keyless``); ``headers`` is that header, ready to pass on.

    Leaving a ``with`` block stops the server if it is still running (a plain
    Popen would wait forever for a server to exit by itself).  If oracd is
    unreachable or no longer knows the pid, liveness comes from the pid itself;
    an exit status that cannot be known is reported as ``-SIGTERM`` (oracd
    stops its servers with SIGTERM when it shuts down).
    """

    stdin = None
    stdout = None
    stderr = None
    universal_newlines = False
    text_mode = False

    def __init__(self, info: Dict[str, Any], socket_path: str):
        self._socket = socket_path
        self.pid: int = int(info["pid"])
        self.args: List[str] = list(info.get("args") or [])
        self.model: Optional[str] = info.get("model")
        self.host: Optional[str] = info.get("host")
        self.port: Optional[int] = info.get("port")
        self.api_key: Optional[str] = info.get("api_key")
        self.returncode: Optional[int] = None
        self._update(info)

    @property
    def headers(self) -> Dict[str, str]:
        """The HTTP headers a request to this server needs (its API key), or {} for a keyless one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _update(self, info: Dict[str, Any]) -> None:
        if not info.get("running", True) and self.returncode is None:
            rc = info.get("returncode")
            self.returncode = int(rc) if rc is not None else -signal.SIGTERM

    def _gone_unless_alive(self) -> None:
        if self.returncode is None and not _pid_alive(self.pid):
            self.returncode = -signal.SIGTERM

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        try:
            self._update(call_sync("server_info", {"pid": self.pid}, socket_path=self._socket, timeout=10))
        except (InvalidParams, ConnectionError, TimeoutError):
            self._gone_unless_alive()
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, input: Any = None, timeout: Optional[float] = None) -> Any:
        self.wait(timeout)
        return (None, None)

    def _stop(self, force: bool) -> None:
        if self.returncode is not None:
            return
        try:
            self._update(call_sync("stop_server", {"pid": self.pid, "force": force},
                                   socket_path=self._socket, timeout=60))
            return
        except InvalidParams:
            pass            # oracd does not know this pid (it restarted): signal it ourselves
        except (ConnectionError, TimeoutError):
            pass
        try:
            os.kill(self.pid, signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._gone_unless_alive()

    def terminate(self) -> None:
        self._stop(False)

    def kill(self) -> None:
        self._stop(True)

    def send_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._stop(False)
        elif sig == signal.SIGKILL:
            self._stop(True)
        elif sig == 0:
            self.poll()
        elif self.poll() is None:
            os.kill(self.pid, sig)   # no oracd API for other signals; works when we share oracd's user

    def __enter__(self) -> "ManagedServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.poll() is None:
            self.terminate()
        try:
            self.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __repr__(self) -> str:
        return (f"<ManagedServer pid={self.pid} {self.host}:{self.port} model={self.model} "
                f"returncode={self.returncode}>")
