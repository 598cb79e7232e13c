"""Where the client finds oracd's socket, and what to tell the user when nobody answers there."""
from __future__ import annotations

import os
from pathlib import Path

#: The socket of a system-wide oracd (systemd unit, ``/etc/oracd/oracd.toml``).
SYSTEM_SOCKET = "/run/oracd/oracd.sock"
#: The checkout this client lives in (the parent of ``client/``); the dev config puts its socket here.
REPO = Path(__file__).resolve().parent.parent.parent
DEV_SOCKET = str(REPO / "run" / "oracd.sock")
SOCKET_ENV = "ORACD_SOCKET"
MODELS_PATH_ENV = "ORAC_MODELS_PATH"


def default_socket_path() -> str:
    """``$ORACD_SOCKET``, else ``/run/oracd/oracd.sock`` if it exists, else ``<repo>/run/oracd.sock``."""
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
