"""HTTP to the supervised llama-server, with aiohttp.

Why aiohttp: over a Unix socket its /health round trip measured p50 0.28 ms
against 1.08 ms for httpx's async client.  One ``ClientSession`` is created
lazily on first use, reused for every request (keep-alive), and dropped on a
connection error so the next call starts clean (a restarted llama-server is a
new peer).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import aiohttp


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

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"llama-server HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class LlamaHTTP:
    """A reusable client for one llama-server endpoint (rebuilt when the endpoint changes)."""

    def __init__(self, endpoint: LlamaEndpoint):
        self.endpoint = endpoint
        self._session: Optional[aiohttp.ClientSession] = None
        self._headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.endpoint.unix_path:
                conn: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.endpoint.unix_path, limit=0)
            else:
                conn = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(
                base_url=self.endpoint.base_url, connector=conn, headers=self._headers,
                json_serialize=json.dumps, timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _drop_session(self) -> None:
        try:
            await self.close()
        except Exception:  # pragma: no cover - closing a broken session is best-effort
            pass

    async def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        """One call; JSON in, JSON out.  Raises LlamaHTTPError or aiohttp.ClientError."""
        session = self._get_session()
        try:
            async with session.request(method, path, json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError):
            await self._drop_session()
            raise
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode("utf-8", "replace")
        if status >= 400:
            raise LlamaHTTPError(status, _error_text(data), data)
        return data

    async def health(self) -> int:
        """HTTP status of GET /health (200 ready, 503 loading)."""
        session = self._get_session()
        try:
            async with session.get("/health") as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, OSError):
            await self._drop_session()
            raise


def _error_text(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(data)[:500]
