"""systemd notification (sd_notify) via ``sdnotify``: READY, STATUS, WATCHDOG, STOPPING.

Why a wrapper: sends are no-ops without NOTIFY_SOCKET, STATUS is sent only when
it changes, and the watchdog interval comes from WATCHDOG_USEC (honouring
WATCHDOG_PID) so the main loop can ping at half of it.
"""
from __future__ import annotations

import os
from typing import Optional

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None
        self._status: Optional[str] = None

    def _send(self, msg: str) -> None:
        if self._n is not None:
            self._n.notify(msg)

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    @staticmethod
    def watchdog_interval() -> Optional[float]:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked for."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(int(usec) / 1e6 / 2, 0.05)
        except ValueError:
            return None
