"""Warm-up after every load: the profile's system prompt in every slot's KV cache, from disk when it can be.

Why: the first real request after a start, swap, crash restart, reload restart
or oracd restart then pays only for its own tokens.  Two ways to get there:

- **restore**: the KV cache saved after an earlier prefill (``kvstore``, keyed by
  everything that makes it valid) is loaded into every slot, then *verified*: a
  zero-token completion of the same prompt must find nearly all of its tokens
  in the cache.  Some llama.cpp builds report a restore as done while the next
  request reprocesses everything; a restore that does not verify is erased and
  the slot is prefilled instead.
- **prefill**: a zero-token completion of the prompt in each slot (``n_predict:
  0``, nothing is sampled), then slot 0 is saved for next time.

Restore is skipped when ``llama.warm_restore = false``, for recurrent and hybrid
models, and for sliding-window models running without ``--swa-full``
(``swa.py``: llama-server reprocesses such a restored slot in full).  A failed
warm-up is logged and never fails the load.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import anyio

from ..config import Config
from ..logs import get as get_logger
from .kvstore import KVStore, classify_save_failure, entry_key, free_bytes
from .swa import SwaPlan, memory_kind

log = get_logger("oracd.warmup")
VERIFY_SHARE = 0.9          # a restore took if at least this share of the prompt came from the cache
TARGETS = "prewarm.json"    # prefixes registered with the prewarm RPC, so they survive an oracd restart


@dataclass
class WarmReport:
    """How this load was warmed, for status.child.warm."""
    how: str = "none"                     # restored | prefilled | none
    ms: Optional[float] = None
    cached_tokens: List[int] = field(default_factory=list)
    prompt_tokens: Optional[int] = None
    restore: str = "off"                  # on | off | unsupported: <why>
    note: Optional[str] = None            # why a restore was not used this time
    save: Optional[Dict[str, Any]] = None  # the save after a prefill: {ok, reason, error, free_bytes}
    swa: Optional[SwaPlan] = None         # sliding-window models: the cache mode in use, and why

    def as_dict(self, store: Optional[KVStore], counts: Dict[str, int]) -> Dict[str, Any]:
        d = {"how": self.how, "ms": self.ms, "cached_tokens": self.cached_tokens,
             "prompt_tokens": self.prompt_tokens, "restore": self.restore, "note": self.note,
             "save": self.save, "outcomes": dict(counts), "swa": self.swa.as_dict() if self.swa is not None else None}
        if store is not None:
            d["cache_dir"] = str(store.dir)
            d["cache_dir_bytes"] = store.size_bytes()
        return d


def restore_support(cfg: Config, meta: Dict[str, Any], swa: Optional[SwaPlan] = None) -> str:
    """'on', 'off' (configured), or 'unsupported: <why>' for this model; ``swa``: the sliding-window cache
    it runs with (a restore holds only with ``--swa-full``)."""
    if not cfg.llama.warm_restore:
        return "off"
    kind, arch = memory_kind(meta), meta.get("architecture")
    if kind in ("recurrent", "hybrid"):
        return f"unsupported: {kind} model ({arch}): llama-server reprocesses a restored state"
    if kind == "sliding-window" and not (swa is not None and swa.full):
        return f"unsupported: sliding-window attention ({arch}) without --swa-full" + \
            (f" ({swa.why})" if swa is not None else "")
    return "on"


def chat_target(system: str, think: bool) -> Dict[str, Any]:
    """The chat warm-up target for ``system``: the system message plus a one-word user turn (the template then
    renders the system part exactly as a real request's), thinking off unless the profile wants it."""
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "ok"}],
            "template_kwargs": None if think else {"enable_thinking": False}}


def warm_target(cfg: Config, model: str, registered: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """What warm-up sends for ``model``: a prefix registered with the ``prewarm`` RPC (raw ``prompt`` or chat
    ``messages``), else its profile's system prompt (with ``think``), else None."""
    if not cfg.llama.warmup:
        return None
    if registered:
        return registered
    prof = cfg.profile_for(model)
    system = prof.effective_system_prompt() if prof is not None else None
    if not system:
        return None
    return chat_target(system, prof.think)


class Warmer:
    """Warms one freshly started child; counts outcomes across loads."""

    def __init__(self, store: Optional[KVStore]):
        self.store = store
        self.counts: Dict[str, int] = {}
        self.targets: Dict[str, Dict[str, Any]] = {}     # model -> prefix registered with the prewarm RPC

    def load_targets(self) -> None:
        """Prefixes registered before an oracd restart (kept next to the KV cache)."""
        if self.store is None:
            return
        try:
            data = json.loads((self.store.dir / TARGETS).read_text())
            self.targets = {k: v for k, v in data.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            self.targets = {}

    def remember(self, model: str, target: Dict[str, Any]) -> None:
        self.targets[model] = target
        self._persist_targets()

    def forget(self, model: Optional[str] = None) -> List[str]:
        """Drop the prewarm target of ``model`` (None: all of them), here and on disk; the models dropped."""
        dropped = sorted(self.targets) if model is None else [m for m in (model,) if m in self.targets]
        for m in dropped:
            del self.targets[m]
        if dropped:
            self._persist_targets()
        return dropped

    def _persist_targets(self) -> None:
        if self.store is None:
            return
        tmp = self.store.dir / f"tmp-{TARGETS}"
        tmp.write_text(json.dumps(self.targets, sort_keys=True))
        os.replace(tmp, self.store.dir / TARGETS)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    async def warm(self, http: Any, cfg: Config, model: Path, binary: str, cmd: List[str],
                   meta: Dict[str, Any], target: Optional[Dict[str, Any]] = None,
                   explicit: bool = False, name: Optional[str] = None, swa: Optional[SwaPlan] = None) -> WarmReport:
        """Restore or prefill ``target`` (default: ``warm_target``) in every slot; ``explicit``: asked for by
        the prewarm RPC, done even with ``warmup = false``.  ``name``: the model's name when ``model`` is a
        link's resolved target (its profile is the link's); ``swa``: the child's sliding-window cache mode."""
        report = WarmReport(restore=restore_support(cfg, meta, swa) if self.store is not None else "off", swa=swa)
        what = target if explicit else warm_target(cfg, name or model.name, target)
        if what is None:
            self._count("none")
            return report
        t0 = time.monotonic()
        with anyio.move_on_after(cfg.llama.load_timeout):
            try:
                prompt = what["prompt"] if "prompt" in what else \
                    await http.apply_template(what["messages"], what.get("template_kwargs"))
                # the key hashes the model file's head: read in a worker thread, never on the event loop
                key = await anyio.to_thread.run_sync(entry_key, model, binary, cmd, prompt) \
                    if report.restore == "on" else None
                if key is not None and self.store.has(key) and await self._restore(http, cfg, key, prompt, report):
                    report.how = "restored"
                else:
                    await self._prefill(http, cfg, prompt, report)
                    report.how = "prefilled"
                    if key is not None:
                        await self._save(http, key, report)
            except Exception as exc:   # warm-up is an optimisation: never fail a load over it
                self._count("failed")
                log.warning("warm-up failed", model=model.name, error=str(exc))
        report.ms = round((time.monotonic() - t0) * 1000, 1)
        self._count(report.how)
        log.info("slots warmed", model=model.name, how=report.how, slots=cfg.llama.parallel, ms=report.ms,
                 cached_tokens=report.cached_tokens, note=report.note)
        return report

    async def _zero_token(self, http: Any, prompt: str, slot: int) -> Dict[str, Any]:
        return await http.post("/completion", {"prompt": prompt, "n_predict": 0, "cache_prompt": True,
                                               "id_slot": slot, "temperature": 0})

    async def _prefill(self, http: Any, cfg: Config, prompt: str, report: WarmReport) -> None:
        cached: List[int] = [0] * cfg.llama.parallel

        async def one(slot: int) -> None:
            res = await self._zero_token(http, prompt, slot)
            cached[slot] = int(res.get("tokens_evaluated") or 0)
            report.prompt_tokens = cached[slot]

        async with anyio.create_task_group() as tg:
            for slot in range(cfg.llama.parallel):
                tg.start_soon(one, slot)
        report.cached_tokens = cached

    async def _restore(self, http: Any, cfg: Config, key: str, prompt: str, report: WarmReport) -> bool:
        """Restore the entry into every slot and verify each, while a thread checks the file's checksum
        (hashing tens of MB would otherwise add to every load); on any failure erase them all: False."""
        assert self.store is not None
        intact: Dict[str, bool] = {}

        async def check() -> None:
            intact["ok"] = await anyio.to_thread.run_sync(self.store.intact, key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            cached = await self._restore_slots(http, cfg, self.store.name(key), prompt, report)
        if cached is not None and not intact["ok"]:
            self._count("restore_failed")
            report.note = "restore failed: the file does not match the checksum taken when it was saved"
            cached = None
        if cached is not None:
            self.store.used(key)
            report.cached_tokens = cached
            return True
        self.store.discard(key, report.note or "restore failed")
        for slot in range(cfg.llama.parallel):
            try:
                await http.slot_action(slot, "erase")
            except Exception as exc:
                log.warning("slot erase failed", slot=slot, error=str(exc))
        return False

    async def _restore_slots(self, http: Any, cfg: Config, name: str, prompt: str,
                             report: WarmReport) -> Optional[List[int]]:
        """Every slot at once: restore, then a zero-token completion of the prompt must find it in the
        cache.  The tokens each slot reused, or None (``report.note`` says why)."""
        cached: List[Optional[int]] = [None] * cfg.llama.parallel

        async def one(slot: int) -> None:
            try:
                await http.slot_action(slot, "restore", name)
                res = await self._zero_token(http, prompt, slot)
            except Exception as exc:   # a corrupt or truncated file: llama-server refuses it (HTTP 400)
                report.note = report.note or f"restore failed: {exc}"
                return
            total = int(res.get("tokens_evaluated") or 0)
            reused = int((res.get("timings") or {}).get("cache_n") or 0)
            if total == 0 or reused < VERIFY_SHARE * total:
                report.note = report.note or \
                    f"restore did not verify: slot {slot} reused {reused} of {total} prompt tokens"
                return
            cached[slot], report.prompt_tokens = reused, total

        async with anyio.create_task_group() as tg:
            for slot in range(cfg.llama.parallel):
                tg.start_soon(one, slot)
        if any(c is None for c in cached):
            self._count("verify_failed" if (report.note or "").startswith("restore did not") else "restore_failed")
            return None
        return [int(c) for c in cached if c is not None]

    async def _save(self, http: Any, key: str, report: WarmReport) -> None:
        """Save slot 0 as the entry (the checksum is taken in a thread); a failure is reported with its
        reason (no space, I/O error...) in ``report.save``: the next load cannot restore, and status says why."""
        store = self.store
        assert store is not None
        try:
            await http.slot_action(0, "save", store.tmp_name(key))
            await anyio.to_thread.run_sync(store.commit, key)
            self._count("saved")
            report.save = {"ok": True}
        except Exception as exc:
            free = await anyio.to_thread.run_sync(free_bytes, store.dir)
            reason = classify_save_failure(exc, free)
            self._count("save_failed")
            report.save = {"ok": False, "reason": reason, "error": str(exc)[:300], "free_bytes": free,
                           "at": time.time()}
            log.warning("kv cache save failed", key=key, reason=reason, free_bytes=free, error=str(exc))
            await anyio.to_thread.run_sync(store.discard, key, f"save failed ({reason}): {exc}")
