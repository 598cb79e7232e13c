"""A tiny blocking JSON-RPC call to oracd, for code that cannot await (Popen-style methods).

One short-lived connection per call: connect, write one request line, read
lines until the answer with our id, close.  Works the same from sync code and
from inside a running event loop (it blocks that loop for the call's duration,
like ``subprocess.Popen.wait`` would).

``on_notify(method, params)`` receives the notifications oracd sends about the
call while it runs (``quantize.progress``, ``load.progress``, ``generate.chunk``
with ``stream: true``).  Interrupting the call (KeyboardInterrupt) closes the
connection, and oracd aborts a request whose client hung up.
"""
from __future__ import annotations

import itertools
import json
import socket
import time
from typing import Any, Callable, Dict, Optional

from .exceptions import CallTimeout, ConnectionLost, OracdUnavailable
from .paths import default_socket_path, start_hint
from .transport import _rpc_error

_ids = itertools.count(1)


def call_sync(method: str, params: Optional[Dict[str, Any]] = None, *, socket_path: Optional[str] = None,
              timeout: float = 30.0, on_notify: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> Any:
    """Call ``method`` on oracd and return its result; errors as in ``OracdClient.call``.
    ``on_notify(method, params)``, if given, is called for each notification about this call."""
    path = str(socket_path) if socket_path else default_socket_path()
    rid = next(_ids)
    line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": rid}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(min(timeout, 5.0))
        try:
            sock.connect(path)
        except (OSError, socket.timeout) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or "timed out")
            raise OracdUnavailable(f"cannot connect to oracd at {path}: {reason}. {start_hint(path)}",
                                   path, getattr(exc, "errno", None)) from None
        buf = b""
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass     # oracd may have refused the connection (Busy, AccessDenied): its error line is below
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallTimeout(f"oracd did not answer {method} within {timeout:g} seconds")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ConnectionLost(f"connection to oracd at {path} lost during {method}: {exc}", path) from None
            if not chunk:
                raise ConnectionLost(f"connection to oracd at {path} closed before it answered {method}", path)
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if msg.get("id") == rid:
                    if "error" in msg:
                        raise _rpc_error(msg["error"])
                    return msg.get("result")
                if msg.get("id") is None:
                    if "error" in msg:
                        raise _rpc_error(msg["error"])
                    note = msg.get("params")
                    if (on_notify is not None and isinstance(note, dict) and note.get("id") == rid
                            and isinstance(msg.get("method"), str)):
                        on_notify(msg["method"], note)     # its exceptions are the caller's, untouched
