"""One deadline per request, on one clock: the request's own ``timeout``, from when its method starts.

Everything the request waits for (a model swap, a load, llama-server's answer,
a retry after a crash) runs inside this one scope; nothing below it keeps a
clock of its own.  When it expires the request gets the error of its kind:
GenerationTimeout, LoadTimeout or UnloadTimeout.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import anyio

from oracd_protocol.errors import InvalidParams, OracError

MAX_TIMEOUT = 24 * 3600.0


class Deadline:
    def __init__(self, seconds: float, on_expiry: Callable[[float], OracError]):
        if not 0.001 <= seconds <= MAX_TIMEOUT:
            raise InvalidParams(f"timeout must be between 0.001 and {MAX_TIMEOUT:g}", f"timeout: got {seconds!r}")
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._on_expiry = on_expiry

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @contextmanager
    def scope(self) -> Iterator["Deadline"]:
        """Run the request's work; at the deadline cancel it and raise the request's timeout error."""
        try:
            with anyio.fail_after(self.remaining()):
                yield self
        except TimeoutError:
            raise self._on_expiry(self.seconds) from None
