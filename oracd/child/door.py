"""The request side's one door to the child's owner: use, load, unload, prewarm, restart, and reports.

Requests never write the owner's state.  They post what they want into its
inbox and wait for the state to settle (a ticket the owner resolves with the
child, or with the error that ends the wait: llama-swap's "ask and wait"), and
hold a lease on the child while they use it, so a swap waits for them.  The
fast path skips the wait when the snapshot already shows the wanted model
READY and nothing is pending.
"""
from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Optional

import anyio

from oracd_protocol.errors import ShuttingDown
from ..logs import get as get_logger
from ..models.gguf import header
from .instance import Child
from .states import ChildState
from .supervisor import Supervisor
from .tickets import Ticket
from .warmup import WarmReport

log = get_logger("oracd.supervisor")


class ChildDoor:
    """What a request may ask of the supervised child (see the module docstring)."""

    def __init__(self, owner: Supervisor):
        self._owner = owner

    def ready_child(self, name: str) -> Optional[Child]:
        """The warm child if it serves ``name`` right now and nothing is pending (the fast path)."""
        snap = self._owner.snapshot
        c = snap.child
        if (snap.state is ChildState.READY and c is not None and c.model == name and c.returncode is None
                and snap.wanted_model == name and not self._owner.pending()):
            return c
        return None

    async def _wait(self, ticket: Ticket) -> Optional[Child]:
        owner = self._owner
        if owner.stopping:
            raise ShuttingDown()
        owner.post("want", ticket)
        try:
            await ticket.done.wait()
        except BaseException:            # the request gave up (its deadline, its client hung up)
            if not ticket.done.is_set():
                owner.post("leave", ticket)
            elif ticket.lease and ticket.child is not None:
                owner.leases.release()
            raise
        if ticket.error is not None:
            raise ticket.error
        return ticket.child

    @asynccontextmanager
    async def use(self, name: str, path: Path) -> AsyncIterator[Child]:
        """Hold the child serving ``name`` for one request; a swap waits until such holds end."""
        child = self.ready_child(name)
        if child is not None:
            self._owner.leases.acquire()
        else:
            child = await self._wait(Ticket(name, path, lease=True))
        assert child is not None
        try:
            yield child
        finally:
            self._owner.leases.release()     # the ledger notes when: the owner's idle clock reads it

    async def load(self, name: str, path: Path) -> Child:
        """Wait until ``name`` is ready; its load failure (after this call) is raised."""
        child = await self._wait(Ticket(name, path))
        assert child is not None
        return child

    async def unload(self) -> None:
        """Stop the child; returns once it is stopped."""
        await self._wait(Ticket(None))

    async def prewarm(self, name: str, path: Path, target: Dict[str, Any], persist: bool = True) -> WarmReport:
        """Warm ``name``'s slots with ``target`` now, and (``persist``) after every later load (it is
        remembered, on disk when warm restore is on): a request holding the child, not an owner step, so swaps
        wait for it.  The owner takes the report in as the child's warm report."""
        warmer = self._owner.warmer
        if persist:
            await anyio.to_thread.run_sync(warmer.remember, name, target)
        path = Path(os.fspath(path))
        async with self.use(name, path) as child:
            meta = await anyio.to_thread.run_sync(header, path)
            report = await warmer.warm(child.http, self._owner.holder.cfg, path, child.binary, child.cmd, meta,
                                       target, explicit=True, name=name, swa=child.swa)
            self._owner.post("warmed", (child, report))
        return report

    def set_keep_alive(self, name: str, seconds: float) -> None:
        """An HTTP client's keep_alive for ``name`` (a setting the owner reads: ``idle_rules.py``)."""
        self._owner.set_keep_alive(name, seconds)

    def request_restart(self, why: str) -> None:
        """Restart the warm model (same model, new load options), e.g. after a profile reload."""
        self._owner.post("restart", why)

    def generation_result(self, child: Child, ok: bool) -> bool:
        """A generation on ``child`` succeeded, or got a 5xx / lost its connection.  True when that
        failure makes the child count as wedged: the owner will kill and restart it."""
        if ok:
            child.wedge.success()
            return False
        if child.gone():          # it died under the request: the reaper restarts it; not a wedge
            return False
        if child.wedge.failure(time.monotonic()) and child.killed_for is None and child.returncode is None:
            log.error("wedged", pid=child.pid, failures=child.wedge.streak,
                      threshold=self._owner.holder.cfg.llama.wedge_threshold)
            self._owner.post("kill", (child, "wedged", f"{child.wedge.streak} failed generations in a row"))
            return True
        return child.killed_for == "wedged"
