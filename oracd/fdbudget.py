"""How many file descriptors oracd's own limits can use, against RLIMIT_NOFILE: a pure budget, then one setrlimit.

Why: every client connection is a descriptor, and so are llama-server's kept-alive
connections, its pipes, model files being read, the log and the listening socket.
The default soft limit (1024) is below what ``max_connections = 256`` plus the
rest can reach on a busy box only in bad moments, and a unit started with a low
limit fails in the accept loop, under load.  At start oracd raises the soft limit
to the hard limit (no privilege needed) and warns, naming the figures, when even
that is below the budget.  ``budget`` and ``plan`` are pure (unit-tested).
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .config import Config

BASE = 32               # stdio, the listening socket and its lock, the pidfile, the event loop's epoll and pipes,
                        # signal fds, /proc reads, a to_thread worker's open file
HTTP_RESERVE = 64       # named reserve for the HTTP API listener and its clients (oracd/http, to come)
LOGS = 4                # orac.log, plus a rotation or a reopen in progress
MODEL_FILES = 8         # GGUF headers read for list_models/loads, KV cache entries hashed, quantize's pipes
CHILD_EXTRA = 8         # llama-server: the probe connection, stdout/stderr pipes, the pidfd, a restart overlapping
EXTRA_SERVERS = 16      # start_server's extra llama-servers: their pipes (a few per server)
INFINITE_CAP = 1 << 20  # RLIM_INFINITY cannot be a soft limit for NOFILE (Linux caps it at fs.nr_open)


def budget(cfg: Config) -> Dict[str, int]:
    """What each part may hold open at its configured limits."""
    llama = cfg.llama
    return {
        "connections": cfg.server.max_connections + 1,          # +1: the one refused with Busy
        "http_reserve": HTTP_RESERVE,
        "llama_server": llama.parallel + CHILD_EXTRA + len(llama.rpc_workers),
        "extra_servers": EXTRA_SERVERS,
        "model_files": MODEL_FILES,
        "logs": LOGS,
        "base": BASE,
    }


@dataclass(frozen=True)
class Plan:
    need: int
    soft: int                 # the soft limit found
    hard: int
    new_soft: Optional[int]   # what to raise the soft limit to (None: leave it)
    fits: bool                # the (raised) soft limit covers the budget


def plan(need: int, soft: int, hard: int) -> Plan:
    """Raise soft to hard whenever hard is higher (RLIM_INFINITY: to INFINITE_CAP, or need if higher)."""
    infinite = hard == resource.RLIM_INFINITY or hard < 0
    target = max(INFINITE_CAP, need) if infinite else hard
    cur = INFINITE_CAP if soft == resource.RLIM_INFINITY or soft < 0 else soft
    new_soft = target if target > cur else None
    return Plan(need, soft, hard, new_soft, (new_soft or cur) >= need)


def apply(cfg: Config, log: Any) -> Dict[str, Any]:
    """At start: raise the soft limit when possible, log the figures, warn when they do not fit.
    What status.fds reports."""
    parts = budget(cfg)
    need = sum(parts.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    p = plan(need, soft, hard)
    limit = soft
    if p.new_soft is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (p.new_soft, hard))
            limit = p.new_soft
        except (OSError, ValueError) as exc:
            log.warning("could not raise the file descriptor limit", soft=soft, hard=hard, to=p.new_soft,
                        error=str(exc))
    fits = limit >= need
    if fits:
        log.info("file descriptor limit", limit=limit, needed=need, was=soft, hard=hard)
    else:
        log.warning("file descriptor limit below what oracd's limits can use", limit=limit, needed=need,
                    hard=hard, parts=parts,
                    hint="raise LimitNOFILE in the unit (or ulimit -n), or lower server.max_connections; "
                         "when descriptors run out oracd pauses accepting (accept paused) and carries on")
    return {"limit": limit, "needed": need, "fits": fits}
