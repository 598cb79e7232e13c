"""Why llama-server failed, in one word a program can act on (``data.reason``).  Pure.

Read from its last output lines, because its exit code alone says little: 1 for
a missing file and for an unsupported architecture alike, SIGABRT for a lost
RPC worker and for a failed assertion.
"""
from __future__ import annotations

import signal
from typing import Optional, Sequence

_LOAD_REASONS = (
    ("Failed to connect to", "rpc_worker_down"),               # ggml-rpc.cpp: a --rpc worker is not there
    ("Remote RPC server crashed", "rpc_worker_lost"),
    ("unknown model architecture", "unsupported_architecture"),
    ("failed to allocate", "out_of_memory"),
    ("out of memory", "out_of_memory"),
    ("cudaMalloc failed", "out_of_memory"),
    ("invalid magic", "not_gguf"),
    ("failed to read magic", "not_gguf"),
    ("data is not within the file bounds", "corrupt"),        # tensor 'x' data is not within...
    ("failed to load model", "load_failed"),
)
# llama-server's output when an RPC worker went away under it (ggml-rpc.cpp GGML_ABORTs)
_WORKER_LOST_MARKERS = ("Remote RPC server crashed", "ggml-rpc.cpp")


def classify_load_failure(tail: Sequence[str]) -> str:
    text = "\n".join(tail)
    for needle, reason in _LOAD_REASONS:
        if needle in text:
            return reason
    return "load_failed"


# a load ended by someone else's signal (an operator, the OOM killer): the model is not to blame
_OUTSIDE_KILLS = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP})


def load_retry_due(returncode: Optional[int], killed_for: Optional[str], retried: bool) -> bool:
    """Should a load that died be tried once more before its waiters get the error?  Yes, once, when a signal
    we did not send ended it; a crash or an error exit says something about the model or the build."""
    return not retried and killed_for is None and returncode in _OUTSIDE_KILLS


def worker_lost(tail: Sequence[str]) -> bool:
    """Did llama-server abort because an RPC worker was lost?"""
    return any(m in line for line in tail for m in _WORKER_LOST_MARKERS)


def telling_line(tail: Sequence[str]) -> str:
    """The line that says why: llama.cpp's own reason ("error loading model: tensor 'x' data is not
    within the file bounds") beats the generic last line ("exiting due to model loading error")."""
    found: Optional[str] = next((t for t in tail if "error loading model:" in t), None)
    if found is None:
        found = next((t for t in reversed(tail) if "error" in t.lower() or "failed" in t.lower()),
                     tail[-1] if tail else "")
    return found
