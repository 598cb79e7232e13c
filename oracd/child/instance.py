"""One running llama-server: its process, endpoint, HTTP client, and why we killed it (if we did).

Its output goes to oracd's log line by line, tagged ``source=llama-server``
with llama.cpp's own level, except its per-request slot and server chatter
(``child_line_level``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Deque, Optional, Tuple

import anyio
import psutil

from ..logs import get as get_logger
from .http import LlamaEndpoint, LlamaHTTP
from .process import ManagedProcess

child_log = get_logger("llama-server")
_LLAMA_LEVELS = {"W ": logging.WARNING, "E ": logging.ERROR, "D ": logging.DEBUG}


class Child:
    """One running llama-server: its process, endpoint, HTTP client, and why we killed it (if we did)."""

    def __init__(self, proc: ManagedProcess, model: str, endpoint: LlamaEndpoint, parallel: int,
                 rpc_workers: Tuple[str, ...], path: Any = None, binary: str = "", cmd: Any = ()):
        self.proc = proc
        self.path = path                      # the model file, the binary and the command line: what a
        self.binary = binary                  # saved KV cache depends on (warm-up's key)
        self.cmd = list(cmd)
        self.pid = proc.pid
        self.model = model
        self.endpoint = endpoint
        self.http = LlamaHTTP(endpoint, max_connections=parallel)
        self.rpc_workers = rpc_workers        # the --rpc workers it was started with
        self.started_at = time.monotonic()
        self.ready_at: Optional[float] = None
        self.killed_for: Optional[str] = None  # "hang" / "stop" / "rpc_worker_lost" when we killed it ourselves
        self.ps: Optional[psutil.Process] = None
        self.oom_baseline: Optional[int] = None   # the cgroup's oom_kill count when it started
        self.wedge: Any = None                    # its WedgeDetector (5xx streaks on generations)
        self.watchdog: Any = None                 # its Watchdog (probes), from READY on
        self.ctx_fit: Optional[dict] = None       # set when fit_ctx started it with a smaller context
        self.swa: Any = None                      # its sliding-window cache mode (swa.SwaPlan), if it has one
        self.batch_invariant: Optional[bool] = False   # started with command.BATCH_INVARIANT_ARGS (None: lacked)

    @property
    def exited(self) -> anyio.Event:
        return self.proc.exited

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    @property
    def tail(self) -> Deque[str]:
        return self.proc.tail

    def gone(self) -> bool:
        """Has the process died, even if the reaper has not collected it yet (a zombie)?  A connection that
        broke because llama-server died is a crash, not a wedge."""
        if self.returncode is not None:
            return True
        ps = self.psutil()
        try:
            return ps is None or ps.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def psutil(self) -> Optional[psutil.Process]:
        if self.ps is None:
            try:
                self.ps = psutil.Process(self.pid)
            except psutil.Error:
                return None
        return self.ps


def child_line_level(line: str) -> int:
    """The log level of one llama-server line: llama.cpp's own ("0.00.177.025 W msg"), but its informational
    ``slot ...`` / ``srv ...`` lines are debug.

    Why: llama-server writes about ten of those per request (slot chosen, prompt and eval timings, release).
    oracd logs one line per request itself, and formatting and writing ten more took about a quarter of
    oracd's CPU per HTTP request, on the event loop, right as the answer arrived.  Likewise the two warnings
    of a whole-prompt cache hit.  They stay in the child's
    output tail (shown with a crash) and in the log with ``server.log_level = "debug"``.
    """
    level = _LLAMA_LEVELS.get(line[13:15], logging.INFO)
    if level == logging.INFO and line[15:20] in _CHATTER:
        return logging.DEBUG
    if level == logging.WARNING and line[15:20] == "slot " and any(w in line for w in _CACHE_HIT):
        return logging.DEBUG
    return level


_CHATTER = ("slot ", "srv  ")
# the two warnings llama-server writes on every request whose whole prompt is cached: it evaluates the last
# prompt token again (normal operation, nothing for an operator to do)
_CACHE_HIT = ("need to evaluate at least 1 token for each active slot", "n_past was set to")


def log_child_line(pid: int, stream: str, line: str) -> None:
    child_log.log(child_line_level(line), line, source="llama-server", stream=stream, pid=pid)
