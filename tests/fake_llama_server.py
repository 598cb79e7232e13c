"""A stand-in llama-server for the one fault the real one cannot show on demand: a stuck decode loop.

A GPU hang leaves llama-server's HTTP threads alive (/health keeps answering
200) while its main loop never comes back.  This fake behaves like that once
a chat completion arrives: the completion and every later /slots request
never get an answer, /health stays 200.  Everything else in the suite runs the
real llama-server.
"""
from __future__ import annotations

import asyncio
import sys

from aiohttp import web

HELP = "usage: llama-server [options]\n  --host HOST   ip address or unix socket path ending in .sock\n"


def main(argv: list) -> int:
    if "--help" in argv:
        print(HELP)
        return 0
    host = argv[argv.index("--host") + 1]
    stuck = asyncio.Event()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slots(_: web.Request) -> web.Response:
        if stuck.is_set():
            await asyncio.Event().wait()     # the main loop never picks the task up
        return web.json_response([{"id": 0, "is_processing": False}])

    async def completions(_: web.Request) -> web.Response:
        stuck.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/slots", slots),
                    web.post("/v1/chat/completions", completions)])
    web.run_app(app, path=host, print=None, shutdown_timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
