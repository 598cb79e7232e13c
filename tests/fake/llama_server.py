"""A scripted stand-in for llama-server, for the faults the real one cannot show on demand.

``--fault`` (given by the test's wrapper script before oracd's own arguments):

- ``hang-decode``: a GPU hang.  /health keeps answering 200 while the main loop
  never comes back: once a chat completion arrives, it and every later /slots
  request get no answer.
- ``http-500``: a wedged child after memory pressure.  /health 200, every
  completion answers 500 "Compute error.".
- ``crash-on-load``: dies by SIGSEGV while "loading" (the AMX crash on its first decode).

Everything else in the suite runs the real llama-server.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

HELP = "usage: llama-server [options]\n  --host HOST   ip address or unix socket path ending in .sock\n"


def main(argv: list) -> int:
    if "--help" in argv:
        print(HELP)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--fault", required=True, choices=["hang-decode", "http-500", "crash-on-load"])
    ap.add_argument("--host", required=True)
    args, _ = ap.parse_known_args(argv)
    if args.fault == "crash-on-load":
        print("load_tensors: loading model tensors, this can take a while...", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    stuck = asyncio.Event()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slots(_: web.Request) -> web.Response:
        if stuck.is_set():
            await asyncio.Event().wait()     # the main loop never picks the task up
        return web.json_response([{"id": 0, "is_processing": False}])

    async def completions(_: web.Request) -> web.Response:
        if args.fault == "http-500":
            return web.json_response({"error": {"code": 500, "message": "Compute error.", "type": "server_error"}},
                                     status=500)
        stuck.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/slots", slots),
                    web.post("/v1/chat/completions", completions), web.post("/completion", completions)])
    web.run_app(app, path=args.host, print=None, shutdown_timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
