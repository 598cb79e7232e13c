"""What ``status`` answers, and the one-line STATUS= that systemd shows: read-only views of the App
(``appview.AppView``) and of the supervisor's snapshot."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import psutil

from .. import __version__, logs
from ..child.states import ChildState
from ..procinfo import RssSampler
from .appview import AppView

class SelfStatus:
    """What status reports about oracd itself, cheaply: its RSS (read at most once a second) and the parts
    that only change with the config (pathlib joins cost ~10 us per status call), computed once per config."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._rss = RssSampler()
        self._cfg: Any = None
        self._static: Dict[str, Any] = {}

    def rss(self) -> Optional[int]:
        return self._rss.rss(self._proc)

    def static(self, cfg: Any) -> Dict[str, Any]:
        if cfg is not self._cfg:
            self._cfg = cfg
            self._static = {"socket": str(cfg.server.socket), "log_file": str(cfg.log_file),
                            "models_dirs": [str(p) for p in cfg.models_dirs],
                            "default_model": cfg.llama.default_model or None,
                            "profiles": sorted(cfg.profiles), "config": str(cfg.path) if cfg.path else None}
        return self._static


def status_dict(app: AppView) -> Dict[str, Any]:
    cfg, d = app.cfg, app.dispatcher
    static = app.self_status.static(cfg)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - app.started, 3),
        "rss_bytes": app.self_status.rss(),
        "child": app.supervisor.status(),
        "requests": {"served": d.served if d else 0, "errors": d.errors if d else 0,
                     "in_flight": app.requests_in_flight, "generations": app.generations},
        "connections": app.connections.open if app.connections else 0,
        "logging": logs.state(),
        "accept": app.acceptor.state() if app.acceptor else None,
        "fds": app.fds,
        "http": app.http.info() if app.http is not None else None,      # [http] listen: the HTTP APIs
        "http_servers": [s.info() for s in app.extra_servers.servers.values() if s.returncode is None],
        "socket": static["socket"],
        "log_file": static["log_file"],
        "models_dirs": list(static["models_dirs"]),
        "default_model": static["default_model"],
        "active_default_model": app.active_default or None,
        "fallback": app.fallback,
        "memory": app.memory,
        "profiles": list(static["profiles"]),
        "config": static["config"],
    }


def status_line(app: AppView) -> str:
    """systemd's STATUS=: what `systemctl status oracd` shows."""
    snap = app.supervisor.snapshot
    st = snap.state
    if st == ChildState.READY:
        return f"ready: model {snap.model}, {app.requests_in_flight} requests in flight"
    if st in (ChildState.STARTING, ChildState.STOPPING):
        return f"{st.value}: model {snap.model or ''}".rstrip()
    if st == ChildState.BACKOFF:
        return f"backoff: llama-server restarting after {snap.consecutive_failures} failure(s)"
    if st == ChildState.FAILED:
        return f"idle: last load failed: {(snap.last_error or {}).get('message', '')}"[:200]
    return f"idle: no model loaded, {app.requests_in_flight} requests in flight"
