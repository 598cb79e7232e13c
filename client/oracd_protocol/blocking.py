"""The one blocking JSON-RPC client: a persistent connection (``BlockingClient``) and a one-shot ``call_sync``.

For code that cannot await: oracctl, the eval harness, Popen-style methods of
the compat client, tests and benchmarks.  One request at a time per connection;
answers are read with ``NewlineFramer``.  Works the same from sync code and from
inside a running event loop (it blocks that loop for the call, as
``subprocess.Popen.wait`` would).

Notifications oracd sends about a request in flight (``generate.chunk``,
``quantize.progress``, ``load.progress``: ``params.id`` is the request's id) go
to that call's ``on_notify(method, params)``; its exceptions are the caller's.
Closing the connection (also on KeyboardInterrupt, through ``with``) makes oracd
abort the requests still running for it.

Errors: no daemon -> ``OracdUnavailable`` naming the socket; the connection
breaks -> ``ConnectionLost``; no answer in time -> ``CallTimeout``; oracd's error
-> its class from the shared table (``from_wire``), including an error line
without an id (a connection refused with Busy or AccessDenied, a request line
too large), which is oracd's answer to a line it could not take.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from .errors import CallTimeout, ConnectionLost, OracdUnavailable, from_wire
from .framing import CLIENT_MAX_LINE, TOO_LONG, NewlineFramer, encode
from .names import CONNECT_TIMEOUT_S, default_socket_path, start_hint

#: ``on_notify(method, params)``: called for each notification about the call in flight.
NotifyCallback = Callable[[str, Dict[str, Any]], None]

_RECV_SIZE = 65536
_ids = itertools.count(1)


class LineTooLong(ValueError):
    """oracd sent a line longer than the client's ``max_line`` (it was skipped; the connection is still usable)."""


class BlockingClient:
    """One blocking connection to oracd (``with BlockingClient(path) as c: c.call("status")``).

    ``timeout`` bounds each socket operation (a call may also pass its own overall
    ``timeout``).  With ``kernel_timeouts=True`` the bound is the kernel's
    (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking socket) instead of Python's, which
    saves a ``poll()`` per send and receive: what a latency measurement wants.  Per-call
    timeouts then do not exist.  ``path`` defaults to ``default_socket_path()``.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]", None] = None, timeout: float = 60.0, *,
                 connect_timeout: Optional[float] = None, kernel_timeouts: bool = False,
                 max_line: int = CLIENT_MAX_LINE):
        self.path = str(path) if path else default_socket_path()
        self.timeout = timeout
        self.kernel_timeouts = kernel_timeouts
        self.framer = NewlineFramer(max_line)
        #: The notifications about the last request, in order (``{"method", "params"}`` messages).
        self.notifications: List[Dict[str, Any]] = []
        self._lines: Deque[Any] = deque()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout if connect_timeout is None else connect_timeout)
            sock.connect(self.path)
        except OSError as exc:            # socket.timeout included (strerror None: "timed out")
            sock.close()
            reason = exc.strerror or str(exc) or "timed out"
            raise OracdUnavailable(f"cannot connect to oracd at {self.path}: {reason}. {start_hint(self.path)}",
                                   self.path, exc.errno) from None
        except BaseException:
            sock.close()
            raise
        if kernel_timeouts:
            sock.settimeout(None)
            tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        else:
            sock.settimeout(timeout)
        self.sock = sock

    # ------------------------------------------------------------------ raw lines
    def send_raw(self, data: bytes) -> None:
        """Write ``data`` as it is (whole lines, or deliberately broken ones in tests)."""
        try:
            self.sock.sendall(data)
        except (socket.timeout, BlockingIOError):
            raise CallTimeout(f"oracd did not take our request within {self.timeout:g} seconds") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionLost(f"connection to oracd at {self.path} lost while sending: {exc}", self.path) from None

    def recv_line(self) -> bytes:
        """The next line oracd sent (without its newline), waiting under the socket's timeout."""
        return self._next_line(None, None, None)

    def recv(self) -> Any:
        """The next message oracd sent, parsed (a response, a batch, or a notification)."""
        return json.loads(self.recv_line())

    def _next_line(self, deadline: Optional[float], method: Optional[str], timeout: Optional[float]) -> bytes:
        while not self._lines:
            self._read_more(deadline, method, timeout)
        line = self._lines.popleft()
        if line is TOO_LONG:
            raise LineTooLong(f"oracd sent a line longer than {self.framer.max_line} bytes")
        return line

    def _read_more(self, deadline: Optional[float], method: Optional[str], timeout: Optional[float]) -> None:
        sock = self.sock
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallTimeout(f"oracd did not answer {method} within {timeout:g} seconds")
                sock.settimeout(left)
            try:
                chunk = sock.recv(_RECV_SIZE)
            except (socket.timeout, BlockingIOError):     # BlockingIOError: SO_RCVTIMEO ran out
                if deadline is not None:
                    continue
                what = f"{method} " if method else ""
                raise CallTimeout(f"oracd did not answer {what}within {self.timeout:g} seconds") from None
            except (BrokenPipeError, ConnectionResetError) as exc:
                during = f" during {method}" if method else ""
                raise ConnectionLost(f"connection to oracd at {self.path} lost{during}: {exc}", self.path) from None
            if not chunk:
                before = f" before it answered {method}" if method else ""
                raise ConnectionLost(f"connection to oracd at {self.path} closed{before}", self.path)
            lines = self.framer.feed(chunk)
            if lines:
                self._lines.extend(lines)
                return

    # ------------------------------------------------------------------ requests
    def request(self, method: str, params: Any = None, *, on_notify: Optional[NotifyCallback] = None,
                timeout: Optional[float] = None) -> Dict[str, Any]:
        """Send one request and return oracd's whole response (``result`` or ``error``).

        Notifications about it that arrive first go to ``on_notify`` and into
        ``self.notifications``.  An error line without an id is oracd's answer too
        (it could not take the line) and is returned.  ``timeout`` bounds the whole
        exchange (default: each socket operation is bounded by ``self.timeout``).
        """
        return self._exchange(method, params, on_notify, timeout, _deadline(timeout))

    def call(self, method: str, params: Any = None, *, on_notify: Optional[NotifyCallback] = None,
             timeout: Optional[float] = None) -> Any:
        """Like ``request``, but return the result and raise oracd's error as its class (``from_wire``)."""
        return _result(self._exchange(method, params, on_notify, timeout, _deadline(timeout)))

    def _exchange(self, method: str, params: Any, on_notify: Optional[NotifyCallback], timeout: Optional[float],
                  deadline: Optional[float]) -> Dict[str, Any]:
        if deadline is not None and self.kernel_timeouts:
            raise ValueError("per-call timeouts need kernel_timeouts=False")
        rid = next(_ids)
        msg: Dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = params
        self.notifications = []
        try:
            self.send_raw(encode(msg))
        except ConnectionLost:
            pass       # oracd may have refused the connection (Busy, AccessDenied): its error line is still to read
        try:
            while True:
                line = self._next_line(deadline, method, timeout)
                try:
                    resp = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(resp, dict):
                    continue
                got = resp.get("id")
                if got == rid or (got is None and "error" in resp):
                    return resp
                note = resp.get("params")
                if got is None and isinstance(note, dict) and note.get("id") == rid \
                        and isinstance(resp.get("method"), str):
                    self.notifications.append(resp)
                    if on_notify is not None:
                        on_notify(resp["method"], note)
        finally:
            if deadline is not None:
                self.sock.settimeout(self.timeout)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _result(resp: Dict[str, Any]) -> Any:
    if "error" in resp:
        raise from_wire(resp["error"])
    return resp.get("result")


def call_sync(method: str, params: Optional[Dict[str, Any]] = None, *, socket_path: Optional[str] = None,
              timeout: float = 30.0, on_notify: Optional[NotifyCallback] = None) -> Any:
    """Call ``method`` on oracd over a connection of its own and return the result.

    ``timeout`` bounds the whole call, connecting included (connecting alone at most
    ``CONNECT_TIMEOUT_S``).  Interrupting it (KeyboardInterrupt) closes the connection,
    and oracd aborts a request whose client hung up.
    """
    deadline = time.monotonic() + timeout
    with BlockingClient(socket_path, timeout, connect_timeout=min(timeout, CONNECT_TIMEOUT_S)) as c:
        return _result(c._exchange(method, params or {}, on_notify, timeout, deadline))


__all__ = ["BlockingClient", "LineTooLong", "NotifyCallback", "call_sync"]
