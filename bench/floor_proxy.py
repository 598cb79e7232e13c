"""The floor of one Python hop: a minimal aiohttp proxy for /v1/chat/completions, nothing else.

Why: the HTTP phase's first-token target (at most 1 ms over llama-server's own /v1) is about one extra
process hop on a box whose cores llama-server keeps busy.  This proxy does the least such a hop can
do (read the body, one upstream request on the same aiohttp client oracd uses, relay the SSE lines), so
the phase measures it side by side with oracd and direct: what oracd adds beyond it is oracd's own.

``python -m bench.floor_proxy LISTEN_SOCK UPSTREAM_SOCK``; bench/http.py starts it.
"""
from __future__ import annotations

import sys

from aiohttp import ClientSession, UnixConnector, web


def make_app(upstream: str) -> web.Application:
    sessions = {}

    async def chat(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        if "s" not in sessions:
            sessions["s"] = ClientSession(base_url="http://llama", connector=UnixConnector(path=upstream, limit=0))
        s = sessions["s"]
        if not body.get("stream"):
            async with s.post("/v1/chat/completions", json=body) as r:
                return web.Response(body=await r.read(), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        # llama-server closes the connection after a streamed answer
        async with s.post("/v1/chat/completions", json=body, headers={"Connection": "close"}) as r:
            started = False
            while True:
                line = await r.content.readline()
                if not line:
                    break
                if not line.startswith(b"data: "):
                    continue
                if not started:
                    await resp.prepare(req)
                    started = True
                await resp.write(line + b"\n")
        await resp.write_eof()
        return resp

    async def close(_app: web.Application) -> None:
        if "s" in sessions:
            await sessions["s"].close()

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat)])
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(sys.argv[2]), path=sys.argv[1], print=None, access_log=None)
