"""The oracd processes the benchmark measures: started with the bench's timeouts, always cleaned up.

Why a module: several phases share one daemon (``SharedOracd``) and others start their own
(``started``); both use the same real-process launcher as the tests (tests/helpers.py), so the
benchmark runs exactly what the tests run.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import BIN, GEMMA, SMOL, Oracd, RpcWorker, toml_value  # noqa: E402,F401  (re-exported for the phases)

from .harness import Timeouts, describe  # noqa: E402


@contextmanager
def started(t: Timeouts, **kw: Any) -> Iterator[Oracd]:
    """An oracd started with the bench's start timeout, stopped and removed even if it would not start."""
    o = Oracd(**kw)
    try:
        o.start(timeout=t.start)
        yield o
    finally:
        o.stop(timeout=t.stop)
        o.cleanup()


class SharedOracd:
    """The daemon that the generate, RPC floor and memory phases share, started by the first of them.

    If it will not start, each of those phases fails with that reason and the others still run.
    """

    def __init__(self, t: Timeouts, **kw: Any):
        self.t, self.kw = t, kw
        self.o: Optional[Oracd] = None
        self.error: Optional[str] = None

    def get(self) -> Oracd:
        if self.o is None and self.error is None:
            o = Oracd(**self.kw)
            try:
                o.start(timeout=self.t.start)
                self.o = o
            except Exception as exc:
                o.stop(timeout=self.t.stop)
                o.cleanup()
                self.error = describe(exc, limit=2000)
        if self.error is not None:
            raise RuntimeError(f"oracd would not start: {self.error}")
        return self.o

    def close(self) -> None:
        if self.o is not None:
            self.o.stop(timeout=self.t.stop)
            self.o.cleanup()
