"""Who waits for the child, and who holds it: the supervisor's tickets and in-flight leases.

A request that needs a model posts a ``Ticket`` and waits on it; the owner loop
resolves it exactly once, with the child to use or the error that ends the wait.
A request using the child holds a lease; a swap or a restart first waits for the
leases to drain (``swap_drain_timeout``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import anyio

from oracd_protocol.errors import OracError


@dataclass(eq=False)
class Ticket:
    """One request's wait: for ``model`` (None: for an unload)."""
    model: Optional[str]
    path: Optional[Path] = None
    lease: bool = False                  # take an in-flight lease on the child when resolved (use())
    done: anyio.Event = field(default_factory=anyio.Event)
    child: Any = None
    error: Optional[OracError] = None


def _copy(err: OracError) -> OracError:
    """Each waiter raises its own exception object (tracebacks are per task)."""
    new = type(err)(err.message, err.data)
    new.code = err.code
    return new


class TicketsAndLeases:
    """The requests waiting for a model or an unload (tickets), and the in-flight leases on the child."""
    def __init__(self) -> None:
        self.tickets: List[Ticket] = []      # waiting for a model
        self.unloads: List[Ticket] = []      # waiting for the child to be stopped
        self.in_flight = 0                   # leases on the child
        self.last_release = 0.0              # monotonic time the last lease ended (the owner's idle clock)
        self.drained = anyio.Event()
        self.drained.set()

    def acquire(self) -> None:
        self.in_flight += 1
        if self.drained.is_set():
            self.drained = anyio.Event()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_release = time.monotonic()
        if self.in_flight == 0:
            self.drained.set()

    def add(self, ticket: Ticket) -> None:
        (self.tickets if ticket.model is not None else self.unloads).append(ticket)

    def remove(self, ticket: Ticket) -> bool:
        """Forget a ticket whose request gave up; True if it was waiting for a model."""
        if ticket in self.tickets:
            self.tickets.remove(ticket)
            return True
        if ticket in self.unloads:
            self.unloads.remove(ticket)
        return False

    def resolve(self, match: Callable[[Ticket], bool], on_done: Callable[[str], None], child: Any = None,
                error: Optional[OracError] = None) -> None:
        """Resolve the matching tickets with ``child`` (taking their leases) or ``error``;
        ``on_done(model)`` for each (the swap queue forgets the waiter)."""
        keep = []
        for t in self.tickets:
            if not match(t):
                keep.append(t)
                continue
            if child is not None and t.lease:
                self.acquire()
            t.child, t.error = child, (_copy(error) if error is not None else None)
            t.done.set()
            on_done(t.model)
        self.tickets = keep

    def resolve_unloads(self) -> None:
        for t in self.unloads:
            t.done.set()
        self.unloads = []

    async def drain(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.drained.wait()
