"""The HTTP front door: aiohttp listeners for ``[http] listen``, auth, limits, errors in each API's shape.

One middleware does what every request needs, in order: the Unix-socket peer
check (the JSON-RPC socket's ``allowed_uids``/``allowed_gids``), the Bearer key
(constant-time compare), the concurrent-request bound (503 past
``max_requests``), and turning any error into the API's own shape with the right
status: OpenAI's ``{"error": {...}}`` under ``/v1/``, Ollama's
``{"error": "..."}`` elsewhere.  A traceback never reaches a client: it is logged
with an incident id, and the client gets the id.

Limits: a body over ``max_body_bytes`` gets 413 before it is read in full; a
body that does not arrive within ``read_timeout`` gets 408; a connection that
sends no complete request within ``idle_timeout`` (idle, or slow headers) is
closed by aiohttp's keep-alive timer, which starts when the connection opens.
"""
from __future__ import annotations

import hmac
import json
import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

import anyio
from aiohttp import web

from oracd_protocol.errors import AccessDenied, Busy, InternalError, InvalidParams, OracError, RequestTooLarge

from ..api.listener import StartupError, allowed, bind_unix_listener, peer_of
from ..config.values import http_address
from ..logs import get as get_logger
from . import openai as oai
from .generation import ClientGone
from .ollama_routes import OllamaRoutes
from .openai_routes import OpenAIRoutes
from .responses import HttpError

if TYPE_CHECKING:
    from ..api.methods import App

log = get_logger("oracd.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# oracd's error codes -> HTTP status
STATUS = {-32700: 400, -32600: 400, -32601: 404, -32602: 400, -32603: 500, -32001: 404, -32002: 500, -32003: 504,
          -32004: 500, -32005: 503, -32006: 503, -32007: 502, -32008: 400, -32009: 503, -32010: 413, -32011: 409,
          -32012: 500, -32013: 403, -32014: 504, -32015: 504}
CODE_NAMES = {-32602: "invalid_params", -32001: "model_not_found", -32008: "invalid_path", -32013: "access_denied",
              -32005: "busy", -32006: "server_unavailable", -32009: "shutting_down", -32003: "timeout",
              -32010: "request_too_large", -32002: "model_load_failed", -32007: "generation_failed",
              -32603: "internal_error"}


def unauthorized() -> AccessDenied:
    """Missing or wrong API key: AccessDenied with ``reason = "api_key"``, sent as 401."""
    return AccessDenied("a valid API key is required: send Authorization: Bearer <key>", {"reason": "api_key"})


def is_unauthorized(exc: OracError) -> bool:
    return isinstance(exc, AccessDenied) and isinstance(exc.data, dict) and exc.data.get("reason") == "api_key"


def api_of(path: str) -> str:
    return "openai" if path == "/v1" or path.startswith("/v1/") else "ollama"


def read_key(cfg: Any) -> Optional[bytes]:
    """The API key from [http] api_key or api_key_file (read once at startup; trailing newline dropped)."""
    h = cfg.http
    if h.api_key_file is not None:
        try:
            key = h.api_key_file.read_text().strip()
        except OSError as exc:
            raise StartupError(f"http.api_key_file: cannot read {h.api_key_file}: {exc.strerror}") from None
        if len(key) < 8:
            raise StartupError(f"http.api_key_file: {h.api_key_file} holds no key of at least 8 characters")
        return key.encode()
    return h.api_key.encode() if h.api_key else None


def key_matches(header: Optional[str], key: bytes) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"), key)


class HttpFront(OpenAIRoutes, OllamaRoutes):
    """The listeners, their counters, and the routes of both APIs."""

    def __init__(self, app: "App"):
        self.app = app
        self.key = read_key(app.cfg)
        self.in_flight = 0
        self.served: Counter = Counter()          # (api, status) -> count, for status
        self.listening: List[str] = []
        self.runner: Optional[web.AppRunner] = None
        self.idle = anyio.Event()
        self.idle.set()

    def info(self) -> Dict[str, Any]:
        """For ``status``: where it listens, whether a key is required, requests by API and HTTP status."""
        by_api: Dict[str, Dict[str, int]] = {}
        for (api, status), n in sorted(self.served.items()):
            by_api.setdefault(api, {})[str(status)] = n
        return {"listen": list(self.listening), "auth": self.key is not None, "in_flight": self.in_flight,
                "requests": by_api}

    # ------------------------------------------------------------ the application
    def web_app(self) -> web.Application:
        wa = web.Application(middlewares=[self.middleware], client_max_size=self.app.cfg.http.max_body_bytes)
        wa.add_routes([
            web.get("/v1/models", self.openai_models),
            web.get("/v1/models/{model}", self.openai_model),
            web.post("/v1/chat/completions", self.openai_chat),
            web.post("/v1/completions", self.openai_completions),
            web.get("/", self.ollama_root),
            web.get("/api/version", self.ollama_version),
            web.get("/api/tags", self.ollama_tags),
            web.get("/api/ps", self.ollama_ps),
            web.post("/api/show", self.ollama_show),
            web.post("/api/chat", self.ollama_chat),
            web.post("/api/generate", self.ollama_generate),
            web.post("/api/pull", self.ollama_pull),
            web.route("*", "/api/{rest:.*}", self.ollama_unsupported),
        ])
        return wa

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = api_of(request.path)
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        status = 500
        t0 = time.perf_counter()
        peer: Dict[str, Any] = {}
        try:
            peer = self._check_peer(request)
            if self.key is not None and not key_matches(request.headers.get("Authorization"), self.key):
                raise unauthorized()
            if self.in_flight >= self.app.cfg.http.max_requests:
                raise Busy(f"too many HTTP requests at once (http.max_requests = {self.app.cfg.http.max_requests})")
            self.in_flight += 1
            self.idle = anyio.Event() if self.in_flight == 1 else self.idle
            try:
                resp = await handler(request)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()
            status = resp.status
            return resp
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            status = exc.status
            msg = ("no such route: " + request.path) if exc.status == 404 else exc.reason
            return self.error_response(api, HttpError(exc.status, msg))
        except ClientGone:
            status = 499
            raise
        except OracError as exc:
            resp = self.error_response(api, exc)
            status = resp.status
            return resp
        except Exception as exc:
            incident = uuid.uuid4().hex[:12]
            log.exception("http request failed", path=request.path, incident=incident, error=str(exc))
            status = 500
            return self.error_response(api, InternalError(f"internal error (incident {incident})",
                                                          {"incident": incident}))
        finally:
            self.served[(api, status)] += 1
            self.app.prom.http_request(api, route, status)
            # one line per request, like JSON-RPC's "request" line (no body, no key: just who, what, how)
            log.info("http request", api=api, method=request.method, route=route, status=status,
                     ms=round((time.perf_counter() - t0) * 1000, 3), **peer)

    def _check_peer(self, request: web.Request) -> Dict[str, Any]:
        """Who is asking, for the log; on a Unix listener, refused unless the allow-lists admit them."""
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family == socket.AF_UNIX:
            peer = peer_of(sock)
            if not allowed(self.app.cfg, peer):
                raise AccessDenied(f"uid {peer.uid} is not allowed (server.allowed_uids / allowed_gids)")
            return {"peer_pid": peer.pid, "peer_uid": peer.uid}
        return {"peer": request.remote}

    def error_response(self, api: str, exc: OracError) -> web.Response:
        status = exc.status if isinstance(exc, HttpError) else (401 if is_unauthorized(exc)
                                                               else STATUS.get(exc.code, 500))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if api == "openai":
            data = exc.data if isinstance(exc.data, dict) else None
            code = (data or {}).get("reason") or CODE_NAMES.get(exc.code)
            if status == 401:
                code = "invalid_api_key"
            body = oai.error(status, exc.message, param=getattr(exc, "param", None) or _param_of(exc),
                             code=code, oracd={"code": exc.code, "data": exc.data} if status != 401 else None)
        else:
            body = {"error": exc.message}
        return web.json_response(body, status=status, headers=headers, dumps=json.dumps)

    # ------------------------------------------------------------ request bodies
    async def read_json(self, request: web.Request) -> Any:
        """The body as JSON: capped (413), within read_timeout (408), UTF-8 and complete (400)."""
        cap = self.app.cfg.http.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            raise RequestTooLarge(f"request body of {request.content_length} bytes is over http.max_body_bytes "
                                  f"({cap})", {"limit": cap})
        chunks, size = [], 0
        with anyio.move_on_after(self.app.cfg.http.read_timeout) as scope:
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise RequestTooLarge(f"request body is over http.max_body_bytes ({cap})", {"limit": cap})
                chunks.append(chunk)
        if scope.cancelled_caught:
            raise HttpError(408, f"the request body did not arrive within {self.app.cfg.http.read_timeout:g} s")
        raw = b"".join(chunks)
        if not raw.strip():
            raise InvalidParams("the request body is empty; expected a JSON object", "body")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidParams(f"the request body is not valid UTF-8 (byte {exc.start})", "body") from None
        try:
            return json.loads(text, parse_constant=_not_json)
        except RecursionError:
            raise InvalidParams("the request body nests too deeply", "body") from None
        except ValueError as exc:
            raise InvalidParams(f"the request body is not valid JSON: {exc}", "body") from None

def _not_json(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser takes them): refused, never passed on."""
    raise ValueError(f"{name} is not a JSON number")


def _param_of(exc: OracError) -> Optional[str]:
    """The field an InvalidParams names (its data, or its data's ``param``), for OpenAI's ``param``."""
    if not isinstance(exc, InvalidParams):
        return None
    data = exc.data.get("param") if isinstance(exc.data, dict) else exc.data
    return data if isinstance(data, str) and " " not in data else None


# ---------------------------------------------------------------- listeners
def bind_unix(path: str, cfg: Any) -> socket.socket:
    """A Unix listener made as the JSON-RPC socket is (``listener.bind_unix_listener``)."""
    return bind_unix_listener(Path(os.path.abspath(path)), cfg, "http.listen")


async def serve_http_api(front: HttpFront, *, task_status: Any) -> None:
    """Listen on every ``[http] listen`` address until cancelled (then close them, in-flight requests cut)."""
    cfg = front.app.cfg
    h = cfg.http
    runner = web.AppRunner(front.web_app(), access_log=None, handler_cancellation=True,
                           keepalive_timeout=h.idle_timeout)
    await runner.setup()
    front.runner = runner
    unix_paths: List[str] = []
    try:
        for text in h.listen:
            addr = http_address(text)
            try:
                if isinstance(addr, str):
                    site: web.BaseSite = web.SockSite(runner, bind_unix(addr, cfg))
                    unix_paths.append(os.path.abspath(addr))
                else:
                    site = web.TCPSite(runner, addr[0], addr[1], reuse_address=True)
                await site.start()
            except OSError as exc:
                log.error("startup failed", error=f"http.listen: cannot listen on {text}: {exc.strerror or exc}")
                raise StartupError(f"http.listen: cannot listen on {text}: {exc.strerror or exc}") from None
            except StartupError as exc:
                log.error("startup failed", error=str(exc))
                raise
            front.listening.append(text)
        log.info("http listening", addresses=front.listening, auth=front.key is not None)
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
            for p in unix_paths:
                try:
                    os.unlink(p)
                except OSError:
                    pass


async def stop_accepting(front: HttpFront, grace: float) -> None:
    """Shutdown: close the listeners, let in-flight HTTP requests finish within ``grace``."""
    if front.runner is None:
        return
    for site in list(front.runner.sites):
        try:
            await site.stop()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass
    t0 = time.monotonic()
    with anyio.move_on_after(grace):
        await front.idle.wait()
    if front.in_flight:
        log.warning("shutdown grace over, abandoning HTTP requests", pending=front.in_flight,
                    waited_s=round(time.monotonic() - t0, 1))
