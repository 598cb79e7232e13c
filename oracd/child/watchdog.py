"""The READY child's probes: is it hung, has it lost an RPC worker?  The owner loop drives it.

The owner (``Supervisor._tend``) decides *when* to probe (every ``health_interval``,
woken early by requests without resetting the schedule, so steady traffic never
starves the probes) and acts on the answer; this module only asks the child and
judges, holding the per-child state between probes.

Idle, the probe is /health.  With generations in flight it is /slots: a decode
that stops making progress (a GPU hang, a frozen RPC worker) leaves /health at
200, but its slot's counters stop moving (``hang.HangDetector`` decides).  RPC
workers in use are checked through llama-server's TCP connections to them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import anyio

from ..logs import get as get_logger
from ..procinfo import cpu_seconds
from ..workers.pool import RpcWorkers
from .hang import HangDetector, slot_progress
from .instance import Child

log = get_logger("oracd.watchdog")


@dataclass(frozen=True)
class Probe:
    """One probe's outcome: did the child answer, and should the owner kill it (reason, why)?"""
    answered: bool
    kill: Optional[Tuple[str, str]] = None


class Watchdog:
    """Probes one READY child; created when it becomes ready, so its hang clock starts there."""

    def __init__(self, llama: Any, rpc: RpcWorkers, child: Child):
        self._llama = llama                 # the [llama] settings when it became ready (intervals, timeouts)
        self._rpc = rpc
        self._child = child
        now = time.monotonic()
        self._detector = HangDetector(llama.hang_timeout, llama.health_timeout, now)
        self._slots_supported = True        # off for a child started with slots disabled (501)
        self.next_probe = now + llama.health_interval

    async def probe(self, in_flight: int) -> Probe:
        """Probe now, and schedule the next one ``health_interval`` later."""
        l, child = self._llama, self._child
        self.next_probe = time.monotonic() + l.health_interval
        if child.rpc_workers:
            lost = await anyio.to_thread.run_sync(self._rpc.lost, child.pid, child.rpc_workers)
            if lost:
                log.warning("rpc worker lost", workers=lost, pid=child.pid)
                return Probe(False, ("rpc_worker_lost", f"rpc workers lost: {', '.join(lost)}"))
        else:
            await self._rpc.recheck_idle(5 * l.health_interval)
        use_slots = bool(in_flight) and self._slots_supported
        probe = "/slots" if use_slots else "/health"
        detector = self._detector
        verdict = None
        answered = False
        with anyio.move_on_after(l.health_timeout):
            try:
                status = None
                if use_slots:
                    status, slots = await child.http.slots()
                    if status == 200:
                        answered = True
                        verdict = detector.slots(time.monotonic(), slot_progress(slots), cpu_seconds(child.psutil()))
                    elif status == 501:
                        self._slots_supported = False
                if not use_slots or status == 501:
                    answered = await child.http.health() == 200
                    if answered:
                        verdict = detector.health(time.monotonic(), True)
            except Exception:
                answered = False
        if child.returncode is not None:
            return Probe(False)
        if not answered:
            verdict = detector.failed(time.monotonic(), probe)
            log.warning("health probe failed", pid=child.pid, probe=probe,
                        unhealthy_s=round(time.monotonic() - (detector.unhealthy_since or time.monotonic()), 3))
        return Probe(answered, ("hang", verdict) if verdict is not None else None)
