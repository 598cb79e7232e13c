"""Say how a process ended in words a person can act on: ``crashed (SIGSEGV)``, not ``code -11``.

Shared by the supervisor (errors, ``status.child.last_exit``, the log, oracctl)
and by provisioning's smoke test.  Pure: no I/O.
"""
from __future__ import annotations

import signal
from typing import Any, Dict, Optional

# signals a program raises against itself when it breaks: a crash, not a kill
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT,
                           signal.SIGTRAP, signal.SIGSYS})

LIKELY_CAUSE = {
    "SIGSEGV": "a CPU kernel in this build does not work on this machine (seen: ggml's AMX kernel on VMs "
               "that report AMX), or a bad model file",
    "SIGBUS": "the model file changed or was truncated while mapped, or a bad memory mapping",
    "SIGILL": "the binary uses CPU instructions this machine lacks (built for another CPU, or -march=native "
              "elsewhere)",
    "SIGABRT": "llama.cpp aborted on a failed check (GGML_ASSERT); its output says which",
    "SIGFPE": "an arithmetic fault in a CPU kernel",
    "SIGKILL": "killed from outside: often the kernel's out-of-memory killer",
}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe(returncode: Optional[int], name: str = "llama-server") -> str:
    """``llama-server crashed (SIGSEGV)``, ``... killed (SIGKILL)``, ``... exited with code 1``."""
    if returncode is None:
        return f"{name} is running"
    if returncode < 0:
        sig = -returncode
        verb = "crashed" if sig in CRASH_SIGNALS else "killed"
        return f"{name} {verb} ({signal_name(sig)})"
    return f"{name} exited with code {returncode}"


def exit_info(returncode: Optional[int]) -> Dict[str, Any]:
    """Fields for status and logs: returncode, plus signal and how for a signal death."""
    info: Dict[str, Any] = {"returncode": returncode}
    if returncode is not None and returncode < 0:
        info["signal"] = signal_name(-returncode)
        info["how"] = "crashed" if -returncode in CRASH_SIGNALS else "killed"
    elif returncode is not None:
        info["how"] = "exited"
    return info
