"""Whether llama-server keeps the whole context in sliding-window layers (``--swa-full``): the price of warm restore.

Why: with the window-sized cache (llama.cpp's default), a restored slot of a
sliding-window model (Gemma 2/3, ...) is reprocessed in full on the next request
(llama-server needs a context checkpoint there, and none survives a restore).
With ``--swa-full`` the restore holds, at the cost of the full context in every
layer.  So, when warm restore would be used (``plan``, pure):

- ``swa_full = "auto"`` (default): add ``--swa-full`` when the load fits the
  memory there is with it counted; otherwise keep the window and prefill on
  every load, and say why with both figures;
- ``true`` / ``false`` (``[llama]`` or the model's profile) force either choice;
  ``--swa-full`` in ``extra_args`` counts as ``true``.

Recurrent and hybrid models (Mamba, RWKV, Jamba, LFM2, Qwen3-Next, ...): the
pinned llama-server saves and restores their state, but a restored prefix can
only be extended, not re-read: asking for the same prompt again (which is how
a restore is verified) reprocesses it all, and no flag changes that.  Warm
restore marks them unsupported up front (``memory_kind``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from ..memory import MiB, available, full_attention_layers, memory_verdict
from ..models.gguf import header

if TYPE_CHECKING:
    from ..config import Config

SWA_FULL = "--swa-full"
#: llama.cpp's llm_arch_is_recurrent / llm_arch_is_hybrid (src/llama-arch.cpp of the pinned build)
RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID = frozenset({"jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
                    "nemotron_h_moe", "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35",
                    "qwen35moe", "qwen4exp", "deepseek4", "minimax-01"})


def memory_kind(meta: Dict[str, Any]) -> str:
    """How the model keeps its context: "recurrent", "hybrid", "sliding-window" or "full"."""
    arch = str(meta.get("architecture") or "")
    if arch in RECURRENT:
        return "recurrent"
    if arch in HYBRID:
        return "hybrid"
    window = meta.get("sliding_window")
    if (isinstance(window, int) and window > 0) or full_attention_layers(meta) < int(meta.get("block_count") or 0):
        return "sliding-window"
    return "full"


@dataclass(frozen=True)
class SwaPlan:
    """The sliding-window cache a load uses, and why (status.child.warm.swa)."""
    full: bool                        # llama-server runs with --swa-full
    setting: Union[str, bool]         # "auto", True or False, as configured for the model
    why: str
    need_full: Optional[int] = None   # bytes the load needs with --swa-full (None: not estimated)
    need_window: Optional[int] = None
    available: Optional[int] = None

    @property
    def mode(self) -> str:
        return "full" if self.full else "window"

    def as_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "setting": self.setting, "why": self.why, "need_full_bytes": self.need_full,
                "need_window_bytes": self.need_window, "available_bytes": self.available}


def _mib(n: int) -> str:
    return f"{n // MiB} MiB"


def choose(setting: Union[str, bool], in_extra_args: bool, restore_wanted: bool,
           need_full: Optional[int], need_window: Optional[int], room: Optional[int]) -> SwaPlan:
    """The decision for a sliding-window model; needs include the memory margin, ``room`` None: not checked."""
    figures = dict(need_full=need_full, need_window=need_window, available=room)
    if in_extra_args:
        return SwaPlan(True, setting, "--swa-full is in extra_args", **figures)
    if setting is True:
        return SwaPlan(True, setting, "swa_full = true", **figures)
    if setting is False:
        return SwaPlan(False, setting, "swa_full = false", **figures)
    if not restore_wanted:
        return SwaPlan(False, setting, "warm restore is not used for this model (warm_restore, warmup or no "
                                       "system prompt to warm)", **figures)
    if room is None or need_full is None:
        return SwaPlan(True, setting, "for warm restore (memory not checked)", **figures)
    if need_full <= room:
        return SwaPlan(True, setting, f"for warm restore: fits with it ({_mib(need_full)} needed with it, "
                                      f"{_mib(need_window or 0)} without, {_mib(room)} available)", **figures)
    return SwaPlan(False, setting, f"does not fit with --swa-full: {_mib(need_full)} needed with it, "
                                   f"{_mib(need_window or 0)} without, {_mib(room)} available; "
                                   f"prefills on every load", **figures)


def plan(cfg: "Config", model: str, meta: Dict[str, Any], room: Optional[int],
         restore_wanted: bool) -> Optional[SwaPlan]:
    """``choose`` for ``model`` with its options from the config; None when it has no sliding-window layers
    (or its header cannot be read).  ``room``: bytes the load may use (None: the memory check is off)."""
    if not meta.get("valid", True) or memory_kind(meta) != "sliding-window":
        return None
    extra = tuple(cfg.option_for(model, "extra_args"))
    need_full = need_window = None
    if room is not None and cfg.llama.memory_check:
        # at the configured context: fit_ctx may shrink it later, for the window-sized cache only
        need_full = memory_verdict(cfg, model, meta, room, swa_full=True, fit_ctx=False).need
        need_window = memory_verdict(cfg, model, meta, room, swa_full=False, fit_ctx=False).need
    else:
        room = None
    return choose(cfg.option_for(model, "swa_full"), SWA_FULL in extra, restore_wanted, need_full, need_window, room)


def plan_for_start(cfg: "Config", model: str, path: Path, cgroup_dir: Optional[Path],
                   restore_wanted: bool) -> Optional[SwaPlan]:
    """``plan`` with the memory there is now (the old child is gone).  Blocking: run it in a thread."""
    try:
        meta = header(path)
    except OSError:              # gone since it was resolved: llama-server's own load error says so
        return None
    room = available(cgroup_dir)[0] if cfg.llama.memory_check else None
    return plan(cfg, model, meta, room, restore_wanted)
