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
import stat
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

import anyio
from aiohttp import web

from oracd_protocol.errors import (AccessDenied, Busy, InternalError, InvalidParams, InvalidRequest, LoadTimeout,
                                   ModelNotFound, OracError, RequestTooLarge, ShuttingDown)

from ..api.deadline import Deadline
from ..api.listener import StartupError, allowed, peer_of, socket_gid
from ..config.values import http_address
from ..logs import get as get_logger
from . import ollama as ol
from . import openai as oai
from .generation import ClientGone, resolve, run

if TYPE_CHECKING:
    from ..api.methods import App

log = get_logger("oracd.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# oracd's error codes -> HTTP status
STATUS = {-32004: 500, -32011: 409, -32012: 500, -32015: 504, -32601: 404, -32700: 400, -32600: 400, -32602: 400, -32008: 400, -32001: 404, -32013: 403, -32005: 503, -32006: 503,
          -32009: 503, -32003: 504, -32014: 504, -32010: 413, -32002: 500, -32007: 502, -32603: 500}
CODE_NAMES = {-32602: "invalid_params", -32001: "model_not_found", -32008: "invalid_path", -32013: "access_denied",
              -32005: "busy", -32006: "server_unavailable", -32009: "shutting_down", -32003: "timeout",
              -32010: "request_too_large", -32002: "model_load_failed", -32007: "generation_failed",
              -32603: "internal_error"}


def unauthorized() -> AccessDenied:
    """Missing or wrong API key: AccessDenied with ``reason = "api_key"``, sent as 401."""
    return AccessDenied("a valid API key is required: send Authorization: Bearer <key>", {"reason": "api_key"})


def is_unauthorized(exc: OracError) -> bool:
    return isinstance(exc, AccessDenied) and isinstance(exc.data, dict) and exc.data.get("reason") == "api_key"


class HttpError(InvalidRequest):
    """An HTTP-level refusal (unknown route, wrong method, slow body) with its own status (-32600 on the wire)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


class HttpFront:
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

    # ------------------------------------------------------------ OpenAI
    def _aliases(self) -> Dict[str, List[str]]:
        return {model: list(p.aliases) for model, p in self.app.cfg.profiles.items() if p.aliases}

    async def _model_names(self) -> List[Any]:
        items = await anyio.to_thread.run_sync(self.app.store.list, self.app.supervisor.model)
        aliases = self._aliases()
        return [(name, _mtime(it.get("modified"))) for it in items for name in [it["name"], *aliases.get(it["name"], [])]]

    async def openai_models(self, request: web.Request) -> web.Response:
        return web.json_response(oai.models_list(await self._model_names()), dumps=json.dumps)

    async def openai_model(self, request: web.Request) -> web.Response:
        path = resolve(self.app, request.match_info["model"])
        listed = dict(await self._model_names())
        return web.json_response(oai.models_list([(request.match_info["model"], listed.get(path.name, 0))])["data"][0],
                                 dumps=json.dumps)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, oai.chat_request, "/v1/chat/completions")

    async def openai_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, oai.completion_request, "/v1/completions")

    async def _openai(self, request: web.Request, parse: Callable[[Any], Any], llama_path: str) -> web.StreamResponse:
        body = await self.read_json(request)
        gen = parse(body)
        model = oai.model_of(body)
        if not gen.stream:
            done = await run(self.app, model, gen, llama_path, api="openai")
            return web.json_response(oai.answer(done.data, model or done.path.name), dumps=json.dumps)
        include_usage = bool(gen.extra.get("stream_options", {}).get("include_usage"))
        stream = SSE(request, self.app.cfg.server.send_timeout)
        named = [model]

        async def on_event(obj: Dict[str, Any]) -> None:
            out = oai.chunk(obj, named[0] or str(obj.get("model", "")).rsplit("/", 1)[-1], include_usage)
            if out is not None:
                await stream.send(out)

        try:
            await run(self.app, model, gen, llama_path, on_event, api="openai")
        except ClientGone:
            return stream.drop()
        except OracError as exc:
            if not stream.started:
                raise
            await stream.send_error(self.error_response("openai", exc))
            return stream.resp
        try:
            await stream.finish()
        except OSError:
            return stream.drop()
        return stream.resp


    # ------------------------------------------------------------ Ollama
    async def ollama_root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", headers={"Server": "oracd"})

    async def ollama_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": ol.VERSION}, dumps=json.dumps)

    async def _items(self) -> List[Dict[str, Any]]:
        return await anyio.to_thread.run_sync(self.app.store.list, self.app.supervisor.model)

    async def ollama_tags(self, request: web.Request) -> web.Response:
        return web.json_response(ol.tags(await self._items(), self._aliases()), dumps=json.dumps)

    async def ollama_ps(self, request: web.Request) -> web.Response:
        sup, cfg = self.app.supervisor, self.app.cfg
        child = sup.child
        if child is None or sup.model is None or sup.state.value != "ready":
            return web.json_response({"models": []}, dumps=json.dumps)
        path = self.app.store.resolve(sup.model)
        item = await anyio.to_thread.run_sync(self.app.store.describe, path, sup.model)
        ctx = (child.ctx_fit or {}).get("ctx_size") or cfg.option_for(sup.model, "ctx_size")
        try:           # what one request really gets: llama-server's per-slot context
            with anyio.fail_after(cfg.llama.health_timeout):
                ctx = int((await child.http.props())["default_generation_settings"]["n_ctx"]) or ctx
        except Exception as exc:          # /api/ps still answers, with the configured size
            log.debug("llama-server /props unavailable", error=str(exc))
        back_at = sup.return_to_default_at(child)
        expires = ol.PINNED_UNTIL if back_at is None else ol._iso(time.time() + max(0.0, back_at - time.monotonic()))
        entry = ol.ps_entry(item, sup.model, expires, int(ctx), cfg.option_for(sup.model, "n_gpu_layers") > 0)
        return web.json_response({"models": [entry]}, dumps=json.dumps)

    def _ollama_model(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise InvalidParams("body: expected a JSON object", "body")
        name = body.get("model") if body.get("model") is not None else body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidParams("model is required: a model file name (GET /api/tags lists them)", "model")
        return name

    async def ollama_show(self, request: web.Request) -> web.Response:
        name = self._ollama_model(await self.read_json(request))
        path = resolve(self.app, name)
        item = await anyio.to_thread.run_sync(self.app.store.describe, path, self.app.supervisor.model)
        if not item.get("valid"):
            raise InvalidParams(f"{name} is not a loadable GGUF model: {item.get('error')}", "model")
        prof = self.app.cfg.profile_for(path.name)
        params = {k: v for k, v in (("temperature", getattr(prof, "temperature", None)),
                                    ("top_p", getattr(prof, "top_p", None)), ("top_k", getattr(prof, "top_k", None)),
                                    ("num_predict", getattr(prof, "max_tokens", None)),
                                    ("num_ctx", self.app.cfg.option_for(path.name, "ctx_size"))) if v is not None}
        # choice: every model gets "tools" (llama-server's generic tool-call format works with any template)
        return web.json_response(ol.show(item, ["completion", "tools"], params), dumps=json.dumps)

    async def ollama_pull(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        name = self._ollama_model(body)
        stream = ol.core.boolean("stream", body.get("stream"), default=True)
        try:
            resolve(self.app, name)
        except ModelNotFound:
            dirs = ", ".join(str(d) for d in self.app.store.dirs)
            raise ModelNotFound(f"oracd does not download models: {name} is not in the models dir ({dirs}); "
                                f"copy its GGUF file there and it is listed at once", {"model": name}) from None
        if not stream:
            return web.json_response({"status": "success"}, dumps=json.dumps)
        nd = NDJSON(request, self.app.cfg.server.send_timeout)
        await nd.send({"status": "pulling manifest"})
        await nd.send({"status": "success"})
        await nd.finish()
        return nd.resp

    async def ollama_unsupported(self, request: web.Request) -> web.Response:
        raise HttpError(501 if request.path.startswith("/api/") else 404,
                        f"{request.method} {request.path} is not supported by oracd (it serves /api/chat, "
                        f"/api/generate, /api/tags, /api/show, /api/ps, /api/pull, /api/version and OpenAI's /v1)")

    async def ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        name = self._ollama_model(body)
        gen, ka, num_ctx = ol.chat_request(body)
        return await self._ollama(request, name, gen, ka, chat=True)

    async def ollama_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        name = self._ollama_model(body)
        gen, ka, num_ctx = ol.generate_request(body)
        return await self._ollama(request, name, gen, ka, chat=False)

    async def _ollama(self, request: web.Request, name: str, gen: Any, keep_alive: Optional[float],
                      chat: bool) -> web.StreamResponse:
        if gen.messages is None and gen.prompt is None:       # Ollama's "load" (and "unload": keep_alive 0)
            await self._load(name, keep_alive)
            return web.json_response(ol.loaded(name, chat, "unload" if keep_alive == 0 else "load"),
                                     dumps=json.dumps)
        llama_path = "/v1/completions" if gen.prompt is not None else "/v1/chat/completions"
        if not gen.stream:
            done = await run(self.app, name, gen, llama_path, api="ollama", keep_alive=keep_alive)
            return web.json_response(ol.answer(done.data, name, chat, done.waited_s, done.total_s), dumps=json.dumps)
        st = ol.Stream(name, chat)
        nd = NDJSON(request, self.app.cfg.server.send_timeout)

        async def on_event(obj: Dict[str, Any]) -> None:
            for piece in st.feed(obj):
                await nd.send(piece)

        try:
            done = await run(self.app, name, gen, llama_path, on_event, api="ollama", keep_alive=keep_alive)
        except ClientGone:
            return nd.drop()
        except OracError as exc:
            if not nd.started:
                raise
            await nd.send_error(exc.message)
            return nd.resp
        try:
            for piece in st.tail(done.waited_s, done.total_s):
                await nd.send(piece)
            await nd.finish()
        except OSError:               # gone after the generation: nothing left to tell it
            return nd.drop()
        return nd.resp

    async def _load(self, name: str, keep_alive: Optional[float]) -> None:
        """Load a model now, as JSON-RPC load_model does (memory check, deadline, swap)."""
        if not self.app.accepting:
            raise ShuttingDown()
        path = resolve(self.app, name)
        self.app.check_loadable(path)
        deadline = Deadline(self.app.cfg.llama.load_timeout,
                            lambda s: LoadTimeout(f"load of {path.name} timed out after {s:g} seconds"))
        with deadline.scope():
            await self.app.supervisor.load(path.name, path)
        if keep_alive is not None:
            self.app.supervisor.set_keep_alive(path.name, keep_alive)


class Streamed:
    """A streamed response, started on its first piece (an error before it is a plain HTTP error).  A client
    that does not read for ``server.send_timeout`` counts as gone, like one on the JSON-RPC socket."""
    content_type = ""

    def __init__(self, request: web.Request, send_timeout: float):
        self.request = request
        self.send_timeout = send_timeout
        self.resp = web.StreamResponse(headers={"Content-Type": self.content_type, "Cache-Control": "no-cache"})
        self.started = False

    async def write(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            await self.resp.prepare(self.request)
        try:
            with anyio.fail_after(self.send_timeout):
                await self.resp.write(data)
        except TimeoutError:
            raise ConnectionResetError(f"the client read nothing for {self.send_timeout:g} s") from None

    def drop(self) -> web.StreamResponse:
        """The client is gone (or not reading): close the connection, nothing more to send."""
        if self.request.transport is not None:
            self.request.transport.close()
        return self.resp


class NDJSON(Streamed):
    """A newline-delimited JSON response (Ollama's streaming)."""
    content_type = "application/x-ndjson"

    async def send(self, obj: Any) -> None:
        await self.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def send_error(self, message: str) -> None:
        """An error after the stream began: Ollama's {"error": ...} as the last line."""
        try:
            await self.resp.write(json.dumps({"error": message}).encode() + b"\n")
            await self.resp.write_eof()
        except (OSError, RuntimeError):
            pass

    async def finish(self) -> None:
        if not self.started:
            self.started = True
            await self.resp.prepare(self.request)
        await self.resp.write_eof()


class SSE(Streamed):
    """A server-sent-events response (OpenAI's streaming)."""
    content_type = "text/event-stream"

    async def send(self, obj: Any) -> None:
        await self.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    async def send_error(self, error: web.Response) -> None:
        """An error after the stream began: one last event with the error object, then the end."""
        try:
            await self.resp.write(b"data: " + bytes(error.body) + b"\n\n")
            await self.resp.write_eof()
        except (OSError, RuntimeError):
            pass

    async def finish(self) -> None:
        if not self.started:
            self.started = True
            await self.resp.prepare(self.request)
        await self.resp.write(b"data: [DONE]\n\n")
        await self.resp.write_eof()


def _not_json(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser takes them): refused, never passed on."""
    raise ValueError(f"{name} is not a JSON number")


def _param_of(exc: OracError) -> Optional[str]:
    """The field an InvalidParams names (its data), for OpenAI's ``param``."""
    return exc.data if isinstance(exc, InvalidParams) and isinstance(exc.data, str) and " " not in exc.data else None


def _mtime(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    try:
        from datetime import datetime
        return datetime.fromisoformat(str(v)).timestamp()
    except ValueError:
        return 0.0


# ---------------------------------------------------------------- listeners
def bind_unix(path: str, cfg: Any) -> socket.socket:
    """A Unix listener like the JSON-RPC socket: never steal a live one, replace a stale one, mode and group."""
    p = os.path.abspath(path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"http.listen: {p} exists and is not a socket; refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(p)
                raise StartupError(f"http.listen: another process is already serving {p}")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(p)
    gid = socket_gid(cfg)
    tmp = f"{p}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, cfg.server.socket_mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(1024)
        os.replace(tmp, p)
    except BaseException:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return sock


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
