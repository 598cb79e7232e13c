"""Child processes, done once: find the binary, spawn in its own session, drain output, stop the group.

Every process oracd starts (the warm llama-server, extra llama-servers for the
old ``start_server()``, llama-quantize) goes through ``ManagedProcess``:

- output is drained line by line in sibling tasks (a full pipe would block the
  child), each line handed to ``on_line`` and kept in ``tail`` for error messages;
- stopping is one routine: SIGTERM to the process group, a grace period, then
  SIGKILL (``stop``); the synchronous twin ``stop_group_sync`` does the same
  for processes we did not spawn (an orphan found by pidfile, rpc-server);
- when the leader exits, whatever is left of its group is killed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable, Deque, Iterable, Mapping, Optional, Sequence, Tuple, Union

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_LINE = 65536
KILL_WAIT = 10.0                     # after SIGKILL: the kernel needs a moment, never forever
OnLine = Callable[[str, str], Optional[Awaitable[None]]]   # (stream name, line)


def locate(candidates: Iterable[Union[str, Path, None]]) -> Optional[str]:
    """The first candidate that is an executable file; bare names are looked up on PATH."""
    for cand in candidates:
        if cand is None:
            continue
        c = str(cand)
        found = shutil.which(c) if "/" not in c else (c if os.path.isfile(c) and os.access(c, os.X_OK) else None)
        if found:
            return found
    return None


def signal_group(pid: int, sig: int) -> None:
    """Signal the child's whole process group (it was started in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_steps(grace: float) -> Sequence[tuple]:
    """The one stopping routine: (signal, seconds to wait for the exit) in order."""
    return ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT))


def stop_group_sync(pid: int, wait: Callable[[float], Any], grace: float,
                    timeout_errors: Tuple[type, ...]) -> Optional[int]:
    """``stop_steps`` for a process we did not spawn here (an orphan, rpc-server): ``wait(seconds)`` returns
    once it exited or raises one of ``timeout_errors``.  Returns the signal that ended it (None: still there)."""
    for sig, seconds in stop_steps(grace):
        signal_group(pid, sig)
        try:
            wait(seconds)
            return sig
        except timeout_errors:
            continue
    return None


async def pump_lines(stream: Optional[anyio.abc.ByteReceiveStream], name: str, on_line: OnLine) -> None:
    """Read ``stream`` to its end, calling ``on_line(name, line)`` per non-empty line (lines longer than
    MAX_LINE are cut there, never split at a read boundary)."""
    if stream is None:
        return
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            raw = await buffered.receive_until(b"\n", MAX_LINE)
        except anyio.DelimiterNotFound:
            raw = await buffered.receive(MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            result = on_line(name, line)
            if result is not None:
                await result


class ManagedProcess:
    """One spawned child: its output tail, its exit, and how to stop it."""

    def __init__(self, proc: anyio.abc.Process, on_line: Optional[OnLine] = None, tail: int = 40):
        self.proc = proc
        self.pid = proc.pid
        self.tail: Deque[str] = deque(maxlen=tail)
        self.exited = anyio.Event()
        self.returncode: Optional[int] = None
        self.on_line = on_line              # may be set after spawn: output is read only once wait_and_drain() runs

    @classmethod
    async def spawn(cls, cmd: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
                    on_line: Optional[OnLine] = None, merge_stderr: bool = False, tail: int = 40
                    ) -> "ManagedProcess":
        proc = await anyio.open_process(list(cmd), stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                        start_new_session=True)
        return cls(proc, on_line, tail)

    async def _line(self, name: str, line: str) -> None:
        self.tail.append(line)
        if self.on_line is not None:
            result = self.on_line(name, line)
            if result is not None:
                await result

    async def wait_and_drain(self) -> int:
        """Drain both pipes and wait for the exit (run it as a task); then nothing of the group survives."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_lines, self.proc.stdout, "stdout", self._line)
                tg.start_soon(pump_lines, self.proc.stderr, "stderr", self._line)
                self.returncode = await self.proc.wait()
        finally:
            signal_group(self.pid, signal.SIGKILL)
            if self.returncode is None:           # cancelled: reap what we just killed
                with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_WAIT):
                    self.returncode = await self.proc.wait()
            self.exited.set()
        return self.returncode

    async def wait_exit(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self.exited.wait()
        return self.exited.is_set()

    async def stop(self, grace: float, first: int = signal.SIGTERM) -> Optional[int]:
        """SIGTERM the group, wait ``grace``, then SIGKILL (``first=SIGKILL`` skips the polite step).
        Returns the signal that ended it, or None if it was already gone.  Needs ``wait_and_drain`` running."""
        if self.exited.is_set():
            return None
        for sig, wait in stop_steps(grace):
            if first == signal.SIGKILL and sig == signal.SIGTERM:
                continue
            signal_group(self.pid, sig)
            if await self.wait_exit(wait):
                return sig
        return None
