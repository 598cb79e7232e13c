"""Names both ends must spell the same: notification methods, where the socket is, environment variables.

Also ``CLIENT_GRACE_S``: a request that carries its own ``timeout`` is given up by
oracd when that passes, and oracd then answers with an error.  A client waits that
long plus this grace before it gives up itself, so it hears oracd's answer (a
named error) instead of guessing, while a daemon that hangs still cannot hang it.
"""
from __future__ import annotations

import os
from pathlib import Path

# ---------------------------------------------------------------------- notifications (params.id = the request's id)
GENERATE_CHUNK = "generate.chunk"        #: a piece of streamed text: ``{id, text}``
QUANTIZE_PROGRESS = "quantize.progress"  #: ``{id, done, total, tensor, elapsed_ms}``
LOAD_PROGRESS = "load.progress"          #: ``{id, model, state, elapsed_ms}``

# ---------------------------------------------------------------------- socket discovery
#: The socket of a system-wide oracd (systemd unit, ``/etc/oracd/oracd.toml``).
SYSTEM_SOCKET = "/run/oracd/oracd.sock"
#: The directory above the one this package sits in: a checkout's root when run from one (the dev config puts
#: its socket there), somewhere under the Python prefix once installed; only a fallback to try.
PACKAGE_PARENT_PARENT = Path(__file__).resolve().parent.parent.parent
DEV_SOCKET = str(PACKAGE_PARENT_PARENT / "run" / "oracd.sock")
SOCKET_ENV = "ORACD_SOCKET"
#: ORAC's models dir override (the old client's; oracd checks it is a dir it serves).
MODELS_PATH_ENV = "ORAC_MODELS_PATH"

#: Seconds a client waits beyond a request's own ``timeout`` before it gives up on oracd's answer.
CLIENT_GRACE_S = 15.0
#: Seconds a client waits for oracd to accept a connection (at most; a shorter call timeout wins).
CONNECT_TIMEOUT_S = 5.0


def default_socket_path() -> str:
    """``$ORACD_SOCKET``, else ``/run/oracd/oracd.sock`` if it exists, else ``<checkout>/run/oracd.sock``."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return DEV_SOCKET


def start_hint(path: str) -> str:
    """How to get an oracd listening on ``path`` (appended to connection errors)."""
    return (f"Is oracd running? Start it with `sudo systemctl start oracd` (system socket {SYSTEM_SOCKET}) "
            f"or, in a checkout, `python -m oracd --config etc/oracd.dev.toml` (socket {DEV_SOCKET}); "
            f"set {SOCKET_ENV} to use another socket (this client used {path}).")
