"""HTTP to the supervised llama-server, with aiohttp.

Why aiohttp: over a Unix socket its /health round trip measured p50 0.28 ms
against 1.08 ms for httpx's async client.  One ``ClientSession`` is created
lazily on first use, reused for every request (keep-alive), and dropped on a
connection error so the next call starts clean (a restarted llama-server is a
new peer).
"""
from __future__ import annotations

import json
from contextlib import aclosing, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Tuple

import aiohttp
import anyio


class LlamaEndpoint:
    """Where llama-server listens: a Unix socket path, or 127.0.0.1:port with an API key."""

    def __init__(self, unix_path: Optional[str] = None, port: Optional[int] = None,
                 api_key: Optional[str] = None, host: str = "127.0.0.1"):
        self.unix_path = unix_path
        self.host = host
        self.port = port
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        # the host part is ignored on a Unix socket but must be a valid URL
        if self.unix_path:
            return "http://localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"


class LlamaHTTPError(Exception):
    """llama-server answered with a non-2xx status; ``message`` is its own error text."""

    def __init__(self, status: int, message: str):
        super().__init__(f"llama-server HTTP {status}: {message}")
        self.status = status
        self.message = message


_CLOSE = {"Connection": "close"}


class LlamaHTTP:
    """A reusable client for one llama-server endpoint (rebuilt when the endpoint changes).

    Two sessions: generations use at most ``max_connections`` kept-alive connections
    (llama-server's ``parallel``: it cannot run more at once, so further requests wait
    here, in order, on our own semaphore -- see ``__init__`` for why not aiohttp's), and probes (/health, /slots) have one of their own, so they are
    never stuck behind generations.  Why bound it: each kept-alive connection ties up
    one of llama-server's fixed HTTP threads (parallel + 4) while idle; with more
    connections than threads, requests on the extra ones were seen to stall for
    seconds, some for good (20 concurrent generates on 2 slots).
    """

    def __init__(self, endpoint: LlamaEndpoint, max_connections: int = 0):
        self.endpoint = endpoint
        # The bound is ours, not aiohttp's: a request waiting inside aiohttp's connector for a free
        # connection is *cancelled* (a bare CancelledError) when the session closes -- which it does when
        # llama-server dies -- and that cancellation escaped the request, closing its client's connection
        # with no answer.  Waiting here, a request that gets in after the close sees a connection error
        # like every other request on the dead child, and is retried.
        self._gates = {"gen": anyio.Semaphore(max_connections) if max_connections > 0 else None,
                       "probe": anyio.Semaphore(1)}
        self._sessions: Dict[str, aiohttp.ClientSession] = {}
        self._closed = False
        self._headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}

    @asynccontextmanager
    async def _turn(self, kind: str = "gen") -> AsyncIterator[None]:
        """One of the ``kind`` connections (FIFO: anyio's semaphore serves waiters in order)."""
        gate = self._gates[kind]
        if gate is None:
            yield
            return
        async with gate:
            yield

    def _get_session(self, kind: str = "gen") -> aiohttp.ClientSession:
        if self._closed:          # the child is gone: never open a session that nobody would close
            raise aiohttp.ClientConnectionError("llama-server connection closed (the child has exited)")
        session = self._sessions.get(kind)
        if session is None or session.closed:
            if self.endpoint.unix_path:
                conn: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.endpoint.unix_path, limit=0)
            else:
                conn = aiohttp.TCPConnector(limit=0)
            session = self._sessions[kind] = aiohttp.ClientSession(
                base_url=self.endpoint.base_url, connector=conn, headers=self._headers,
                json_serialize=json.dumps, timeout=aiohttp.ClientTimeout(total=None),
            )
        return session

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def _drop_session(self, kind: str = "gen") -> None:
        session = self._sessions.pop(kind, None)
        if session is not None:
            try:
                await session.close()
            except Exception:  # pragma: no cover - closing a broken session is best-effort
                pass

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            raw = await resp.read()
            try:
                data: Any = json.loads(raw)
            except ValueError:
                data = raw.decode("utf-8", "replace")
            raise LlamaHTTPError(resp.status, _error_text(data))

    async def post(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST a JSON body, return the JSON answer (LlamaHTTPError on a non-2xx status)."""
        async with self._turn():
            try:
                async with self._get_session().post(path, json=body) as resp:
                    await self._raise_for_status(resp)
                    return json.loads(await resp.read())
            except (aiohttp.ClientError, OSError):
                await self._drop_session()
                raise

    async def apply_template(self, messages: Any, template_kwargs: Optional[Dict[str, Any]] = None) -> str:
        """The exact prompt text the model's chat template makes of ``messages`` (POST /apply-template)."""
        body: Dict[str, Any] = {"messages": messages}
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        return str((await self.post("/apply-template", body))["prompt"])

    async def slot_action(self, slot: int, action: str, filename: Optional[str] = None) -> Dict[str, Any]:
        """POST /slots/{slot}?action=save|restore|erase (needs --slot-save-path for save and restore)."""
        return await self.post(f"/slots/{slot}?action={action}", {"filename": filename} if filename else {})

    async def chat(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST /v1/chat/completions (not streamed) on a kept-alive connection.

        The fast path: one request, one answer, no per-token wake-ups of oracd
        (on a 2-core box those wake-ups steal time from llama-server's threads).
        Cancelling the call closes the connection, and llama-server drops the
        task when it notices, which takes a second of quiet on its result queue
        (see api/generate.py for when oracd streams instead).
        Returns {content, finish_reason, usage}.
        """
        async with self._turn():
            try:
                async with self._get_session().post("/v1/chat/completions", json=dict(body, stream=False)) as resp:
                    await self._raise_for_status(resp)
                    data = json.loads(await resp.read())
            except (aiohttp.ClientError, OSError):
                await self._drop_session()
                raise
        choice = (data.get("choices") or [{}])[0]
        return {"content": (choice.get("message") or {}).get("content") or "",
                "finish_reason": choice.get("finish_reason"), "usage": data.get("usage") or {}}

    async def chat_stream(self, body: Dict[str, Any],
                          on_delta: Optional[Callable[[str], Awaitable[None]]] = None) -> Dict[str, Any]:
        """POST /v1/chat/completions with stream=true, calling ``on_delta`` for each piece of text.

        Streamed when the caller wants chunks (generate stream=true) or the generation
        may be long: llama-server stops a streamed generation as soon as the
        connection closes, so a timeout or a vanished client frees the slot at once.
        Returns {content, finish_reason, usage} like ``chat``.
        """
        parts = []
        finish = None
        usage: Dict[str, Any] = {}
        events = self._events("/v1/chat/completions", dict(body, stream=True, stream_options={"include_usage": True}))
        async with aclosing(events):
            async for obj in events:
                for choice in obj.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        if on_delta is not None:
                            await on_delta(text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                if obj.get("usage"):
                    usage = obj["usage"]
        return {"content": "".join(parts), "finish_reason": finish, "usage": usage}

    async def _events(self, path: str, body: Dict[str, Any]) -> AsyncIterator[Dict[str, Any]]:
        """POST a streamed request and yield each server-sent event's JSON, until ``[DONE]`` or the end.

        Closing the generator (``aclosing``) closes the connection, which is what stops the generation
        in llama-server.  llama-server closes the connection after a streamed answer although it says
        keep-alive; "Connection: close" keeps that dead connection out of aiohttp's pool.
        """
        async with self._turn():
            try:
                async with self._get_session().post(path, json=body, headers=_CLOSE) as resp:
                    await self._raise_for_status(resp)
                    while True:
                        line = await resp.content.readline()
                        if not line:
                            return
                        if not line.startswith(b"data: "):
                            continue
                        payload = line[6:].strip()
                        if payload == b"[DONE]":
                            return
                        obj = json.loads(payload)
                        if "error" in obj:
                            raise LlamaHTTPError(500, _error_text(obj))
                        yield obj
            except (aiohttp.ClientError, OSError):
                await self._drop_session()
                raise

    def events(self, path: str, body: Dict[str, Any]) -> AsyncIterator[Dict[str, Any]]:
        """Each server-sent event's JSON of a streamed POST, as llama-server sends it (tool-call and
        reasoning deltas included): for the HTTP APIs, which translate every field.  Close it with
        ``aclosing``: that closes the connection and stops the generation."""
        return self._events(path, dict(body, stream=True))

    async def completion(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST /completion (a raw prompt, the caller's own template), not streamed: like ``chat``.
        Returns {content, finish_reason, usage, timings}."""
        data = await self.post("/completion", dict(body, stream=False))
        return _completion_result(data, str(data.get("content") or ""))

    async def completion_stream(self, body: Dict[str, Any],
                                on_delta: Optional[Callable[[str], Awaitable[None]]] = None) -> Dict[str, Any]:
        """POST /completion with stream=true (stops the moment the connection closes), like ``chat_stream``."""
        parts: list = []
        last: Dict[str, Any] = {}
        events = self._events("/completion", dict(body, stream=True))
        async with aclosing(events):
            async for obj in events:
                text = obj.get("content")
                if text:
                    parts.append(text)
                    if on_delta is not None:
                        await on_delta(text)
                if obj.get("stop"):
                    last = obj
                    break
        return _completion_result(last, "".join(parts))

    async def tokenize(self, text: str, with_pieces: bool = False) -> list:
        """POST /tokenize: ``text``'s token ids as llama-server tokenizes a piece of a prompt (no BOS, control
        tokens written as text), or (id, piece) pairs with ``with_pieces`` (a piece that is not whole UTF-8 text
        is a list of bytes)."""
        data = await self.post("/tokenize", {"content": text, "add_special": False, "parse_special": False,
                                             "with_pieces": with_pieces})
        toks = data.get("tokens") or []
        return [(t["id"], t["piece"]) for t in toks] if with_pieces else list(toks)

    async def completion_ids(self, body: Dict[str, Any],
                             on_delta: Optional[Callable[[str], Awaitable[None]]] = None) -> Dict[str, Any]:
        """POST /completion with return_tokens: {content, tokens, probs, stop_type, id_slot, usage}.

        For fast-forward's steps (api/fastforward.py): ``tokens`` are the sampled ids, ``id_slot`` the slot
        that ran it (the next step asks for the same one, whose cache holds the prefix).  Streamed when
        ``on_delta`` is given (each piece of text as it comes; closing the stream stops the generation).
        ``probs``: with ``n_probs`` in the body, each token's id and bytes (llama-server leaves out the
        token that completed a stop word).
        """
        body = dict(body, return_tokens=True)
        if on_delta is None:
            data = await self.post("/completion", dict(body, stream=False))
            content, tokens = str(data.get("content") or ""), list(data.get("tokens") or [])
            probs = list(data.get("completion_probabilities") or [])
        else:
            parts: list = []
            tokens, probs = [], []
            data = {}
            events = self._events("/completion", dict(body, stream=True))
            async with aclosing(events):
                async for obj in events:
                    tokens.extend(obj.get("tokens") or ())
                    probs.extend(obj.get("completion_probabilities") or ())
                    text = obj.get("content")
                    if text:
                        parts.append(text)
                        await on_delta(text)
                    if obj.get("stop"):
                        data = obj
                        break
            content = "".join(parts)
        out = _completion_result(data, content)
        out.update(tokens=tokens, probs=probs, stop_type=data.get("stop_type"), id_slot=data.get("id_slot", -1),
                   tokens_predicted=int(data.get("tokens_predicted") or 0))
        return out

    async def slots(self) -> Tuple[int, Any]:
        """(HTTP status, body) of GET /slots: what each slot is doing, with its progress counters.

        The supervisor reads it while generations are in flight: a slot whose
        counters stop moving (or a /slots that is not answered) is a stuck
        decode, e.g. a GPU hang or a frozen RPC worker, while /health stays 200.
        501 means slots are disabled (--no-slots).
        """
        status, raw = await self._probe("/slots")
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None

    async def metrics(self) -> str:
        """GET /metrics (llama-server started with --metrics): Prometheus text."""
        status, raw = await self._probe("/metrics")
        if status >= 400:
            raise LlamaHTTPError(status, raw[:200].decode("utf-8", "replace"))
        return raw.decode("utf-8", "replace")

    async def props(self) -> Dict[str, Any]:
        """GET /props on the probe session: the loaded model's settings (``default_generation_settings.n_ctx``
        is the context one request gets), for the HTTP APIs' /api/ps."""
        status, raw = await self._probe("/props")
        if status >= 400:
            raise LlamaHTTPError(status, raw[:200].decode("utf-8", "replace"))
        return json.loads(raw)

    async def health(self) -> int:
        """HTTP status of GET /health (200 ready, 503 loading)."""
        return (await self._probe("/health"))[0]

    async def _probe(self, path: str) -> Tuple[int, bytes]:
        """GET ``path`` on the probe session (never stuck behind generations): (status, body)."""
        async with self._turn("probe"):
            try:
                async with self._get_session("probe").get(path) as resp:
                    return resp.status, await resp.read()
            except (aiohttp.ClientError, OSError):
                await self._drop_session("probe")
                raise


def _completion_result(data: Dict[str, Any], content: str) -> Dict[str, Any]:
    """/completion's answer in the shape ``chat`` returns (finish_reason and usage as OpenAI's)."""
    predicted, evaluated = int(data.get("tokens_predicted") or 0), int(data.get("tokens_evaluated") or 0)
    timings = data.get("timings") or {}
    return {"content": content, "finish_reason": "length" if data.get("stop_type") == "limit" else "stop",
            "usage": {"prompt_tokens": evaluated, "completion_tokens": predicted, "total_tokens": evaluated + predicted,
                      "prompt_tokens_details": {"cached_tokens": int(timings.get("cache_n") or 0)}}}


def _error_text(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(data)[:500]
