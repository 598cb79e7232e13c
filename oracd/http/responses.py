"""What the HTTP APIs send besides plain JSON: streamed responses (Ollama's NDJSON, OpenAI's SSE) and
HTTP-level refusals with their own status.

A stream starts with its first piece, so an error before it is a plain HTTP error with its status;
after it, the error is the stream's last piece.  A client that reads nothing for
``server.send_timeout`` counts as gone, as on the JSON-RPC socket.
"""
from __future__ import annotations

import json
from typing import Any

import anyio
from aiohttp import web

from oracd_protocol.errors import InvalidRequest


class HttpError(InvalidRequest):
    """An HTTP-level refusal (unknown route, wrong method, slow body) with its own status (-32600 on the wire)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# A write that leaves less than this in the transport's buffer never waits for the client (asyncio's and
# uvloop's default high-water mark is 64 KiB): no timeout scope for it, a token's chunk costs less.
_NEVER_BLOCKS = 16 * 1024


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
        transport = self.request.transport
        if transport is not None and transport.get_write_buffer_size() + len(data) < _NEVER_BLOCKS:
            await self.resp.write(data)     # below the transport's high-water mark: it cannot wait on the client
            return
        try:
            with anyio.fail_after(self.send_timeout):
                await self.resp.write(data)
        except TimeoutError:
            raise ConnectionResetError(f"the client read nothing for {self.send_timeout:g} s") from None

    async def _last(self, data: bytes) -> None:
        """An error after the stream began: ``data`` as the last piece, then the end (a client already gone is
        not a second error)."""
        try:
            await self.resp.write(data)
            await self.resp.write_eof()
        except (OSError, RuntimeError):
            pass

    async def _end(self, trailer: bytes = b"") -> None:
        """The normal end: ``trailer`` (the format's end marker, if it has one), then EOF; an empty stream is
        started first, so the client still gets a complete response."""
        if not self.started:
            self.started = True
            await self.resp.prepare(self.request)
        if trailer:
            await self.resp.write(trailer)
        await self.resp.write_eof()

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
        await self._last(json.dumps({"error": message}).encode() + b"\n")

    async def finish(self) -> None:
        await self._end()


class SSE(Streamed):
    """A server-sent-events response (OpenAI's streaming)."""
    content_type = "text/event-stream"

    async def send(self, obj: Any) -> None:
        await self.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    async def send_error(self, error: web.Response) -> None:
        """An error after the stream began: one last event with the error object, then the end."""
        await self._last(b"data: " + bytes(error.body) + b"\n\n")

    async def finish(self) -> None:
        await self._end(b"data: [DONE]\n\n")
