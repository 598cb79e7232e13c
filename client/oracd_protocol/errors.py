"""The one table of JSON-RPC error codes, and how an error crosses the wire.

Spec codes (-32700..-32600) come first; oracd's own domain errors live in
-32000..-32099.  The daemon raises these classes, the wire carries ``code``,
``message`` and ``data`` (``to_wire``), and a client turns the code back into
the same class (``from_wire``), so both sides agree without parsing message text.

The transport errors at the end (``OracdUnavailable``, ``ConnectionLost``,
``CallTimeout``) never cross the wire: a client raises them when it cannot
reach oracd or hear its answer.  They live here because every client
(blocking or asyncio) raises the same ones.
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
        """The JSON-RPC error object (``to_wire``)."""
        return to_wire(self)


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
    """load_model's deadline passed before llama-server was ready (not a generation timing out)."""
    code = -32014
    default_message = "Model load timed out"


class UnloadTimeout(OracError):
    """unload_model's deadline passed before llama-server had stopped."""
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
    """The named error class for ``code`` (unknown codes -> OracError), keeping ``code`` as given."""
    cls = ERRORS.get(code, OracError)
    err = cls(message, data)
    err.code = code
    return err


def to_wire(exc: OracError) -> Dict[str, Any]:
    """The JSON-RPC error object for ``exc``: ``code``, ``message`` and ``data`` (only when there is some)."""
    err: Dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        err["data"] = exc.data
    return err


def from_wire(err: Any) -> OracError:
    """Rebuild the named error class from a wire error object.

    A bare spec message gets a string ``data`` appended ("Invalid params: top_k:
    expected integer"), because that is where oracd puts the detail a person
    needs.  Anything that is not a proper error object becomes an InternalError
    saying so (a client never crashes on a malformed answer).
    """
    if not isinstance(err, dict):
        return error_from_code(INTERNAL_ERROR, f"malformed error from oracd: {err!r}")
    code = err.get("code")
    code = code if isinstance(code, int) else INTERNAL_ERROR
    message = str(err.get("message") or "")
    data = err.get("data")
    if isinstance(data, str) and data and message == getattr(ERRORS.get(code), "default_message", None):
        message = f"{message}: {data}"
    return error_from_code(code, message, data)


# ---------------------------------------------------------------------- transport (client side only)
class OracdUnavailable(ConnectionError):
    """No oracd answers on the socket; the message names the socket and how to start oracd.

    ``errno`` is the connect error (``ENOENT``/``ECONNREFUSED``: no daemon there; ``EACCES``:
    this user may not open the socket or its directory), None for a connect timeout.
    """

    def __init__(self, message: str, socket_path: Optional[str] = None, errno: Optional[int] = None):
        super().__init__(message)
        self.socket_path = socket_path
        self.errno = errno


class ConnectionLost(ConnectionError):
    """The connection to oracd broke after the request was written (its outcome is unknown)."""

    def __init__(self, message: str, socket_path: Optional[str] = None):
        super().__init__(message)
        self.socket_path = socket_path


class CallTimeout(TimeoutError):
    """oracd did not answer within the client-side bound of a call."""


__all__ = [
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "OracError", "ParseError", "InvalidRequest", "MethodNotFound", "InvalidParams", "InternalError",
    "ModelNotFound", "ModelLoadFailed", "GenerationTimeout", "QuantizeFailed", "Busy", "ServerUnavailable",
    "GenerationFailed", "InvalidPath", "ShuttingDown", "RequestTooLarge", "OutputExists", "ServerStartFailed",
    "AccessDenied", "LoadTimeout", "UnloadTimeout", "ERRORS", "error_from_code", "to_wire", "from_wire",
    "OracdUnavailable", "ConnectionLost", "CallTimeout",
]
