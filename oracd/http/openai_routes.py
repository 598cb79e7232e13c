"""OpenAI's routes: /v1/models, /v1/chat/completions, /v1/completions (handlers of ``server.HttpFront``).

Each handler reads the body (``HttpFront.read_json``: capped, timed, checked), translates it
(``openai.py``), and runs it through ``generation.run``; a stream goes out as SSE.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List

import anyio
from aiohttp import web

from oracd_protocol.errors import OracError

from . import openai as oai
from .generation import ClientGone, resolve, run
from .responses import SSE

if TYPE_CHECKING:
    from ..api.methods import App


class OpenAIRoutes:
    app: "App"
    read_json: Callable[..., Any]
    error_response: Callable[..., web.Response]

    def _aliases(self) -> Dict[str, List[str]]:
        return {model: list(p.aliases) for model, p in self.app.cfg.profiles.items() if p.aliases}

    async def _model_names(self) -> List[Any]:
        items = await anyio.to_thread.run_sync(self.app.store.list, self.app.supervisor.model)
        aliases = self._aliases()
        return [(name, _mtime(it.get("modified")))
                for it in items for name in [it["name"], *aliases.get(it["name"], [])]]

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


def _mtime(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    try:
        from datetime import datetime
        return datetime.fromisoformat(str(v)).timestamp()
    except ValueError:
        return 0.0
