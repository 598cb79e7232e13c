"""While the child is READY: probe it on a fixed schedule, kill it when it hangs, hand control back when the owner must act.

It also notices when a non-default model has been idle for ``return_to_default_after``
seconds and asks the owner to load the default back.

Idle, the probe is /health.  With generations in flight it is /slots: a decode
that stops making progress (a GPU hang, a frozen RPC worker) leaves /health at
200, but its slot's counters stop moving (``hang.HangDetector`` decides).  RPC
workers in use are checked through llama-server's TCP connections to them.

Requests arriving meanwhile wake this loop (the owner's inbox); it takes them in
without resetting its probe schedule, so steady traffic never starves the probes.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ..logs import get as get_logger
from ..procinfo import cpu_seconds
from .hang import HangDetector, slot_progress

if TYPE_CHECKING:
    from .supervisor import Child, Supervisor

log = get_logger("oracd.watchdog")


async def watch(sup: "Supervisor", child: "Child") -> None:
    """Return when the owner has something to do (the child exited or was killed, a swap, unload,
    restart or shutdown); until then probe every ``health_interval``."""
    l = sup.holder.cfg.llama
    detector = HangDetector(l.hang_timeout, l.health_timeout, time.monotonic())
    slots_supported = True          # off for a child started with slots disabled (501)
    next_probe = time.monotonic() + l.health_interval
    while True:
        sup.apply_inbox()
        if sup.must_act(child):
            return
        now = time.monotonic()
        back_at = sup.return_to_default_at(child)
        if back_at is not None and now >= back_at and sup.in_flight == 0:
            sup.return_to_default()      # idle on another model long enough: the owner swaps back
            return
        if now < next_probe:
            wake = next_probe if back_at is None else min(next_probe, max(back_at, now + 0.05))
            await sup.wait_kick(wake - now)
            continue
        next_probe = now + l.health_interval
        if child.rpc_workers:
            lost = await anyio.to_thread.run_sync(sup.rpc.lost, child.pid, child.rpc_workers)
            if lost:
                log.warning("rpc worker lost", workers=lost, pid=child.pid)
                await sup.kill(child, "rpc_worker_lost", f"rpc workers lost: {', '.join(lost)}")
                return
        else:
            await sup.rpc.recheck_idle(5 * l.health_interval)
        use_slots = bool(sup.in_flight) and slots_supported
        probe = "/slots" if use_slots else "/health"
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
                        slots_supported = False
                if not use_slots or status == 501:
                    answered = await child.http.health() == 200
                    if answered:
                        verdict = detector.health(time.monotonic(), True)
            except Exception:
                answered = False
        if child.returncode is not None:
            return
        if not answered:
            verdict = detector.failed(time.monotonic(), probe)
            log.warning("health probe failed", pid=child.pid, probe=probe,
                        unhealthy_s=round(time.monotonic() - (detector.unhealthy_since or time.monotonic()), 3))
        else:
            sup.reset_failures_if_healthy(child)
        if verdict is not None:
            await sup.kill(child, "hang", verdict)
            return
