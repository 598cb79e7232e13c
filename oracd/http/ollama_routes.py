"""Ollama's routes: /, /api/version, tags, ps, show, pull, chat, generate, and "not supported" for the rest
(handlers of ``server.HttpFront``).

Each handler reads the body (``HttpFront.read_json``), translates it (``ollama.py``) and runs it through
``generation.run``; a stream goes out as NDJSON.  A chat or generate without messages or prompt loads
the model, as Ollama's does.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import anyio
from aiohttp import web

from oracd_protocol.errors import InvalidParams, LoadTimeout, ModelNotFound, OracError, ShuttingDown

from ..api.deadline import Deadline
from ..logs import get as get_logger
from . import ollama as ol
from .generation import ClientGone, resolve, run
from .responses import NDJSON, HttpError

if TYPE_CHECKING:
    from ..api.methods import App

log = get_logger("oracd.http")


class OllamaRoutes:
    app: "App"
    read_json: Callable[..., Any]
    _aliases: Callable[[], Dict[str, List[str]]]

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
        return await self._ollama(request, name, gen, ka, num_ctx, chat=True)

    async def ollama_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        name = self._ollama_model(body)
        gen, ka, num_ctx = ol.generate_request(body)
        return await self._ollama(request, name, gen, ka, num_ctx, chat=False)

    async def _ollama(self, request: web.Request, name: str, gen: Any, keep_alive: Optional[float],
                      num_ctx: Optional[int], chat: bool) -> web.StreamResponse:
        if gen.messages is None and gen.prompt is None:       # Ollama's "load" (and "unload": keep_alive 0)
            await self._load(name, keep_alive)
            return web.json_response(ol.loaded(name, chat, "unload" if keep_alive == 0 else "load"),
                                     dumps=json.dumps)
        llama_path = "/v1/completions" if gen.prompt is not None else "/v1/chat/completions"
        if not gen.stream:
            done = await run(self.app, name, gen, llama_path, api="ollama", keep_alive=keep_alive, num_ctx=num_ctx)
            return web.json_response(ol.answer(done.data, name, chat, done.waited_s, done.total_s), dumps=json.dumps)
        st = ol.Stream(name, chat)
        nd = NDJSON(request, self.app.cfg.server.send_timeout)

        async def on_event(obj: Dict[str, Any]) -> None:
            for piece in st.feed(obj):
                await nd.send(piece)

        try:
            done = await run(self.app, name, gen, llama_path, on_event, api="ollama", keep_alive=keep_alive,
                             num_ctx=num_ctx)
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
        await self.app.check_loadable(path)
        deadline = Deadline(self.app.cfg.llama.load_timeout,
                            lambda s: LoadTimeout(f"load of {path.name} timed out after {s:g} seconds"))
        with deadline.scope():
            await self.app.door.load(path.name, path)
        if keep_alive is not None:
            self.app.door.set_keep_alive(path.name, keep_alive)
