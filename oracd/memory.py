"""The memory budget: what a model needs (from its GGUF header) against what the box can give, and OOM kills.

Why check before a load: a model that cannot fit used to stop the warm model
first, then fail, leaving nothing serving.  Now a load that cannot fit is refused
up front with both numbers, and the warm model keeps serving.

What a load needs (``estimate``, pure): the weights (every tensor the header
declares), the KV cache for ``ctx_size`` (llama-server's ``-c`` is the total
its ``parallel`` slots share) at the KV cache type, a compute margin, and the
host prompt cache (``cache_ram_mb``, llama-server's ``--cache-ram``).

What the box can give (``available``): ``MemAvailable``, and, under systemd or
a container, the cgroup's ``memory.max`` minus ``memory.current``; the smaller
wins.  On a Jetson, CPU and GPU share that memory, so it is the whole budget.
Memory a child about to be replaced frees counts as available.

A kernel OOM kill shows up as a SIGKILL we did not send while the cgroup's
``memory.events`` ``oom_kill`` count rose (``oom_kills``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

MiB = 2 ** 20
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
             "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
COMPUTE_MIN = 64 * MiB
COMPUTE_SHARE = 0.05


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


def kv_types(extra_args: Sequence[str]) -> Tuple[str, str]:
    """The K and V cache types llama-server will use (``-ctk``/``-ctv`` in extra_args; f16 by default)."""
    k = v = "f16"
    args = list(extra_args)
    for i, a in enumerate(args[:-1]):
        if a in ("-ctk", "--cache-type-k"):
            k = args[i + 1]
        elif a in ("-ctv", "--cache-type-v"):
            v = args[i + 1]
    return k, v


def estimate(meta: Dict[str, Any], ctx_size: int, extra_args: Sequence[str], cache_ram_mb: int) -> Footprint:
    """What loading a model with these settings takes, from its header (``models.gguf``)."""
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
    kv = int(layers * n_ctx * heads_kv * (k_len * _KV_BYTES.get(k_type, 2.0) + v_len * _KV_BYTES.get(v_type, 2.0)))
    compute = max(COMPUTE_MIN, int(weights * COMPUTE_SHARE))
    return Footprint(weights, kv, compute, max(0, cache_ram_mb) * MiB)


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
