"""What ``status`` answers, and the one-line STATUS= that systemd shows: read-only views of the App."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict

import psutil

from .. import __version__
from ..child.states import ChildState
from ..procinfo import RssSampler

if TYPE_CHECKING:
    from .methods import App

_self = psutil.Process()
_rss = RssSampler()


def oracd_rss() -> Any:
    return _rss.rss(_self)


_static: Dict[int, Dict[str, Any]] = {}


def _paths(cfg: Any) -> Dict[str, Any]:
    """The parts of status that only change with the config (pathlib joins cost ~10 us per status call)."""
    got = _static.get(id(cfg))
    if got is None or got["_cfg"] is not cfg:
        _static.clear()
        got = _static[id(cfg)] = {"_cfg": cfg, "socket": str(cfg.server.socket), "log_file": str(cfg.log_file),
                                  "models_dirs": [str(p) for p in cfg.models_dirs],
                                  "default_model": cfg.llama.default_model or None,
                                  "profiles": sorted(cfg.profiles), "config": str(cfg.path) if cfg.path else None}
    return got


def status_dict(app: "App") -> Dict[str, Any]:
    cfg, d = app.cfg, app.dispatcher
    static = _paths(cfg)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - app.started, 3),
        "rss_bytes": _rss.rss(_self),
        "child": app.supervisor.status(),
        "requests": {"served": d.served if d else 0, "errors": d.errors if d else 0,
                     "in_flight": app.requests_in_flight, "generations": app.generations},
        "connections": app.connections.open if app.connections else 0,
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


def status_line(app: "App") -> str:
    """systemd's STATUS=: what `systemctl status oracd` shows."""
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
