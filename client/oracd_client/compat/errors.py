"""The old client's exception contract: oracd's errors re-raised as the types ORAC callers catch.

Each mapped error is *also* the shared table's class, with its ``code`` and ``data``
(``exceptions.as_builtin`` / ``with_message``), so new code can catch the precise class.
"""
from __future__ import annotations

from typing import Any

from oracd_protocol.errors import CallTimeout, GenerationTimeout, InvalidParams, InvalidPath, ModelNotFound, OracError

from ..exceptions import as_builtin, with_message

QUANT_PREFIX = "Quantization error: "
START_PREFIX = "Failed to start llama server: "


def generate_error(exc: BaseException, timeout: Any) -> BaseException:
    """generate()/generate_stream(): a timeout (oracd's or the client's own bound) says the caller's
    ``timeout``; a missing model is a FileNotFoundError, a bad parameter a ValueError."""
    if isinstance(exc, CallTimeout):
        return GenerationTimeout(f"Generation timed out after {timeout} seconds", {"timeout": timeout})
    if isinstance(exc, GenerationTimeout):
        return with_message(exc, f"Generation timed out after {timeout} seconds")
    if isinstance(exc, (ModelNotFound, InvalidPath)):
        return as_builtin(exc, FileNotFoundError)
    if isinstance(exc, InvalidParams):
        return as_builtin(exc, ValueError)
    return exc


def prefixed(exc: OracError, prefix: str) -> OracError:
    """``exc`` with its message starting ``prefix`` ("Quantization error: ...", "Failed to start llama server: ...")."""
    return with_message(exc, exc.message if exc.message.startswith(prefix) else prefix + exc.message)
