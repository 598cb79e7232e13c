"""One HTTP generation, through the same path as JSON-RPC ``generate``.

The model name resolves through the store; the model's profile fills in what
the request leaves out (``core.llama_body``); the memory check
(``App.check_loadable``), one deadline (``api/deadline.py``), the swap and the
crash/wedge retry (``api/generate.fetch``) are the JSON-RPC ones.  Only the
question put to llama-server differs: the full message list, tools and
formats, and -- when streamed -- every event handed to the API's writer.
A JSON schema that compact output applies to (``jsonanswer.decide``: the
JSON-RPC rules) is answered by ``generate_json`` instead, its pieces shaped as
llama-server's events (``jsonanswer.Shape``), so each API's writer is the same.

A stream is retried after a crash only while nothing of the answer has reached
the client; after that a retry would repeat text, so the stream ends with an
error instead (``GenerationFailed``, ``data.reason = "stream_interrupted"``).
A client that hangs up cancels the request (aiohttp's handler cancellation),
which closes the connection to llama-server and so stops the generation.
"""
from __future__ import annotations

import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Optional

import aiohttp
import anyio

from oracd_protocol.errors import GenerationFailed, GenerationTimeout, InvalidParams, ModelNotFound, ShuttingDown

from ..api.deadline import Deadline
from ..api.fastforward import generate_json, sampling_of
from ..api.generate import JsonOutput, fetch
from ..child.http import LlamaHTTPError
from ..config import Profile
from . import core, jsonanswer
from .num_ctx import apply as apply_num_ctx

if TYPE_CHECKING:
    from ..api.methods import App

OnEvent = Callable[[Dict[str, Any]], Awaitable[None]]


@dataclass
class Outcome:
    path: Path                  # the model file that answered
    data: Any                   # llama-server's JSON answer (None once a stream has ended)
    waited_s: float             # until llama-server was asked: the swap or load, if any (Ollama's load_duration)
    total_s: float


class ClientGone(Exception):
    """Writing to the HTTP client failed: it hung up.  Not llama-server's fault, never retried."""


def resolve(app: "App", name: Optional[str]) -> Path:
    """A model name as a client sends it -> its file: the file name, its stem, a profile's alias; Ollama's
    implicit ``:latest`` tag is dropped when the name with it is nothing."""
    wanted = name or app.active_default
    if not wanted:
        raise InvalidParams("model is required (no llama.default_model is configured)", "model")
    cfg = app.cfg
    names = [wanted] + ([wanted[:-len(":latest")]] if wanted.endswith(":latest") else [])
    try:
        for name_ in names[:-1]:
            try:
                return app.store.resolve(cfg.alias_target(name_) or name_)
            except ModelNotFound:
                continue
        return app.store.resolve(cfg.alias_target(names[-1]) or names[-1])
    except ModelNotFound:       # named as the client named it: an HTTP client is not told oracd's paths
        raise ModelNotFound(f"model {wanted!r} not found; GET /v1/models or /api/tags lists the models oracd serves",
                            {"model": wanted}) from None


def carries_output(obj: Dict[str, Any]) -> bool:
    """Does this streamed event carry any of the answer (text, reasoning, a tool call)?"""
    if obj.get("content") or obj.get("text"):
        return True
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls") or choice.get("text"):
            return True
    return False


async def run(app: "App", model: Optional[str], gen: core.Gen, llama_path: str,
              on_event: Optional[OnEvent] = None, api: str = "http",
              keep_alive: Optional[float] = None, num_ctx: Optional[int] = None) -> Outcome:
    """Generate; returns llama-server's JSON answer (None once a stream has ended) and the timings.

    ``llama_path``: /v1/chat/completions or /v1/completions.  With ``on_event`` the
    answer is streamed and every event goes to it as llama-server sent it.
    """
    t0 = time.perf_counter()
    if not app.accepting:
        raise ShuttingDown()
    path = resolve(app, model)
    cfg = app.cfg
    prof = cfg.profile_for(path.name) or Profile(model=path.name)
    body = core.llama_body(gen, prof, cfg)
    deadline = Deadline(cfg.http.request_timeout,
                        lambda s: GenerationTimeout(f"Generation timed out after {s:g} seconds", {"timeout": s}))
    # the header read and the memory figures are file and /proc reads: off the event loop (cached after the first)
    await app.check_loadable(path)
    sent = False
    asked: list = []
    n = body.get("max_tokens")
    collect = on_event is None and (n is None or n < 0 or n > cfg.llama.stream_above_tokens)
    out = jsonanswer.decide(gen, prof)        # a schema oracd constrains itself: compact, maybe fast-forwarded

    async def deliver(obj: Dict[str, Any]) -> None:
        nonlocal sent
        try:
            await on_event(obj)           # type: ignore[misc]
        except (OSError, aiohttp.ClientError) as exc:     # the client's side, not llama-server's
            raise ClientGone(str(exc)) from None
        sent = sent or carries_output(obj)

    async def ask_llama(http: Any) -> Any:
        if on_event is None and not collect:      # short: one response, the fastest path
            return await http.post(llama_path, dict(body, stream=False))
        if collect:                               # long: streamed from llama-server, answered whole
            got: list = []
            events = http.events(llama_path, dict(body, stream_options={"include_usage": True}))
            async with aclosing(events):
                async for obj in events:
                    got.append(obj)
            return core.assemble(got, chat="messages" in body)
        events = http.events(llama_path, body)
        async with aclosing(events):
            async for obj in events:
                await deliver(obj)
        return None

    async def ask_json(http: Any, json_out: JsonOutput, batch_invariant: Optional[bool]) -> Any:
        shape = jsonanswer.Shape("messages" in body, path.name, int(time.time()))

        async def on_delta(text: str) -> None:
            await deliver(shape.delta(text))

        async def unseen(text: str) -> None:      # long: streamed from llama-server (a hang-up stops it at once)
            pass

        t = time.perf_counter()
        result = await generate_json(
            http, path.name, json_out.schema, sampling_of(body), body["max_tokens"],
            prompt=body.get("prompt"), messages=body.get("messages"),
            template_kwargs=body.get("chat_template_kwargs"),
            on_delta=on_delta if on_event is not None else (unseen if collect else None),
            use_fast_forward=json_out.use_fast_forward(batch_invariant))
        if on_event is None:
            return shape.answer(result, time.perf_counter() - t)
        for obj in shape.tail(result, time.perf_counter() - t):
            await deliver(obj)
        return None

    async def ask(child: Any, _relay: Any) -> Any:     # streams to its own client (on_event), not to relay
        asked.append(time.perf_counter())
        try:
            return await (ask_json(child.http, out, child.batch_invariant) if out is not None
                          else ask_llama(child.http))
        except (LlamaHTTPError, aiohttp.ClientError, OSError) as exc:
            if sent:
                raise GenerationFailed("llama-server failed in the middle of a streamed answer; not retried, "
                                       "since the text already sent would be repeated",
                                       {"reason": "stream_interrupted", "retryable": True}) from exc
            raise

    app.requests_in_flight += 1
    try:
        with deadline.scope():
            await apply_num_ctx(app, path, num_ctx)          # off unless [http] apply_num_ctx
            data = await fetch(app.door, path, body, cfg, ask=ask)
    finally:
        app.requests_in_flight -= 1
        if keep_alive is not None:       # after the request: "0" returns to the default right away
            app.door.set_keep_alive(path.name, keep_alive)
    app.generations += 1
    total = time.perf_counter() - t0
    app.prom.observe_http_generation(api, total)
    return Outcome(path, data, (asked[0] if asked else t0) - t0, total)
