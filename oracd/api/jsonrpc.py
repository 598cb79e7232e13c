"""JSON-RPC 2.0 on one line: parse, validate, dispatch through jsonrpcserver's public API, log.

jsonrpcserver (``async_dispatch_to_serializable``) does method lookup, argument
binding (-32601/-32602), the call and the response object.  We hand it each
request object of a line separately, because every request needs its own
context: its id, for the progress notifications it sends while it runs
(``generate.chunk``...), and its own log line with timing and outcome.  Its
deserializer and validator hooks get our strict parser and a fast structural
check instead of its jsonschema pass.  Errors never carry tracebacks: they are
logged with an incident id that the client gets in ``data``.
"""
from __future__ import annotations

import functools
import inspect
import time
import typing
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Tuple, Union

import anyio
from jsonrpcserver import JsonRpcError, Success, async_dispatch_to_serializable
from oracd_protocol.framing import NotJSON, TooDeep, decode_strict, encode

from oracd_protocol.errors import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, Busy, InvalidParams,
                                   OracError)
from ..logs import get as get_logger
from .logguard import PeerLogLimiter, clip

log = get_logger("oracd.jsonrpc")
req_log = get_logger("oracd.request")



@dataclass
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED; groups from SO_PEERGROUPS)."""
    pid: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    groups: Tuple[int, ...] = ()      # supplementary groups, as the kernel saw them at connect()

    @property
    def known(self) -> bool:
        """Credentials were read (an AF_UNIX peer); an unknown peer passes no allow-list."""
        return self.uid is not None


class Slots(Protocol):
    """A connection's pending-request slots (``connection._LineSlots``): a batch takes one per item."""
    def give_back_line(self) -> None: ...
    async def acquire(self) -> None: ...
    def release(self) -> None: ...


@dataclass
class CallContext:
    """Passed as the first argument to every method."""
    peer: Peer
    notify: Optional[Callable[[str, Any], Awaitable[None]]] = None  # server -> client notifications
    request_id: Any = None            # the id of the request being served (None for notifications)
    slots: Optional[Slots] = None     # the request line's pending slots (None: no per-connection limit)

    async def progress(self, method: str, **params: Any) -> None:
        """Send a JSON-RPC notification about this request (``params.id`` names it) on its connection."""
        if self.notify is not None and self.request_id is not None:
            await self.notify(method, {"id": self.request_id, **params})


Method = Callable[..., Awaitable[Any]]


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, List):
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # pragma: no cover


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
    if typing.get_origin(hint) in (list, List):
        (inner,) = typing.get_args(hint) or (Any,)
        return f"array of {_type_name(inner)}"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def rpc_method(func: Callable[..., Awaitable[Any]]) -> Method:
    """Wrap an ``async def m(ctx, *, name: type = default)`` as a JSON-RPC method.

    Checks param types from the annotations (-32602 naming the param), maps
    OracError to its code, and turns anything unexpected into a bare -32603
    with an incident id; the traceback goes to the log only.
    """
    hints = typing.get_type_hints(func)
    params = [p for p in inspect.signature(func).parameters.values()][1:]

    @functools.wraps(func)
    async def wrapper(ctx: CallContext, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise JsonRpcError(INVALID_PARAMS, "Invalid params", "params must be an object (named params)")
        for p in params:
            if p.name in kwargs and p.name in hints and not _type_ok(kwargs[p.name], hints[p.name]):
                raise JsonRpcError(INVALID_PARAMS, "Invalid params",
                                   f"{p.name}: expected {_type_name(hints[p.name])}")
        try:
            return Success(await func(ctx, **kwargs))
        except OracError as exc:
            raise (JsonRpcError(exc.code, exc.message, exc.data) if exc.data is not None
                   else JsonRpcError(exc.code, exc.message)) from None
        except JsonRpcError:
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("internal error", method=func.__name__, incident=incident)
            raise JsonRpcError(INTERNAL_ERROR, "Internal error", {"incident": incident}) from None

    # jsonrpcserver binds params with inspect.signature(method) on every call (-32602 on a mismatch);
    # a __signature__ attribute answers that at once (computing it was ~50 us of a 200 us status call)
    wrapper.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    return wrapper


def error_obj(code: int, message: str, data: Any = None, id: Any = None) -> Dict[str, Any]:
    err: Dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id}


def _checked(obj: Any) -> Any:
    """jsonrpcserver's validator hook: the object was already checked by ``_check_request``."""
    return obj


def _check_request(obj: Any) -> Optional[str]:
    """Why ``obj`` is not a valid JSON-RPC 2.0 request (None if it is)."""
    if not isinstance(obj, dict):
        return "request must be an object"
    if obj.get("jsonrpc") != "2.0":
        return 'jsonrpc must be exactly "2.0"'
    m = obj.get("method")
    if not isinstance(m, str) or not m:
        return "method must be a non-empty string"
    if "params" in obj and not isinstance(obj["params"], (dict, list)):
        return "params must be an object or array"
    if "id" in obj and not (obj["id"] is None or isinstance(obj["id"], (str, int, float))
                            and not isinstance(obj["id"], bool)):
        return "id must be a string, number or null"
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return f"unknown member(s): {', '.join(sorted(extra))}"
    return None


class Dispatcher:
    """Turns one request line into one response line (or None for notifications)."""

    def __init__(self, methods: Dict[str, Method], on_request: Optional[Callable[[str, Optional[int]], None]] = None,
                 max_batch_items: int = 0, log_rate: float = 20.0, log_burst: int = 200):
        self.methods = methods
        self.served = 0
        self.errors = 0
        self.on_request = on_request          # (method, error code or None): the metrics count requests
        self.max_batch_items = max_batch_items   # 0: no cap
        self.log_limiter = PeerLogLimiter(log_rate, log_burst)

    async def handle_line(self, line: bytes, ctx: CallContext) -> Optional[bytes]:
        try:
            obj = decode_strict(line)      # the protocol's rules: strict UTF-8, RFC 8259 numbers, bounded depth
        except NotJSON as exc:
            self.errors += 1
            self._log_one("-", None, ctx, 0.0, PARSE_ERROR)
            return encode(error_obj(PARSE_ERROR, "Parse error", str(exc)[:200]))
        except TooDeep as exc:
            return encode(error_obj(INVALID_REQUEST, "Invalid Request", str(exc)))
        if isinstance(obj, list):
            if not obj:
                return encode(error_obj(INVALID_REQUEST, "Invalid Request", "empty batch"))
            return await self._batch(obj, ctx)
        resp = await self.handle_obj(obj, ctx)
        return encode(resp) if resp is not None else None

    def refuse_line(self, line: bytes, err: OracError) -> Optional[bytes]:
        """The answer to a line whose requests will not run (oracd is stopping): ``err`` for each request
        with an id, nothing for notifications or a line that is not JSON-RPC."""
        try:
            obj = decode_strict(line)
        except (NotJSON, TooDeep):
            return None
        items = obj if isinstance(obj, list) else [obj]
        out = [error_obj(err.code, err.message, err.data, o["id"]) for o in items
               if isinstance(o, dict) and _check_request(o) is None and "id" in o]
        if not out:
            return None
        return encode(out if isinstance(obj, list) else out[0])

    async def _batch(self, batch: List[Any], ctx: CallContext) -> Optional[bytes]:
        """Run a batch's items concurrently, each in a pending slot of the connection (the reader waits for
        room as for single requests); items past max_batch_items are answered Busy without being run."""
        limit = self.max_batch_items or len(batch)
        results: List[Optional[Dict[str, Any]]] = [None] * len(batch)
        if len(batch) > limit:
            busy = Busy(f"batch of {len(batch)} requests: only the first {limit} are run (server.max_batch_items)",
                        {"reason": "batch_too_large", "limit": limit})
            for i in range(limit, len(batch)):
                item = batch[i]
                valid = _check_request(item) is None
                if valid and "id" not in item:
                    continue                     # a notification: never answered
                results[i] = error_obj(busy.code, busy.message, busy.data, item["id"] if valid else None)
            self.errors += len(batch) - limit
            self._log_one("-", None, ctx, 0.0, busy.code, batch_items=len(batch), refused=len(batch) - limit)
        slots = ctx.slots

        async def one(i: int, item: Any) -> None:
            try:
                results[i] = await self.handle_obj(item, ctx)
            finally:
                if slots is not None:
                    slots.release()

        if slots is not None:
            slots.give_back_line()           # from here on each item holds a slot of its own
        async with anyio.create_task_group() as tg:
            for i in range(min(limit, len(batch))):
                if slots is not None:
                    await slots.acquire()
                tg.start_soon(one, i, batch[i])
        out = [r for r in results if r is not None]
        return encode(out) if out else None

    async def handle_obj(self, obj: Any, ctx: CallContext) -> Optional[Dict[str, Any]]:
        """Dispatch one request object; returns the response object or None (notification)."""
        why = _check_request(obj)
        if why is not None:
            self.errors += 1
            rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) else None
            self._log_one(obj.get("method") if isinstance(obj, dict) else "-", rid, ctx, 0.0, INVALID_REQUEST)
            return error_obj(INVALID_REQUEST, "Invalid Request", why, rid)
        t0 = time.perf_counter()
        rid = obj.get("id")
        rctx = CallContext(ctx.peer, ctx.notify, rid)
        try:
            resp = await async_dispatch_to_serializable(
                "", self.methods, context=rctx, deserializer=lambda _text: obj, validator=_checked)
        except Exception:  # pragma: no cover - jsonrpcserver itself failed
            incident = uuid.uuid4().hex[:12]
            log.exception("dispatch failed", incident=incident)
            resp = error_obj(INTERNAL_ERROR, "Internal error", {"incident": incident}, rid)
        self.served += 1
        code = resp["error"]["code"] if isinstance(resp, dict) and "error" in resp else None
        if code is not None:
            self.errors += 1
        self._log_one(obj["method"], rid, ctx, (time.perf_counter() - t0) * 1000, code)
        return resp if "id" in obj else None

    def _log_one(self, method: str, rid: Any, ctx: CallContext, ms: float, code: Optional[int], **extra: Any) -> None:
        if self.on_request is not None:
            self.on_request(method, code)
        held_back = self.log_limiter.admit((ctx.peer.pid, ctx.peer.uid), time.monotonic())
        if held_back is None:
            return
        if held_back:
            req_log.warning("request log lines suppressed", peer_pid=ctx.peer.pid, peer_uid=ctx.peer.uid,
                            suppressed=held_back)
        req_log.info("request", method=clip(method), id=clip(rid), peer_pid=ctx.peer.pid, peer_uid=ctx.peer.uid,
                     ms=round(ms, 3), outcome="ok" if code is None else "error", code=code, **extra)

    def flush_log(self, peer: Peer) -> None:
        """A peer's connection closed: report the request lines it had suppressed, if any."""
        held_back = self.log_limiter.suppressed.pop((peer.pid, peer.uid), 0)
        if held_back:
            req_log.warning("request log lines suppressed", peer_pid=peer.pid, peer_uid=peer.uid,
                            suppressed=held_back)


__all__ = ["CallContext", "Dispatcher", "Peer", "rpc_method", "error_obj", "InvalidParams"]
