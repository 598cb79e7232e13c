"""Ollama's ``options.num_ctx``: reported by default, applied only when the operator opts in.

Why off by default: a restart costs a voice box seconds, and clients disagree (Home Assistant asks
8192, others 2048), so by default the warm model is never restarted for it and ``/api/ps`` reports
the context one request really gets.  With ``[http] apply_num_ctx = true`` a request asking more
context per request than the model has restarts it with ``num_ctx x parallel`` (never beyond the
model's own trained context per slot), the way a reload applies a changed profile ``ctx_size``:
the config holder gets the model's profile with the new ``ctx_size`` and the supervisor restarts
the model (in-flight requests finish first).  It only grows: a smaller ask keeps the larger context,
so two clients cannot make it restart back and forth.  The memory check runs first: a context that
cannot fit is refused as any load is (-32002, ``insufficient_memory``), and the warm model keeps its
context.  A reload resets it to the operator's ``ctx_size``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import anyio

from ..config import Profile
from ..logs import get as get_logger
from ..memory import available, memory_verdict

if TYPE_CHECKING:
    from ..api.methods import App

log = get_logger("oracd.http")


def wanted_ctx_size(num_ctx: int, parallel: int, configured: int, trained: Optional[int]) -> Optional[int]:
    """The ``ctx_size`` (all slots) to restart with, or None to keep the configured one: pure."""
    per_slot = min(num_ctx, trained) if trained else num_ctx
    total = per_slot * parallel
    current = configured or (trained or 0) * parallel
    return total if total > current else None


async def apply(app: "App", path: Path, num_ctx: Optional[int]) -> None:
    """Grow ``path``'s context for ``num_ctx`` if the operator opted in; returns once the model runs with it."""
    cfg = app.cfg
    if num_ctx is None or not cfg.http.apply_num_ctx:
        return
    name = path.name
    meta = await anyio.to_thread.run_sync(app.store.metadata, path)
    size = wanted_ctx_size(num_ctx, cfg.llama.parallel, int(cfg.option_for(name, "ctx_size") or 0),
                           meta.get("context_length"))
    if size is None:
        return
    prof = cfg.profile_for(name) or Profile(model=name)
    new = dataclasses.replace(cfg, profiles={**cfg.profiles, name: dataclasses.replace(prof, ctx_size=size)})
    if cfg.llama.memory_check and meta.get("valid"):
        avail, source = await anyio.to_thread.run_sync(available, app.supervisor.cgroup_dir)
        if avail is not None:
            freed = app.supervisor.child_rss() if app.supervisor.model == name else 0
            memory_verdict(new, name, meta, avail + freed).fits_or_raise(source, freed)
    log.info("num_ctx applied: restarting with a larger context", model=name, num_ctx=num_ctx, ctx_size=size)
    app.holder.swap(new)
    sup = app.supervisor
    old = sup.child
    if sup.model != name or old is None:
        return                        # the next load of this model uses it
    app.door.request_restart(f"num_ctx {num_ctx} asked by an HTTP client")
    while True:                       # inside the request's deadline: until the restarted model is ready
        child = sup.child
        if child is not None and child is not old and child.model == name and sup.state.value == "ready":
            return
        if sup.state.value == "failed" and child is None:
            return                    # the request's own use() reports the load failure
        await anyio.sleep(0.05)
