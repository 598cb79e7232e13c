"""Compatibility re-export: the error table now lives in ``oracd_protocol.errors``.

Why it moved: the daemon and every client share one table, and clients must not
import the daemon package.  The daemon's modules still import ``oracd.errors``
until they are switched over; everything they use is re-exported here unchanged.
"""
from oracd_protocol.errors import *  # noqa: F401,F403  (the whole table, per its __all__)
from oracd_protocol.errors import (  # noqa: F401  (the names the daemon imports, spelled out)
    ERRORS, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, AccessDenied, Busy,
    GenerationFailed, GenerationTimeout, InternalError, InvalidParams, InvalidPath, InvalidRequest, LoadTimeout,
    MethodNotFound, ModelLoadFailed, ModelNotFound, OracError, OutputExists, ParseError, QuantizeFailed,
    RequestTooLarge, ServerStartFailed, ServerUnavailable, ShuttingDown, UnloadTimeout, error_from_code, from_wire,
    to_wire)
