"""The exceptions callers of the client library see.

Daemon errors arrive as ``{code, message, data}`` and are rebuilt by
``oracd_protocol.errors.from_wire`` into the shared table's classes
(``ModelNotFound``, ``GenerationTimeout``...); the transport errors
(``OracdUnavailable``, ``ConnectionLost``, ``CallTimeout``) come from the same
module.  Both are re-exported here.  The ORAC-compatible client then re-raises
some daemon errors as the builtin types old callers catch, using classes that
are *both* (``as_builtin``): a missing model is a ``ModelNotFound`` and a
``FileNotFoundError`` at the same time, with the daemon's code and data kept.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

from oracd_protocol.errors import (CallTimeout, ConnectionLost, OracdUnavailable, OracError,  # noqa: F401
                                   error_from_code)

_COMBOS: Dict[Tuple[type, ...], type] = {}


def _combo(err_cls: Type[OracError], builtins: Tuple[Type[BaseException], ...]) -> type:
    key = (err_cls,) + builtins
    cls = _COMBOS.get(key)
    if cls is None:
        cls = type(err_cls.__name__, (err_cls,) + builtins, {"__module__": __name__})
        _COMBOS[key] = cls
    return cls


def as_builtin(err: OracError, *builtins: Type[BaseException], message: Optional[str] = None) -> OracError:
    """A copy of ``err`` that is also an instance of ``builtins`` (e.g. FileNotFoundError)."""
    new = _combo(type(err), builtins)(message if message is not None else err.message, err.data)
    new.code = err.code
    return new


def with_message(err: OracError, message: str) -> OracError:
    """A copy of ``err`` (same class, code and data) with another message."""
    new = type(err)(message, err.data)
    new.code = err.code
    return new


class ModelsPathNotServed(FileNotFoundError, ValueError):
    """``models_path`` / ``$ORAC_MODELS_PATH`` names a directory oracd does not serve.

    Both a ``FileNotFoundError`` (like a missing model: the models are not found
    where the caller looks) and a ``ValueError`` (a bad configuration value), so
    either ``except`` clause an old caller has catches it.  ``served`` lists the
    directories oracd does serve.
    """

    def __init__(self, message: str, models_path: str = "", served: Any = None):
        super().__init__(message)
        self.models_path = models_path
        self.served = list(served or [])

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


__all__ = ["OracError", "error_from_code", "OracdUnavailable", "ConnectionLost", "CallTimeout", "as_builtin",
           "with_message", "ModelsPathNotServed"]
