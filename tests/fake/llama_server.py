"""A scripted stand-in for llama-server, for the faults the real one cannot show on demand.

``--fault`` (given by the test's wrapper script before oracd's own arguments):

- ``hang-decode``: a GPU hang.  /health keeps answering 200 while the main loop
  never comes back: once a chat completion arrives, it and every later /slots
  request get no answer.
- ``http-500``: a wedged child after memory pressure.  /health 200, every
  completion answers 500 "Compute error.".
- ``wedged-once``: the first process (per ``--state`` dir) is ``http-500``; every later one is
  healthy and answers each completion with "hello".
- ``healthy``: no fault; every completion answers "hello" (for tests of oracd's own front door).
- ``http-400``: every completion is refused as a bad request (a client error, not a wedge).
- ``crash-on-load``: dies by SIGSEGV while "loading" (the AMX crash on its first decode).
- ``slow-load``: /health answers 503 "Loading model" for 3 s, then it is healthy ("hello").
- ``refuses-broken``: a model whose file name contains "broken" fails to load the way llama-server says
  so (an unknown architecture: exit 1); every other model is healthy and answers "hello".
- ``tool-calls``: a model that calls tools (the embedded real ones do not): every chat completion
  answers with some reasoning, a little text and a ``HassTurnOn`` tool call, streamed in fragments
  the way llama-server streams them, or whole; each request's body is saved as ``<state>/last-body.json``.
- in ``healthy``, ``tool-calls`` and ``crash-mid-stream``, a last message ``LONG <n>`` is answered with n pieces
  of 1,000 characters (a long stream, for a client that stops reading).
- ``crash-mid-stream``: the first process (per ``--state`` dir) sends two pieces of a streamed answer and
  dies; every later one is healthy and answers "hello", streamed or not.

Options that combine with any mode (the supervisor's tests):

- ``--crash-after N``: the process dies (exit 1) on its Nth completion request, before answering.
- ``--gated``: slow generation the test controls: each completion waits until ``<state>/release`` exists.
- SIGUSR1: hang without CPU (every request, /health included, is never answered: a frozen process);
  SIGUSR2: hang busy (the main loop spins at 100% CPU forever).
- ``<state>/refuse-load`` exists: the process fails to load its model (exit 1), the way llama-server
  says so; delete it and the next start loads.
- every completion appends ``<model file name> <prompt>`` to ``<state>/served.log`` (the order served), and
  every /health request the process's pid to ``<state>/health.log`` (the probes it answered).

Everything else in the suite runs the real llama-server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from aiohttp import web

# a model thinking, saying a little and calling a tool, in fragments as llama-server streams them
TOOL_EVENTS = [
    {"reasoning_content": "The user wants "}, {"reasoning_content": "the light on."},
    {"content": "Turning it on."},
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "HassTurnOn", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"name": "kitchen'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": ' light", "domain": ["light"]}'}}]},
]
HELP = "usage: llama-server [options]\n  --host HOST   ip address or unix socket path ending in .sock\n"


def main(argv: list) -> int:
    if "--help" in argv:
        print(HELP)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--fault", required=True,
                    choices=["hang-decode", "http-500", "wedged-once", "http-400", "crash-on-load", "healthy",
                             "slow-load", "refuses-broken", "tool-calls", "crash-mid-stream"])
    ap.add_argument("--state", default=None, help="dir that remembers earlier processes (wedged-once)")
    ap.add_argument("--host", required=True)
    ap.add_argument("-m", dest="model", default="")
    ap.add_argument("--port", type=int, default=None, help="TCP (an extra server): --host is then an address")
    ap.add_argument("--crash-after", type=int, default=0, help="die on the Nth completion request")
    ap.add_argument("--gated", action="store_true", help="each completion waits for <state>/release")
    args, _ = ap.parse_known_args(argv)
    fault = args.fault
    if args.state and os.path.exists(os.path.join(args.state, "refuse-load")):
        print("llama_model_load: error loading model: refuse-load is set", flush=True)
        print("main: exiting due to model loading error", flush=True)
        return 1
    if fault == "refuses-broken":
        if "broken" in os.path.basename(args.model):
            print("llama_model_load: error loading model: error loading model architecture: "
                  "unknown model architecture: 'nonexistent'", flush=True)
            print("main: exiting due to model loading error", flush=True)
            return 1
        fault = "healthy"
    if fault == "wedged-once":
        marker = os.path.join(args.state, "wedged-once")
        fault = "healthy" if os.path.exists(marker) else "http-500"
        open(marker, "a").close()
    if fault == "crash-mid-stream":
        marker = os.path.join(args.state, "crashed-once")
        fault = "healthy" if os.path.exists(marker) else "crash-mid-stream"
        open(marker, "a").close()
    if fault == "crash-on-load":
        print("load_tensors: loading model tensors, this can take a while...", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    stuck = asyncio.Event()
    frozen = asyncio.Event()
    served = [0]

    @web.middleware
    async def freezable(request: web.Request, handler):
        if frozen.is_set():
            await asyncio.Event().wait()     # SIGUSR1: nothing is ever answered again
        return await handler(request)

    def spin() -> None:
        while True:                          # SIGUSR2: the main loop never comes back, one core busy
            pass

    async def on_completion(request: web.Request) -> None:
        """The options every mode shares: record, crash after N, wait for the gate."""
        body = await request.json() if request.can_read_body else {}
        prompt = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content", "")
        served[0] += 1
        if args.state:
            with open(os.path.join(args.state, "served.log"), "a") as fh:
                fh.write(f"{os.path.basename(args.model)} {prompt}\n")
        if args.crash_after and served[0] >= args.crash_after:
            os._exit(1)
        if args.gated:
            while not os.path.exists(os.path.join(args.state, "release")):
                await asyncio.sleep(0.02)
    ready_at = time.monotonic() + (3.0 if fault == "slow-load" else 0.0)
    if fault == "slow-load":
        fault = "healthy"

    async def health(_: web.Request) -> web.Response:
        if args.state:
            with open(os.path.join(args.state, "health.log"), "a") as fh:
                fh.write(f"{os.getpid()}\n")
        if time.monotonic() < ready_at:
            return web.json_response({"error": {"code": 503, "message": "Loading model"}}, status=503)
        return web.json_response({"status": "ok"})

    async def slots(_: web.Request) -> web.Response:
        if stuck.is_set():
            await asyncio.Event().wait()     # the main loop never picks the task up
        return web.json_response([{"id": 0, "is_processing": False}])

    async def completions(request: web.Request) -> web.StreamResponse:
        await on_completion(request)
        if fault in ("tool-calls", "crash-mid-stream", "healthy") and request.method == "POST":
            body = await request.json()
            pieces = long_answer(body)
            if pieces:
                return await answer(request, body, [{"content": "x" * 1000}] * pieces)
            if fault == "tool-calls":
                with open(os.path.join(args.state, "last-body.json"), "w") as fh:
                    json.dump(body, fh)
                return await answer(request, body, TOOL_EVENTS)
            if fault == "crash-mid-stream":
                return await answer(request, body, [{"content": "Hel"}, {"content": "lo"}], die_after=2)
            return await answer(request, body, [{"content": "hel"}, {"content": "lo"}])
        if fault == "http-500":
            return web.json_response({"error": {"code": 500, "message": "Compute error.", "type": "server_error"}},
                                     status=500)
        if fault == "http-400":
            return web.json_response({"error": {"code": 400, "message": "bad sampling", "type": "invalid_request"}},
                                     status=400)
        if fault == "healthy":
            return web.json_response({"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        stuck.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def long_answer(body: dict) -> int:
        """A last message "LONG <n>": the answer is n pieces of 1,000 characters (a client that stops reading)."""
        msgs = body.get("messages") or [{}]
        words = str(msgs[-1].get("content") or body.get("prompt") or "").split()
        return int(words[1]) if len(words) == 2 and words[0] == "LONG" and words[1].isdigit() else 0

    async def answer(request: web.Request, body: dict, deltas: list, die_after: int = 0) -> web.StreamResponse:
        """The deltas as one answer (stream: false) or as llama-server's SSE chunks, usage last."""
        usage = {"prompt_tokens": 12, "completion_tokens": len(deltas), "total_tokens": 12 + len(deltas)}
        finish = "tool_calls" if any("tool_calls" in d for d in deltas) else "stop"
        if not body.get("stream"):
            if die_after:
                os._exit(1)
            msg = {"role": "assistant", "content": "".join(d.get("content", "") for d in deltas) or None}
            thinking = "".join(d.get("reasoning_content", "") for d in deltas)
            if thinking:
                msg["reasoning_content"] = thinking
            calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
            if calls:
                msg["tool_calls"] = [{"type": "function", "id": calls[0]["id"], "function": {
                    "name": calls[0]["function"]["name"],
                    "arguments": "".join(c["function"].get("arguments", "") for c in calls)}}]
            return web.json_response({"choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                                      "model": "fake", "object": "chat.completion", "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(obj: dict) -> None:
            await resp.write(b"data: " + json.dumps({"object": "chat.completion.chunk", "model": "fake",
                                                     **obj}).encode() + b"\n\n")

        await event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
        for i, d in enumerate(deltas, 1):
            await event({"choices": [{"index": 0, "delta": d, "finish_reason": None}]})
            if die_after and i == die_after:
                await asyncio.sleep(0.05)
                os._exit(1)
        await event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        await event({"choices": [], "usage": usage, "timings": {"prompt_ms": 1.5, "predicted_ms": 2.5}})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def signals(_: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, frozen.set)
        loop.add_signal_handler(signal.SIGUSR2, spin)

    app = web.Application(middlewares=[freezable])
    app.on_startup.append(signals)
    app.add_routes([web.get("/health", health), web.get("/slots", slots),
                    web.post("/v1/chat/completions", completions), web.post("/completion", completions)])
    if args.port is not None:
        web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=0.5)
    else:
        web.run_app(app, path=args.host, print=None, shutdown_timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
