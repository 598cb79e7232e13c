"""A short CPU time slice for oracd's event loop thread, so a token from llama-server is relayed at once.

Why: on a small box llama-server's threads keep every core busy while they decode the next token.  When
a chunk arrives, oracd's loop wakes to relay it, and with the kernel's default slice (1.4 ms on a 2-core
VM) it may wait for a decode thread's slice to end first: the first streamed token reached an HTTP
client ~1.5 ms after it reached one talking to llama-server directly.  Linux 6.12's EEVDF scheduler lets
a task ask for a shorter slice (``sched_setattr`` ``sched_runtime`` for SCHED_OTHER); a woken task with a
shorter slice preempts the running one.  oracd's loop only ever runs briefly, so its own throughput is
unchanged, and the decode threads lose nothing but the moments the loop already needed.

``SCHED_FLAG_RESET_ON_FORK``: llama-server, llama-quantize and oracd's worker threads get the default
slice, not this one.  Best effort: an older kernel ignores the field (JetPack's 5.15 too); a refusal is
logged once and changes nothing else.  ``[server] loop_slice_us``: 0 leaves the kernel's default.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Any, Optional

from .config import Config

#: sched_setattr(2)'s number, per architecture (no libc wrapper in glibc 2.36)
SYSCALLS = {"x86_64": 314, "aarch64": 274}
SCHED_OTHER = 0
SCHED_FLAG_RESET_ON_FORK = 0x01
_ATTR = struct.Struct("IIQiIQQQII")     # struct sched_attr, SCHED_ATTR_SIZE_VER1: 56 bytes


def attr(slice_ns: int, nice: int = 0) -> bytes:
    """struct sched_attr for SCHED_OTHER at ``nice`` (sched_setattr sets it too: the current one is kept)
    with ``slice_ns`` as its slice, reset on fork.  Pure."""
    return _ATTR.pack(_ATTR.size, SCHED_OTHER, SCHED_FLAG_RESET_ON_FORK, nice, 0, slice_ns, 0, 0, 0, 0)


def apply(cfg: Config, log: Any, machine: Optional[str] = None) -> Optional[int]:
    """Ask for ``[server] loop_slice_us`` on the calling thread (the event loop's).  Returns the slice set, in
    ns, or None (off, an architecture without the table entry, or refused: logged)."""
    us = cfg.server.loop_slice_us
    nr = SYSCALLS.get(machine or platform.machine())
    if not us or nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr(us * 1000, os.nice(0)), _ATTR.size)
    if libc.syscall(nr, 0, buf, 0) != 0:
        err = ctypes.get_errno()
        log.warning("the event loop keeps the kernel's default time slice", loop_slice_us=us,
                    error=os.strerror(err))
        return None
    return us * 1000
