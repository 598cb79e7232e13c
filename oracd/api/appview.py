"""What status and metrics may read of the running daemon: Protocols, so neither imports the App.

Why a leaf module: the methods (``methods.App``) answer ``status`` and ``metrics``,
and status and metrics read the App; typing the App through these narrow views
keeps the import graph a tree (``tests/unit/test_layering.py`` checks) and says
exactly which parts each reader depends on.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol

from ..child.extra_servers import ExtraServers
from ..child.supervisor import Supervisor
from ..config import Config


class DispatchCounts(Protocol):
    """The JSON-RPC dispatcher's totals."""
    served: int
    errors: int


class OpenConnections(Protocol):
    """The registry of client connections."""
    open: int


class AcceptState(Protocol):
    """The accept loop: its failures by errno, for status and metrics."""
    errors: Dict[str, int]

    def state(self) -> Dict[str, Any]: ...


class Described(Protocol):
    """A part that describes itself for status (the HTTP front door)."""
    def info(self) -> Dict[str, Any]: ...


class SelfFigures(Protocol):
    """oracd's own RSS and the config-only parts of status (``status.SelfStatus``)."""
    def rss(self) -> Optional[int]: ...

    def static(self, cfg: Any) -> Dict[str, Any]: ...


class AppView(Protocol):
    """The App as status and metrics read it."""
    supervisor: Supervisor
    extra_servers: ExtraServers
    started: float
    requests_in_flight: int
    generations: int
    active_default: str
    fallback: Optional[Dict[str, Any]]
    memory: Optional[Dict[str, Any]]
    fds: Optional[Dict[str, Any]]
    self_status: SelfFigures
    dispatcher: Optional[DispatchCounts]
    connections: Optional[OpenConnections]
    acceptor: Optional[AcceptState]
    http: Optional[Described]

    @property
    def cfg(self) -> Config: ...
