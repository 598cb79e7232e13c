"""The RPC workers as the supervisor sees them: which to use, the pre-flight check, fallback, status.

Why a pre-flight check: llama-server aborts (SIGABRT) within half a second
when a worker in ``--rpc`` does not answer, before it even listens, and its
stderr says only "Failed to connect".  Probing each worker first (HELLO,
``hello``) turns that into an error naming the worker, and lets
``rpc_fallback_local`` load the model without the workers instead.
While llama-server is attached, workers are not probed (rpc-server serves one
client at a time); oracd watches llama-server's TCP connections to them, so a
worker that dies is noticed before the next request trips over it.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import anyio

from ..config import Config, ConfigHolder
from ..logs import get as get_logger
from .hello import WorkerCheck, attached_workers, hello

log = get_logger("oracd.workers")

PROBE_TIMEOUT = 2.0


def workers_for(cfg: Config, model: Optional[str]) -> Tuple[str, ...]:
    """The model's profile's rpc_workers if it sets them (even to []), else [llama] rpc_workers."""
    return cfg.option_for(model, "rpc_workers")


class RpcWorkers:
    """What the supervisor knows about the workers: last checks, what the child uses, fallback.

    Reads the config from the holder at every decision, so a reload that changes
    a profile's ``rpc_workers`` applies to the next load.
    """

    def __init__(self, holder: ConfigHolder):
        self.holder = holder
        self.checks: Dict[str, WorkerCheck] = {}
        self.attached: Dict[str, bool] = {}          # from the last lost() check of the running child
        self.fallback: Optional[Dict[str, Any]] = None   # set while a model runs locally instead
        self._last_idle_check = 0.0

    async def preflight(self, workers: Sequence[str]) -> List[WorkerCheck]:
        """HELLO every worker at once (in threads); remember and return the results."""
        results: List[Optional[WorkerCheck]] = [None] * len(workers)

        async def one(i: int, address: str) -> None:
            results[i] = await anyio.to_thread.run_sync(hello, address, PROBE_TIMEOUT)

        async with anyio.create_task_group() as tg:
            for i, a in enumerate(workers):
                tg.start_soon(one, i, a)
        checks = [r for r in results if r is not None]
        for c in checks:
            self.checks[c.address] = c
        return checks

    async def plan(self, model: str) -> Tuple[Tuple[str, ...], Optional[str]]:
        """(workers to start llama-server with, error message if the load must fail).

        All workers answer: use them.  Some do not: with rpc_fallback_local, none
        (and say so); without it, an error naming each silent worker.
        """
        workers = workers_for(self.holder.cfg, model)
        self.fallback = None
        if not workers:
            return (), None
        bad = [c for c in await self.preflight(workers) if not c.answers]
        if not bad:
            return workers, None
        why = "; ".join(f"{c.address}: {c.error}" for c in bad)
        msg = f"rpc worker{'s' if len(bad) > 1 else ''} not answering ({why})"
        if self.holder.cfg.llama.rpc_fallback_local:
            self.fallback = {"model": model, "reason": msg, "since": round(time.time(), 3),
                             "workers": [c.address for c in bad]}
            log.warning("rpc fallback: loading without workers", model=model, reason=msg)
            return (), None
        return workers, msg

    def lost(self, pid: int, in_use: Sequence[str]) -> List[str]:
        """Workers in use that llama-server no longer holds a live connection to (blocking: a thread)."""
        self.attached = attached_workers(pid, in_use) if in_use else {}
        return [a for a, ok in self.attached.items() if not ok]

    async def recheck_idle(self, interval: float) -> None:
        """In fallback, probe the silent workers now and then, so status shows when they are back."""
        if self.fallback is None or time.monotonic() - self._last_idle_check < interval:
            return
        self._last_idle_check = time.monotonic()
        checks = await self.preflight(self.fallback["workers"])
        if all(c.answers for c in checks):
            log.info("rpc workers answer again; a load or reload uses them",
                     workers=[c.address for c in checks])

    def status(self, model: Optional[str], in_use: Sequence[str]) -> Optional[Dict[str, Any]]:
        """Cheap: last probe results and the last connection check (no I/O on the event loop)."""
        configured = workers_for(self.holder.cfg, model)
        if not configured and not in_use:
            return None
        rows = []
        for a in dict.fromkeys((*configured, *in_use)):
            c = self.checks.get(a)
            rows.append({"address": a, "in_use": a in in_use, "attached": self.attached.get(a) if a in in_use else None,
                         **({k: v for k, v in c.as_dict().items() if k != "address"} if c else
                            {"answers": None})})
        split = self.holder.cfg.option_for(model, "tensor_split")
        return {"workers": rows, "fallback_local": self.fallback, "tensor_split": list(split) or None}
