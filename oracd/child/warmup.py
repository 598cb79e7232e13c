"""Warm-up after a load: prefill every slot's KV cache with the profile's system prompt.

Why: the first real request after a start, swap or restart then pays only for
its own tokens.  ``cache_prompt`` keeps the prefix in each slot.  A failed
warm-up is logged and never fails the load: it is an optimisation.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import anyio

from ..config import Config
from ..logs import get as get_logger

log = get_logger("oracd.warmup")


async def warm_slots(http: Any, model: str, cfg: Config) -> Optional[float]:
    """Prefill each of the ``parallel`` slots; returns the milliseconds it took (None: nothing to warm)."""
    prof = cfg.profile_for(model)
    system = prof.effective_system_prompt() if prof is not None else None
    if not system or not cfg.llama.warmup:
        return None
    t0 = time.monotonic()

    async def one(slot: int) -> None:
        body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "ok"}],
                "max_tokens": 1, "temperature": 0, "id_slot": slot, "cache_prompt": True}
        try:
            await http.chat(body)
        except Exception as exc:   # warm-up is an optimisation: never fail a load over it
            log.warning("warm-up failed", slot=slot, error=str(exc))

    with anyio.move_on_after(cfg.llama.load_timeout):
        async with anyio.create_task_group() as tg:
            for slot in range(cfg.llama.parallel):
                tg.start_soon(one, slot)
    ms = round((time.monotonic() - t0) * 1000, 1)
    log.info("slots warmed", model=model, slots=cfg.llama.parallel, ms=ms)
    return ms
