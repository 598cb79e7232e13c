"""llama-server's pidfile in oracd's private runtime dir, and the orphan it points to after a crash of oracd.

A SIGKILLed oracd cannot stop its child; the next oracd finds it by pidfile
and stops it if, and only if, its command line names our binary and our
runtime or models dir (a reused pid of an unrelated process is left alone).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import psutil

from ..config import Config
from .process import stop_group_sync

PIDFILE = "llama-server.pid"


def prepare_runtime_dir(cfg: Config) -> Path:
    """Create the private runtime dir (0700) that holds llama-server's socket and pidfile."""
    d = cfg.runtime_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def write_pidfile(cfg: Config, pid: int) -> None:
    path = cfg.runtime_dir / PIDFILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def remove_pidfile(cfg: Config) -> None:
    try:
        (cfg.runtime_dir / PIDFILE).unlink()
    except FileNotFoundError:
        pass


def reap_orphan(cfg: Config, binary_name: str, grace: float) -> Optional[int]:
    """Stop a llama-server left by a previous oracd (pidfile + matching command line).

    Returns the pid stopped, or None.  A pid that was reused by an unrelated
    process is left alone: we only kill it if its command line names our binary
    and our runtime dir.
    """
    path = cfg.runtime_dir / PIDFILE
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    stopped = None
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        joined = " ".join(cmdline)
        ours = bool(cmdline) and Path(cmdline[0]).name == binary_name and (
            str(cfg.runtime_dir) in joined or str(cfg.llama.models_dir) in joined)
        if ours:
            stop_group_sync(pid, proc.wait, grace, (psutil.TimeoutExpired,))
            stopped = pid
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    path.unlink(missing_ok=True)
    return stopped
