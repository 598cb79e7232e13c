"""The memory budget: what a model needs (from its GGUF header) against what the box can give, and OOM kills.

Why check before a load: a model that cannot fit would stop the warm model
first, then fail, leaving nothing serving.  So a load that cannot fit is refused
up front with both numbers, and the warm model keeps serving.

What a load needs (``estimate``, pure): the weights (every tensor the header
declares), the KV cache for ``ctx_size`` (llama-server's ``-c`` is the total
its ``parallel`` slots share) at the KV cache type, a compute margin, and the
host prompt cache (``cache_ram_mb``, llama-server's ``--cache-ram``).  Sliding-
window layers hold only their window, as llama.cpp lays them out: counting them
at full context would refuse a Gemma 3 that fits with room to spare.

What the box can give (``available``): ``MemAvailable``, and, under systemd or
a container, the cgroup's ``memory.max`` minus ``memory.current``; the smaller
wins.  On a Jetson, CPU and GPU share that memory, so it is the whole budget.
Memory a child about to be replaced frees counts as available.

Opt-in ``fit_ctx`` (``fit``, pure): when the configured ``ctx_size`` does not
fit, use the largest context (a multiple of 256 tokens, at least 256 per slot)
that does, and say so in ``status.child.ctx_fit``; only the KV cache grows with it.

A kernel OOM kill shows up as a SIGKILL we did not send while the cgroup's
``memory.events`` ``oom_kill`` count rose (``oom_kills``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

from oracd_protocol.errors import ModelLoadFailed

from .child.command import BATCH_INVARIANT_ARGS
from .logs import get as get_logger
from .models.gguf import header

if TYPE_CHECKING:
    from .config import Config

log = get_logger("oracd.memory")

MiB = 2 ** 20
CTX_STEP = 256
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
             "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
COMPUTE_MIN = 64 * MiB
COMPUTE_SHARE = 0.05
#: Without flash attention llama-server's compute buffer holds the attention scores of one ubatch against the
#: whole context: measured (``-lv 4``, "compute buffer size") 26/86/166 MiB for SmolLM2 (9 heads) and
#: 22/52/92 MiB for Gemma 3 (4 heads) at 2048/8192/16384 tokens, ubatch 512: at most 2.75 bytes per
#: (context token x ubatch token x head), plus a few MiB.  With flash attention: 18 MiB at 8192.
NO_FA_BYTES = 2.75
NO_FA_BASE = 8 * MiB


@dataclass(frozen=True)
class Footprint:
    weights: int
    kv: int
    compute: int
    host_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.host_cache

    def describe(self) -> str:
        return (f"weights {self.weights // MiB} MiB, KV cache {self.kv // MiB} MiB, compute {self.compute // MiB} MiB, "
                f"host prompt cache {self.host_cache // MiB} MiB")


def flag_value(args: Sequence[str], *names: str) -> Optional[str]:
    """The value after the last of ``names`` on a command line (the one llama.cpp keeps), or None."""
    args = list(args)
    value = None
    for i, a in enumerate(args[:-1]):
        if a in names:
            value = args[i + 1]
    return value


def kv_types(extra_args: Sequence[str]) -> Tuple[str, str]:
    """The K and V cache types llama-server will use (``-ctk``/``-ctv`` in extra_args; f16 by default)."""
    return (flag_value(extra_args, "-ctk", "--cache-type-k") or "f16",
            flag_value(extra_args, "-ctv", "--cache-type-v") or "f16")


#: llama.cpp's sliding-window layer patterns by architecture, when the GGUF carries none
#: (``<arch>.attention.sliding_window_pattern``): every p-th layer keeps the whole context, the others a window.
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2}


def full_attention_layers(meta: Dict[str, Any]) -> int:
    """How many layers keep the whole context in their KV cache (the rest keep a sliding window)."""
    layers = int(meta.get("block_count") or 0)
    window = int(meta.get("sliding_window") or 0) if isinstance(meta.get("sliding_window"), int) else 0
    pattern = meta.get("sliding_window_pattern")
    if window <= 0 and meta.get("architecture") != "gemma2":     # gemma2 has a 4096 window by default
        return layers
    if isinstance(pattern, list) and len(pattern) >= layers:
        return sum(1 for flag in pattern[:layers] if not flag)
    if not isinstance(pattern, int) or isinstance(pattern, bool):
        pattern = SWA_PATTERNS.get(str(meta.get("architecture")))
        if pattern is None:
            return layers                                         # unknown: assume the worst
    return 0 if pattern == 0 else sum(1 for il in range(layers) if il % pattern == pattern - 1)


def _has(extra_args: Sequence[str], *flags: str) -> bool:
    return any(a in flags for a in extra_args)


def flash_attn_off(extra_args: Sequence[str]) -> bool:
    """Is flash attention off on this command line (``-fa off``; the last one wins, as llama.cpp reads it)?"""
    return flag_value(extra_args, "-fa", "--flash-attn") == "off"


def estimate(meta: Dict[str, Any], ctx_size: int, extra_args: Sequence[str], cache_ram_mb: int,
             parallel: int = 1, ubatch: int = 0) -> Footprint:
    """What loading a model with these settings takes, from its header (``models.gguf``).

    The KV cache is laid out as llama.cpp does it: full-attention layers hold ``ctx_size`` positions
    (shared by the ``parallel`` slots); sliding-window layers hold, per slot, the window plus one
    ubatch, padded to 256 (``llama-kv-cache-iswa.cpp``), unless ``--swa-full``.
    """
    weights = int(meta.get("weights_bytes") or 0)
    layers = int(meta.get("block_count") or 0)
    heads = int(meta.get("head_count") or 0) or 1
    heads_kv = meta.get("head_count_kv")
    heads_kv = int(heads_kv) if isinstance(heads_kv, int) and heads_kv > 0 else heads
    embd = int(meta.get("embedding_length") or 0)
    k_len = int(meta.get("key_length") or (embd // heads if heads else 0))
    v_len = int(meta.get("value_length") or k_len)
    n_ctx = ctx_size or int(meta.get("context_length") or 0)
    k_type, v_type = kv_types(extra_args)
    per_position = heads_kv * (k_len * _KV_BYTES.get(k_type, 2.0) + v_len * _KV_BYTES.get(v_type, 2.0))
    full = full_attention_layers(meta)
    swa_cells = n_ctx
    if full < layers and not _has(extra_args, "--swa-full"):
        window = int(meta.get("sliding_window") or 4096)
        unified = _has(extra_args, "-kvu", "--kv-unified")
        streams = 1 if unified else max(1, parallel)
        base = n_ctx // streams
        want = window * (max(1, parallel) if unified else 1) + (ubatch or 512)
        swa_cells = streams * -(-min(base, want) // CTX_STEP) * CTX_STEP
    kv = int(per_position * (full * n_ctx + (layers - full) * swa_cells))
    compute = max(COMPUTE_MIN, int(weights * COMPUTE_SHARE))
    if flash_attn_off(extra_args):
        compute = max(compute, int(n_ctx * (ubatch or 512) * heads * NO_FA_BYTES) + NO_FA_BASE)
    return Footprint(weights, kv, compute, max(0, cache_ram_mb) * MiB)


@dataclass(frozen=True)
class Verdict:
    """One memory check: what the load needs, at the context it would use, against the room there is."""
    model: str
    footprint: Footprint      # at ``ctx`` (or at the configured context when nothing fits)
    margin: int
    room: int                 # bytes the load can use (free memory plus what the replaced child frees)
    configured_ctx: int
    ctx: Optional[int]        # the context to load with: configured, or shrunk by fit_ctx; None: does not fit
    fit_min: Optional[int] = None   # with fit_ctx: the smallest context it would have shrunk to

    @property
    def need(self) -> int:
        return self.footprint.total + self.margin

    @property
    def shrunk(self) -> bool:
        return self.ctx is not None and self.ctx != self.configured_ctx

    def fits_or_raise(self, source: str, freed: int = 0) -> "Verdict":
        """This verdict when the load fits; else raises the refusal every load path shares (``source``: where
        the free-memory figure came from; ``freed``: bytes of it that the replaced child frees)."""
        if self.ctx is None:
            raise self.refusal(source, freed)
        return self

    def refusal(self, source: str, freed: int = 0) -> ModelLoadFailed:
        """The one error for a load that cannot fit: both numbers, where they come from, and why."""
        fp = self.footprint
        return ModelLoadFailed(
            f"cannot load {self.model}: it needs about {self.need // MiB} MiB ({fp.describe()}, margin "
            f"{self.margin // MiB} MiB) but only {self.room // MiB} MiB is available ({source}"
            + (f", including {freed // MiB} MiB the current model frees" if freed else "") + ")"
            + (f"; fit_ctx found no context of at least {self.fit_min} tokens that fits" if self.fit_min else ""),
            {"reason": "insufficient_memory", "required_bytes": self.need, "available_bytes": self.room,
             "footprint": {"weights": fp.weights, "kv": fp.kv, "compute": fp.compute, "host_cache": fp.host_cache}})

    def as_dict(self) -> Dict[str, Any]:
        d = {"model": self.model, "required_bytes": self.need, "available_bytes": self.room}
        if self.shrunk:
            d.update(ctx_size=self.ctx, configured_ctx_size=self.configured_ctx)
        return d


def judge(model: str, meta: Dict[str, Any], ctx_size: int, extra_args: Sequence[str], cache_ram_mb: int,
          margin: int, room: int, parallel: int, fit_ctx: bool, ubatch: int = 0) -> Verdict:
    """Does ``model`` fit in ``room`` bytes with ``margin`` to spare, and with which context?"""
    def footprint(ctx: int) -> Footprint:
        return estimate(meta, ctx, extra_args, cache_ram_mb, parallel, ubatch)

    ctx: Optional[int] = ctx_size
    if fit_ctx:
        wanted = ctx_size or int(meta.get("context_length") or 0)
        ctx = fit(footprint, wanted, room - margin, parallel)
        if ctx == wanted:
            ctx = ctx_size                   # the configured context fits (0: the model's own)
    fp = footprint(ctx if ctx is not None else ctx_size)
    if not fit_ctx and fp.total + margin > room:
        ctx = None
    return Verdict(model, fp, margin, room, ctx_size, ctx, CTX_STEP * max(1, parallel) if fit_ctx else None)


def memory_verdict(cfg: "Config", model: str, meta: Dict[str, Any], room: int, swa_full: bool = False,
                   fit_ctx: Optional[bool] = None) -> Verdict:
    """``judge`` with ``model``'s options from the config (its profile's, else ``[llama]``'s); ``swa_full``:
    oracd adds ``--swa-full`` (``child/swa.py``); ``fit_ctx`` None: as configured."""
    opt = lambda key: cfg.option_for(model, key)   # noqa: E731
    extra = tuple(opt("extra_args"))
    if cfg.batch_invariant_for(model):             # its flags come first; extra_args may override them
        extra = (*BATCH_INVARIANT_ARGS, *extra)
    if swa_full and "--swa-full" not in extra:
        extra += ("--swa-full",)
    return judge(model, meta, opt("ctx_size"), extra, opt("cache_ram_mb"), cfg.llama.memory_margin_mb * MiB, room,
                 cfg.llama.parallel, cfg.llama.fit_ctx if fit_ctx is None else fit_ctx, opt("ubatch_size"))


def fit(footprint: Callable[[int], Footprint], wanted: int, budget: int, parallel: int) -> Optional[int]:
    """The context to load with so that ``footprint(ctx)`` fits ``budget`` bytes: ``wanted`` when it fits,
    else the largest multiple of 256 tokens (at least 256 per slot) that does; None when not even that fits.
    A binary search: the footprint grows with the context, but not linearly (sliding-window layers)."""
    if footprint(wanted).total <= budget:
        return wanted
    lo, hi = max(1, parallel), wanted // CTX_STEP            # in steps of 256 tokens
    if hi < lo or footprint(lo * CTX_STEP).total > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if footprint(mid * CTX_STEP).total <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_STEP


def context_for_start(cfg: "Config", name: str, path: Path,
                      cgroup_dir: Optional[Path], swa_full: bool = False) -> Optional[Dict[str, Any]]:
    """With ``fit_ctx``, at llama-server's start (the old child is gone by then): the smaller context this
    load must use to fit the memory there is now (``Verdict.as_dict``), or None for the configured one.
    Nothing fits: the load fails, named.  Blocking (reads /proc and the header): run it in a thread."""
    if not (cfg.llama.fit_ctx and cfg.llama.memory_check):
        return None
    room, source = available(cgroup_dir)
    meta = header(path)
    if room is None or not meta.get("valid"):
        return None
    v = memory_verdict(cfg, name, meta, room, swa_full).fits_or_raise(source)
    if not v.shrunk:
        return None
    log.warning("context shrunk to fit memory", model=name, ctx_size=v.ctx, configured=v.configured_ctx,
                available_mb=room // MiB, source=source)
    return v.as_dict()


# ---------------------------------------------------------------------- the box
def own_cgroup_dir() -> Optional[Path]:
    """This process's cgroup v2 directory (systemd puts oracd and its child in one), if there is one."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                d = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                return d if d.is_dir() else None
    except OSError:
        pass
    return None


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text) if text.isdigit() else None


def mem_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available(cgroup_dir: Optional[Path]) -> Tuple[Optional[int], str]:
    """(bytes a new load can use, where the figure comes from)."""
    avail, source = mem_available(), "MemAvailable"
    if cgroup_dir is not None:
        limit, current = _read_int(cgroup_dir / "memory.max"), _read_int(cgroup_dir / "memory.current")
        if limit is not None and current is not None:
            room = max(0, limit - current)
            if avail is None or room < avail:
                avail, source = room, f"cgroup memory.max {limit // MiB} MiB minus memory.current {current // MiB} MiB"
    return avail, source


def oom_kills(cgroup_dir: Optional[Path]) -> Optional[int]:
    """The cgroup's ``oom_kill`` count from memory.events (None: unknown)."""
    if cgroup_dir is None:
        return None
    try:
        for line in (cgroup_dir / "memory.events").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None
