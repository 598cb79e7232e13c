"""How much quantize may write: the per-file cap, a total for all its outputs, and a free-space floor.

Why three: the per-file cap alone let forty outputs from one client fill the
disk.  The total counts only what quantize itself left in the models dir (a
ledger of its outputs, ``.oracd-quantized.json``, so the operator's own models
never count against it), and the floor keeps the filesystem usable for logs,
the KV cache and the OS whatever the caps say.  The smallest of the three
becomes llama-quantize's RLIMIT_FSIZE: a write past it fails like a full disk,
and the temp file is removed.  ``output_limit`` is pure; the ledger is small I/O
(call it from a worker thread).
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

LEDGER = ".oracd-quantized.json"
#: a quantize with less room than this is refused up front (a GGUF header alone is bigger)
MIN_ROOM = 4096


@dataclass(frozen=True)
class QuantizeLimits:
    max_output_bytes: int = 0       # per file (0: none)
    max_total_bytes: int = 0        # all quantize outputs together (0: none)
    min_free_bytes: int = 0         # free space the filesystem keeps (0: none)


def output_limit(limits: QuantizeLimits, used: int, free: Optional[int]) -> Tuple[int, str]:
    """(most bytes this quantize may write, the setting that binds); (0, "") means no limit.

    ``used``: bytes quantize's earlier outputs hold (the one being overwritten excluded);
    ``free``: bytes free on the models dir's filesystem (None: unknown).
    """
    candidates = []
    if limits.max_output_bytes:
        candidates.append((limits.max_output_bytes, "llama.quantize_max_output_bytes"))
    if limits.max_total_bytes:
        candidates.append((max(0, limits.max_total_bytes - used), "llama.quantize_max_total_bytes"))
    if limits.min_free_bytes and free is not None:
        candidates.append((max(0, free - limits.min_free_bytes), "llama.quantize_min_free_bytes"))
    return min(candidates) if candidates else (0, "")


class Ledger:
    """The names of the models quantize wrote into ``directory`` (its primary models dir)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LEDGER

    def names(self) -> List[str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [n for n in data if isinstance(n, str) and "/" not in n] if isinstance(data, list) else []

    def used(self, exclude: Iterable[str] = ()) -> int:
        """Bytes the listed outputs hold now (regular files only; removed ones count nothing)."""
        skip, total = set(exclude), 0
        for name in self.names():
            if name in skip:
                continue
            try:
                st = os.lstat(self.path.parent / name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
        return total

    def add(self, name: str) -> None:
        names = [n for n in self.names() if (self.path.parent / n).exists() and n != name] + [name]
        tmp = self.path.with_name(f"{LEDGER}.tmp")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, self.path)


def free_bytes(directory: Path) -> Optional[int]:
    """Bytes an unprivileged writer may still use on ``directory``'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
