"""llama-server's pidfile in oracd's private runtime dir, and the orphan it points to after a crash of oracd.

A SIGKILLed oracd cannot stop its child; the next oracd finds it by pidfile
and stops it if, and only if, the process has the start time recorded with its
pid AND its command line names our binary and our runtime or models dir (a
reused pid of an unrelated process is left alone).  Only that one pid is
signalled, never a process group: a pidfile planted by someone who can write
the runtime dir could otherwise name any group to kill.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional, Sequence, Tuple

import psutil

from ..config import Config
from .process import KILL_WAIT

PIDFILE = "llama-server.pid"


def prepare_runtime_dir(cfg: Config) -> Path:
    """Create the private runtime dir (0700) that holds llama-server's socket and pidfile."""
    d = cfg.runtime_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


#: how far a start time may differ between two reads of the same process (seconds)
START_TOLERANCE = 0.05


def write_pidfile(cfg: Config, pid: int) -> None:
    """``<pid> <start time>``: the start time tells the child from a later process that got its pid."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = 0.0     # already gone: nothing will match it
    path = cfg.runtime_dir / PIDFILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {started!r}\n")
    tmp.replace(path)


def parse_pidfile(text: str) -> Optional[Tuple[int, float]]:
    """(pid, start time) from a pidfile, or None (malformed, or an old file with no start time)."""
    parts = text.split()
    if len(parts) != 2:
        return None
    try:
        pid, started = int(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (pid, started) if pid > 1 and started > 0 else None


def is_our_orphan(recorded_start: float, start: float, cmdline: Sequence[str], binary_name: str,
                  our_dirs: Sequence[str]) -> bool:
    """Pure: is the process at the recorded pid the llama-server we started?"""
    if abs(start - recorded_start) > START_TOLERANCE or not cmdline:
        return False
    joined = " ".join(cmdline)
    return Path(cmdline[0]).name == binary_name and any(d in joined for d in our_dirs)


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
        entry = parse_pidfile(path.read_text())
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    stopped = None
    try:
        if entry is not None:
            pid, recorded = entry
            proc = psutil.Process(pid)
            dirs = [str(cfg.runtime_dir), *(str(d) for d in cfg.models_dirs)]
            if is_our_orphan(recorded, proc.create_time(), proc.cmdline(), binary_name, dirs):
                # psutil signals only if the pid still is this process (it re-checks the start time)
                for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
                    proc.send_signal(sig)
                    try:
                        proc.wait(seconds)
                        break
                    except psutil.TimeoutExpired:
                        continue
                stopped = pid
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    path.unlink(missing_ok=True)
    return stopped
