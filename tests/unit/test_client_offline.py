"""The client library (client/) without llama.cpp: its interface, socket resolution, no daemon at all, and the
transport edges a real daemon does not produce on cue (a connection dropped mid-request, answers out of order),
against a scripted JSON-RPC server on a Unix socket.  The same client against a real oracd: real/test_client.py."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import anyio
import pytest

from helpers import REPO, SMOL, free_port

from oracd_client import OracdClient, call_sync
from oracd_client.compat import LlamaCppClient
from oracd_client.exceptions import ConnectionLost, OracdUnavailable
from oracd_protocol.errors import OracError
from oracd_protocol.names import DEV_SOCKET, SYSTEM_SOCKET, default_socket_path

pytestmark = pytest.mark.anyio


@pytest.fixture
def no_daemon(tmp_path, monkeypatch):
    path = tmp_path / "nobody-here.sock"
    monkeypatch.setenv("ORACD_SOCKET", str(path))
    monkeypatch.delenv("ORAC_MODELS_PATH", raising=False)
    return path

# ---------------------------------------------------------------------- imports and interface
def test_standalone_imports_are_the_client():
    from orac.llama_cpp_client import LlamaCppClient as L
    from orac.models import PromptResponse as P

    import oracd_client
    import orac
    assert L is oracd_client.LlamaCppClient is LlamaCppClient
    assert P is oracd_client.PromptResponse
    assert Path(orac.__file__).parent == REPO / "client" / "orac"
    assert set(P.model_fields) == {"response", "elapsed_ms", "model", "prompt", "finish_reason", "usage"}
    assert not P.model_fields["finish_reason"].is_required() and not P.model_fields["usage"].is_required()


def test_old_interface_is_kept():
    def sig(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values() if p.name != "self"]

    E = inspect.Parameter.empty
    assert sig(LlamaCppClient.__init__)[:1] == [("models_path", None)]
    assert sig(LlamaCppClient.list_models) == []
    assert sig(LlamaCppClient.generate) == [
        ("model", E), ("prompt", E), ("stream", False), ("temperature", 0.7), ("top_p", 0.7), ("top_k", 40),
        ("max_tokens", None), ("verbose", False), ("timeout", 30)]
    assert sig(LlamaCppClient.start_server) == [
        ("model", E), ("host", "127.0.0.1"), ("port", 8080), ("temperature", 0.7), ("top_p", 0.7), ("top_k", 40)]
    assert sig(LlamaCppClient.quantize_model) == [
        ("input_model", E), ("output_model", E), ("quantization_type", "q4_k")]
    for name in ("list_models", "generate", "start_server", "quantize_model", "_ensure_server_running",
                 "_start_internal_server", "_stop_internal_server", "aclose"):
        assert inspect.iscoroutinefunction(getattr(LlamaCppClient, name)), name
    ann = {n: inspect.signature(getattr(LlamaCppClient, n)).return_annotation
           for n in ("list_models", "generate", "start_server", "quantize_model")}
    assert ann == {"list_models": "List[Dict[str, Any]]", "generate": "PromptResponse",
                   "start_server": "subprocess.Popen", "quantize_model": "bool"}


def test_socket_path_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ORACD_SOCKET", str(tmp_path / "x.sock"))
    assert default_socket_path() == str(tmp_path / "x.sock")
    assert LlamaCppClient().socket_path == str(tmp_path / "x.sock")
    assert LlamaCppClient(socket_path="/elsewhere.sock").socket_path == "/elsewhere.sock"
    monkeypatch.delenv("ORACD_SOCKET")
    expected = SYSTEM_SOCKET if os.path.exists(SYSTEM_SOCKET) else DEV_SOCKET
    assert default_socket_path() == expected
    assert DEV_SOCKET == str(REPO / "run" / "oracd.sock")


async def test_no_daemon_is_a_connection_error_naming_the_socket(no_daemon):
    c = LlamaCppClient()
    calls: List[Callable[[], Awaitable[Any]]] = [
        lambda: c.generate(SMOL, "hello"), c.list_models, lambda: c.quantize_model("a", "b"),
        lambda: c.start_server(SMOL, port=free_port()), c._ensure_server_running]
    for call in calls:
        t0 = time.monotonic()
        with anyio.fail_after(30):
            with pytest.raises(ConnectionError) as ei:
                await call()
        assert time.monotonic() - t0 < 10
        assert isinstance(ei.value, OracdUnavailable)
        assert not isinstance(ei.value, FileNotFoundError)   # that would read as "model not found"
        msg = str(ei.value)
        assert str(no_daemon) in msg and "oracd" in msg
        assert "systemctl start oracd" in msg and "python -m oracd" in msg and "ORACD_SOCKET" in msg
    with pytest.raises(ConnectionError, match="nobody-here.sock"):
        call_sync("status")
    with pytest.raises(ConnectionError, match="nobody-here.sock"):
        c.models_path   # noqa: B018  (asks oracd for its models dir)


async def test_blank_prompt_is_refused_before_any_io(no_daemon):
    c = LlamaCppClient()
    for prompt in ("", "   ", "\n\t"):
        with pytest.raises(ValueError) as ei:
            await c.generate(SMOL, prompt)
        assert str(ei.value) == "Prompt cannot be empty"


# ---------------------------------------------------------------------- scripted server: transport edges
class ScriptedServer:
    """A JSON-RPC server on a Unix socket whose answers a test scripts (``handler(req, conn_no)``).

    The handler returns ("result", value), ("error", code, message), ("drop",) to close the
    connection without answering, or ("delay", seconds, value) to answer later (concurrently).
    """

    def __init__(self, path: Path, handler: Callable[[Dict[str, Any], int], Any]):
        self.path = path
        self.handler = handler
        self.requests: List[Dict[str, Any]] = []
        self.connections = 0
        self._tasks: set = set()

    async def __aenter__(self) -> "ScriptedServer":
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                req = json.loads(line)
                self.requests.append(req)
                action = self.handler(req, conn_no)
                if action[0] == "drop":
                    break
                if action[0] == "delay":
                    t = asyncio.ensure_future(self._later(writer, req["id"], action[1], action[2]))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
                    continue
                if action[0] == "result":
                    msg = {"jsonrpc": "2.0", "result": action[1], "id": req["id"]}
                else:
                    msg = {"jsonrpc": "2.0", "error": {"code": action[1], "message": action[2]}, "id": req["id"]}
                writer.write(json.dumps(msg).encode() + b"\n")
        finally:
            writer.close()

    @staticmethod
    async def _later(writer: asyncio.StreamWriter, rid: Any, delay: float, value: Any) -> None:
        await asyncio.sleep(delay)
        writer.write(json.dumps({"jsonrpc": "2.0", "result": value, "id": rid}).encode() + b"\n")


def gen_result(req: Dict[str, Any]) -> Dict[str, Any]:
    p = req["params"]
    return {"response": "ok", "elapsed_ms": 1.0, "model": p["model"], "prompt": p["prompt"],
            "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def short_sock(monkeypatch):
    d = Path(f"/tmp/oc-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    monkeypatch.setenv("ORACD_SOCKET", str(d / "s.sock"))
    monkeypatch.delenv("ORAC_MODELS_PATH", raising=False)
    yield d / "s.sock"
    shutil.rmtree(d, ignore_errors=True)


async def test_parameters_sent_to_oracd(short_sock, monkeypatch, tmp_path):
    def handler(req, _):
        m = req["method"]
        if m == "generate":
            return ("result", gen_result(req))
        if m == "list_models":
            return ("result", [])
        if m == "quantize_model":
            return ("result", {"ok": True, "path": "/x"})
        return ("error", -32601, "Method not found")

    monkeypatch.setenv("ORAC_MODELS_PATH", f"{tmp_path}/./models/")
    async with ScriptedServer(short_sock, handler) as srv:
        c = LlamaCppClient()
        with anyio.fail_after(30):
            await c.generate("m", "p1")
            await c.generate("m", "p2", max_tokens=7, timeout=5, top_k=3)
            await c.quantize_model("a", "b")
            await c.list_models()
        await c.aclose()
    reqs = [(r["method"], r["params"]) for r in srv.requests]
    abs_models = str(tmp_path / "models")
    assert reqs[0] == ("list_models", {"models_path": abs_models})         # checked once, before the first use
    assert reqs[1] == ("generate", {"prompt": "p1", "model": "m", "temperature": 0.7, "top_p": 0.7, "top_k": 40,
                                    "max_tokens": None, "timeout": 30.0})
    assert reqs[2][1]["max_tokens"] == 7 and reqs[2][1]["timeout"] == 5.0 and reqs[2][1]["top_k"] == 3
    assert reqs[3] == ("quantize_model", {"input_model": "a", "output_model": "b", "quantization_type": "q4_k",
                                          "overwrite": True})
    assert reqs[4] == ("list_models", {"models_path": abs_models})
    assert len(reqs) == 5 and srv.connections == 1
    assert all(r["jsonrpc"] == "2.0" and isinstance(r["id"], int) for r in srv.requests)


async def test_generate_is_not_resent_after_a_lost_connection_but_idempotent_calls_are(short_sock):
    seen: Dict[str, int] = {}

    def handler(req, conn_no):
        m = req["method"]
        seen[m] = seen.get(m, 0) + 1
        if m == "generate" or seen[m] == 1:
            return ("drop",)         # generate always, and the first try of the others, die in flight
        return ("result", [] if m == "list_models" else {"ok": conn_no})

    async with ScriptedServer(short_sock, handler) as srv:
        c = LlamaCppClient()
        with anyio.fail_after(30):
            with pytest.raises(ConnectionError) as ei:
                await c.generate("m", "hello")
            assert isinstance(ei.value, ConnectionLost)
            assert [r["method"] for r in srv.requests] == ["generate"]       # sent once, never again
            assert await c._ensure_server_running() == {"ok": 3}
            assert await c.list_models() == []
        await c.aclose()
    assert [r["method"] for r in srv.requests] == ["generate", "status", "status", "list_models", "list_models"]


async def test_answers_out_of_order_reach_their_callers(short_sock):
    def handler(req, _):
        i = req["params"]["i"]
        return ("delay", (10 - i) * 0.02, {"i": i})

    async with ScriptedServer(short_sock, handler) as srv:
        rpc = OracdClient()
        with anyio.fail_after(30):
            got = await asyncio.gather(*(rpc.call("echo", {"i": i}) for i in range(10)))
        await rpc.aclose()
    assert [g["i"] for g in got] == list(range(10))
    assert srv.connections == 1


async def test_daemon_errors_map_through_the_shared_table(short_sock):
    from oracd_protocol.errors import ERRORS

    codes = sorted(ERRORS)

    def handler(req, _):
        code = req["params"]["code"]
        return ("error", code, f"message {code}")

    async with ScriptedServer(short_sock, handler):
        rpc = OracdClient()
        with anyio.fail_after(30):
            for code in codes + [-32099]:
                with pytest.raises(OracError) as ei:
                    await rpc.call("x", {"code": code})
                assert type(ei.value) is ERRORS.get(code, OracError) and ei.value.code == code
                assert str(ei.value) == f"message {code}"
        await rpc.aclose()


async def test_connect_is_retried_once_when_oracd_is_not_there_yet(short_sock):
    """A generate that finds no socket (oracd restarting) tries once more before failing: nothing was sent."""
    srv = ScriptedServer(short_sock, lambda req, _: ("result", gen_result(req)))

    async def start_soon() -> None:
        await asyncio.sleep(0.05)     # well inside the client's one reconnect delay (0.2 s)
        await srv.__aenter__()

    starter = asyncio.ensure_future(start_soon())
    c = LlamaCppClient()
    try:
        with anyio.fail_after(30):
            r = await c.generate("m", "late daemon")
        assert r.prompt == "late daemon" and srv.connections == 1
    finally:
        await c.aclose()
        await starter
        await srv.__aexit__()
