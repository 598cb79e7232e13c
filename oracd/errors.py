"""The one table of JSON-RPC error codes, shared by the daemon and the client library.

Spec codes (-32700..-32600) come first; oracd's own domain errors live in
-32000..-32099.  The daemon raises these classes, the wire carries ``code``,
``message`` and ``data``, and the client turns the code back into the same class
(``error_from_code``), so both sides agree without parsing message text.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

# JSON-RPC 2.0 spec codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class OracError(Exception):
    """Base class: an error with a JSON-RPC code, a message for humans and optional data."""

    code = INTERNAL_ERROR
    default_message = "Internal error"

    def __init__(self, message: Optional[str] = None, data: Any = None):
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_dict(self) -> Dict[str, Any]:
        err: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ParseError(OracError):
    code = PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(OracError):
    code = INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFound(OracError):
    code = METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(OracError):
    code = INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(OracError):
    code = INTERNAL_ERROR
    default_message = "Internal error"


# Domain errors: -32000..-32099
class ModelNotFound(OracError):
    """The named model file does not exist in any served models dir."""
    code = -32001
    default_message = "Model not found"


class ModelLoadFailed(OracError):
    """llama-server could not load the model (corrupt file, bad architecture, out of memory...)."""
    code = -32002
    default_message = "Model failed to load"


class GenerationTimeout(OracError):
    """The request's deadline passed before llama-server answered; the upstream task was aborted."""
    code = -32003
    default_message = "Generation timed out"


class QuantizeFailed(OracError):
    """llama-quantize failed; data carries its stderr tail."""
    code = -32004
    default_message = "Quantization failed"


class Busy(OracError):
    """Too many connections or requests; try again later."""
    code = -32005
    default_message = "Server busy"


class ServerUnavailable(OracError):
    """llama-server is not running and cannot be started right now (crash loop, shutting down)."""
    code = -32006
    default_message = "llama-server unavailable"


class GenerationFailed(OracError):
    """llama-server answered with an error or died during the generation."""
    code = -32007
    default_message = "Generation failed"


class InvalidPath(OracError):
    """A model or output name that escapes the models dir, or a models path the daemon does not serve."""
    code = -32008
    default_message = "Invalid model path"


class ShuttingDown(OracError):
    """oracd is stopping and takes no new work."""
    code = -32009
    default_message = "oracd is shutting down"


class RequestTooLarge(OracError):
    """A request line exceeded the configured size limit."""
    code = -32010
    default_message = "Request too large"


class OutputExists(OracError):
    """quantize_model would overwrite an existing file."""
    code = -32011
    default_message = "Output model already exists"


class ServerStartFailed(OracError):
    """start_server(): the extra HTTP llama-server could not be started."""
    code = -32012
    default_message = "Failed to start llama server"


class AccessDenied(OracError):
    """The peer's uid/gid is not in allowed_uids/allowed_gids."""
    code = -32013
    default_message = "Access denied"


class LoadTimeout(OracError):
    """A model load (load_model, preload) did not finish within its timeout."""
    code = -32014
    default_message = "Model load timed out"


class UnloadTimeout(OracError):
    """unload_model did not finish within its timeout."""
    code = -32015
    default_message = "Model unload timed out"


ERRORS: Dict[int, Type[OracError]] = {
    cls.code: cls
    for cls in (
        ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError,
        ModelNotFound, ModelLoadFailed, GenerationTimeout, QuantizeFailed, Busy,
        ServerUnavailable, GenerationFailed, InvalidPath, ShuttingDown, RequestTooLarge,
        OutputExists, ServerStartFailed, AccessDenied, LoadTimeout, UnloadTimeout,
    )
}


def error_from_code(code: int, message: str, data: Any = None) -> OracError:
    """Rebuild the named error class from a wire error object (unknown codes -> OracError)."""
    cls = ERRORS.get(code, OracError)
    err = cls(message, data)
    err.code = code
    return err
