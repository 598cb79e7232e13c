"""The client library (client/): ORAC's old LlamaCppClient interface against a real oracd + llama-server + SmolLM2.

What needs no daemon (the interface, no daemon at all, transport edges on a scripted server):
unit/test_client_offline.py."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Dict, List, Optional

import anyio
import pytest

from helpers import SMOL, Oracd

from oracd_client import OracdClient
from oracd_client.compat import LlamaCppClient, ManagedServer
from oracd_client.exceptions import ModelsPathNotServed
from oracd_protocol.errors import (GenerationTimeout, InvalidParams, ModelNotFound, QuantizeFailed,
                                   ServerStartFailed)

pytestmark = pytest.mark.anyio
SMOL_STEM = SMOL[:-len(".gguf")]


@pytest.fixture
def env(oracd, monkeypatch):
    """The module's oracd, found through ORACD_SOCKET; no ORAC_MODELS_PATH."""
    monkeypatch.setenv("ORACD_SOCKET", str(oracd.socket))
    monkeypatch.delenv("ORAC_MODELS_PATH", raising=False)
    return oracd


def gen_kw(**kw: Any) -> Dict[str, Any]:
    base = {"temperature": 0.0, "max_tokens": 4, "timeout": 120}
    base.update(kw)
    return base


def daemon_connections(d: Oracd) -> int:
    return d.call("status")["connections"] - 1    # minus the connection asking


async def settled_connections(d: Oracd, timeout: float = 10) -> int:
    """oracd's connection count once clients dropped by earlier tests have been collected and closed."""
    gc.collect()
    deadline = time.monotonic() + timeout
    last = daemon_connections(d)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = daemon_connections(d)
        if now == last:
            return now
        last = now
    return last


def wait_connections(d: Oracd, n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = daemon_connections(d)
        if got == n or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def log_tail(d: Oracd, n: int = 60) -> str:
    """oracd's own log, minus llama-server's chatter (for failure messages)."""
    try:
        lines = d.log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join([ln for ln in lines if '"llama-server"' not in ln][-n:])


def no_errors(results: List[Any], d: Oracd) -> List[Any]:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} failed: {errors[:3]!r}\n{log_tail(d)}"
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- laziness, no daemon
async def test_init_opens_nothing(env):
    before = await settled_connections(env)
    clients = [LlamaCppClient() for _ in range(5)]
    assert daemon_connections(env) == before
    with anyio.fail_after(60):
        await clients[0].list_models()
    assert daemon_connections(env) == before + 1
    await clients[0].aclose()
    assert wait_connections(env, before) == before


# ---------------------------------------------------------------------- generate
async def test_generate_returns_prompt_response(env):
    from orac.models import PromptResponse
    c = LlamaCppClient()
    with anyio.fail_after(150):
        r = await c.generate(SMOL, "Say hello.", **gen_kw(max_tokens=8))
    assert type(r) is PromptResponse
    assert isinstance(r.response, str) and r.response
    assert r.model == SMOL and r.prompt == "Say hello."
    assert r.elapsed_ms > 0
    assert r.finish_reason in ("stop", "length")
    assert set(r.usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert r.usage["prompt_tokens"] > 0 and 0 < r.usage["completion_tokens"] <= 8
    assert r.usage["total_tokens"] == r.usage["prompt_tokens"] + r.usage["completion_tokens"]


async def test_generate_without_gguf_suffix_and_old_flags(env, caplog):
    c = LlamaCppClient()
    with anyio.fail_after(330):
        with caplog.at_level(logging.INFO, logger="oracd_client.compat"):
            r = await c.generate(SMOL_STEM, "Name a colour.", stream=True, verbose=True, **gen_kw())
        assert any("Name a colour." in m for m in caplog.messages)      # verbose logs the exchange
        # old defaults otherwise (max_tokens None: oracd's 512); a longer timeout for a loaded CI box
        r2 = await c.generate(model=SMOL_STEM, prompt="Name a fruit.", timeout=150)
    assert r.model == SMOL_STEM and r.prompt == "Name a colour." and r.usage["completion_tokens"] <= 4
    assert r2.model == SMOL_STEM and 0 < r2.usage["completion_tokens"] <= 512


async def test_generate_missing_model(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        with pytest.raises(FileNotFoundError) as ei:
            await c.generate("no-such-model", "hello")
    assert str(ei.value) == f"Model not found: {env.models_dir / 'no-such-model.gguf'}"
    assert isinstance(ei.value, ModelNotFound) and ei.value.code == ModelNotFound.code
    with anyio.fail_after(60):
        with pytest.raises(FileNotFoundError):
            await c.generate("../etc/passwd", "hello")


async def test_generate_bad_parameters_are_value_errors(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        with pytest.raises(ValueError, match="temperature"):
            await c.generate(SMOL, "hello", temperature=99)
        with pytest.raises(ValueError):
            await c.generate(SMOL, "hello", top_k="many")


async def test_generate_timeout_message(env):
    c = LlamaCppClient()
    for timeout in (0.01, 0.02):
        with anyio.fail_after(60):
            with pytest.raises(Exception) as ei:
                await c.generate(SMOL, "Write a long story about the sea.", max_tokens=200, timeout=timeout)
        assert str(ei.value) == f"Generation timed out after {timeout} seconds"
        assert isinstance(ei.value, GenerationTimeout)
    with anyio.fail_after(150):   # the client (and its connection) still works
        r = await c.generate(SMOL, "Say yes.", **gen_kw())
    assert r.response


async def test_twenty_concurrent_generates_on_one_client(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        await c.list_models()
    conn = c._rpc.connection()
    prompts = [f"Repeat the number {i}." for i in range(20)]
    with anyio.fail_after(300):
        rs = no_errors(await asyncio.gather(*(c.generate(SMOL, p, **gen_kw()) for p in prompts),
                                            return_exceptions=True), env)
    assert [r.prompt for r in rs] == prompts
    assert all(r.usage["completion_tokens"] > 0 for r in rs)
    assert c._rpc.connection() is conn          # all twenty pipelined on the one connection
    assert conn._last_id == 21


async def test_twenty_concurrent_generates_on_five_clients(env):
    clients = [LlamaCppClient() for _ in range(5)]
    jobs = [(clients[i % 5], f"Say the word number {i}.") for i in range(20)]
    with anyio.fail_after(300):
        rs = no_errors(await asyncio.gather(*(c.generate(SMOL, p, **gen_kw()) for c, p in jobs),
                                            return_exceptions=True), env)
    assert [r.prompt for r in rs] == [p for _, p in jobs]
    conns = [c._rpc.connection() for c in clients]
    assert all(x is not None for x in conns) and len({id(x) for x in conns}) == 5
    for c in clients:
        await c.aclose()


async def test_low_level_pipelining_matches_ids(env):
    """The daemon's own echo of each prompt comes back to the call that sent it."""
    rpc = OracdClient()
    prompts = [f"Echo {i} {uuid.uuid4().hex[:6]}" for i in range(12)]
    with anyio.fail_after(300):
        rs = await asyncio.gather(*(rpc.call("generate", {"prompt": p, "model": SMOL, "max_tokens": 2,
                                                          "temperature": 0.0, "timeout": 120}) for p in prompts))
    assert [r["prompt"] for r in rs] == prompts
    await rpc.aclose()


async def test_one_connection_per_event_loop(env):
    c = LlamaCppClient()
    with anyio.fail_after(120):
        await c.list_models()
        other = await anyio.to_thread.run_sync(lambda: asyncio.run(c.list_models()))
        mine = await c.list_models()
    assert [m["name"] for m in other] == [m["name"] for m in mine]
    loops = c._rpc._loops
    assert len(loops) == 2                   # this loop's connection and the thread's
    (other_loop,) = [lp for lp in loops if lp is not asyncio.get_running_loop()]
    assert other_loop.is_closed() and loops[other_loop].conn.closed   # asyncio.run's teardown closed it
    await c.aclose()


# ---------------------------------------------------------------------- list_models, models_path
async def test_list_models_is_oracds_list(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        models = await c.list_models()
    # the fields themselves are oracd's (test_rpc.py::test_list_models_fields): the client hands them on as is
    assert models == env.call("list_models") and SMOL in [m["name"] for m in models]
    assert c.models_path == str(env.models_dir)     # oracd's own models dir by default


async def test_models_path_env_served(env, monkeypatch):
    monkeypatch.setenv("ORAC_MODELS_PATH", str(env.models_dir))
    c = LlamaCppClient()
    assert c.models_path == str(env.models_dir)
    with anyio.fail_after(150):
        assert SMOL in [m["name"] for m in await c.list_models()]
        assert (await c.generate(SMOL, "Hi.", **gen_kw())).response


async def test_models_path_env_not_served(env, monkeypatch, tmp_path):
    monkeypatch.setenv("ORAC_MODELS_PATH", str(tmp_path))
    c = LlamaCppClient()
    assert c.models_path == str(tmp_path)
    with anyio.fail_after(60):
        with pytest.raises(ModelsPathNotServed) as ei:
            await c.list_models()
    err = ei.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, ValueError)
    assert str(tmp_path) in str(err) and str(env.models_dir) in str(err) and "ORAC_MODELS_PATH" in str(err)
    assert err.served == [str(env.models_dir)]
    with anyio.fail_after(60):   # generate refuses too, rather than silently using another dir
        with pytest.raises(ModelsPathNotServed):
            await c.generate(SMOL, "hello")
        with pytest.raises(FileNotFoundError):
            await c.quantize_model(SMOL, "x.gguf", "q8_0")
    explicit = LlamaCppClient(models_path=str(env.models_dir))   # the argument beats the env var
    with anyio.fail_after(60):
        assert await explicit.list_models()


# ---------------------------------------------------------------------- quantize
async def test_quantize_success_and_overwrite(env, tiny_f32):
    stem = f"tiny-{uuid.uuid4().hex[:8]}"
    src = env.models_dir / f"{stem}.gguf"
    shutil.copyfile(tiny_f32, src)
    out = env.models_dir / f"{stem}-q8.gguf"
    c = LlamaCppClient()
    try:
        with anyio.fail_after(300):
            assert await c.quantize_model(stem, f"{stem}-q8", "q8_0") is True
            assert out.is_file() and out.stat().st_size > 0
            names = [m["name"] for m in await c.list_models()]
            assert out.name in names
            first = out.stat().st_ino
            # the old llama-quantize CLI overwrote silently: so does the compat client (overwrite=True)
            assert await c.quantize_model(src.name, out.name, "q8_0") is True
            assert out.stat().st_ino != first
    finally:
        src.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


async def test_quantize_missing_input(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        with pytest.raises(FileNotFoundError) as ei:
            await c.quantize_model("no-such-input", "whatever", "q8_0")
    assert str(ei.value) == f"Input model not found: {env.models_dir / 'no-such-input.gguf'}"


async def test_quantize_errors_are_quantization_errors(env, tiny_f32):
    stem = f"tiny-{uuid.uuid4().hex[:8]}"
    src = env.models_dir / f"{stem}.gguf"
    shutil.copyfile(tiny_f32, src)
    junk = env.models_dir / f"junk-{stem}.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 64)
    c = LlamaCppClient()
    try:
        with anyio.fail_after(120):
            with pytest.raises(Exception) as ei:
                await c.quantize_model(stem, f"{stem}-x", "not_a_type")      # daemon -32602
            assert str(ei.value).startswith("Quantization error: ") and "not_a_type" in str(ei.value)
            assert isinstance(ei.value, InvalidParams) and not isinstance(ei.value, FileNotFoundError)
            with pytest.raises(Exception) as ei:
                await c.quantize_model(junk.name, f"{stem}-y", "q8_0")      # llama-quantize fails
            assert str(ei.value).startswith("Quantization error: ")
            assert isinstance(ei.value, QuantizeFailed)
            with pytest.raises(Exception) as ei:
                await c.quantize_model(stem, stem, "q8_0")                  # daemon refuses in == out
            assert str(ei.value).startswith("Quantization error: ")
        assert not (env.models_dir / f"{stem}-x.gguf").exists() and not (env.models_dir / f"{stem}-y.gguf").exists()
    finally:
        src.unlink(missing_ok=True)
        junk.unlink(missing_ok=True)


# ---------------------------------------------------------------------- start_server
def http(method: str, url: str, body: Optional[Dict[str, Any]] = None, timeout: float = 60,
         headers: Optional[Dict[str, str]] = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read())


async def test_start_server_is_a_popen_for_a_supervised_llama_server(env):
    c = LlamaCppClient()
    port = free_port()
    with anyio.fail_after(180):
        proc = await c.start_server(SMOL, port=port, temperature=0.1)
    try:
        assert isinstance(proc, ManagedServer)
        assert isinstance(proc.pid, int) and proc.pid > 0
        assert proc.args and "--port" in proc.args and str(port) in proc.args
        assert proc.returncode is None and proc.poll() is None
        assert proc.stdin is None and proc.stdout is None and proc.stderr is None
        status, health = await anyio.to_thread.run_sync(http, "GET", f"http://127.0.0.1:{port}/health")
        assert status == 200 and health.get("status") == "ok"
        assert proc.api_key and proc.headers == {"Authorization": f"Bearer {proc.api_key}"}
        with pytest.raises(urllib.error.HTTPError, match="401"):      # the extra server wants its key
            await anyio.to_thread.run_sync(
                http, "POST", f"http://127.0.0.1:{port}/completion", {"prompt": "Once upon a time", "n_predict": 4})
        status, out = await anyio.to_thread.run_sync(
            lambda: http("POST", f"http://127.0.0.1:{port}/completion", {"prompt": "Once upon a time", "n_predict": 4},
                         headers=proc.headers))
        assert status == 200 and isinstance(out.get("content"), str)
        with anyio.fail_after(150):   # the warm path keeps working meanwhile
            assert (await c.generate(SMOL, "Say hi.", **gen_kw())).response
        assert [s["pid"] for s in env.call("status")["http_servers"]] == [proc.pid]
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    finally:
        proc.terminate()
    assert proc.poll() is not None
    assert proc.wait(timeout=30) == proc.returncode
    proc.kill()                        # no-op on an exited server, like Popen
    assert proc.communicate(timeout=1) == (None, None)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # context manager + send_signal: leaving the block stops the server
    port2 = free_port()
    with anyio.fail_after(180):
        proc2 = await c.start_server(SMOL_STEM, port=port2)
    with proc2 as p:
        assert p is proc2 and p.poll() is None
        p.send_signal(0)
        assert p.poll() is None
    assert proc2.returncode is not None
    proc3_port = free_port()
    with anyio.fail_after(180):
        proc3 = await c.start_server(SMOL, port=proc3_port)
    proc3.send_signal(signal.SIGKILL)
    assert proc3.wait(timeout=30) is not None
    assert env.call("status")["http_servers"] == []


async def test_start_server_failures(env):
    c = LlamaCppClient()
    with anyio.fail_after(60):
        with pytest.raises(FileNotFoundError) as ei:
            await c.start_server("no-such-model", port=free_port())
    assert str(ei.value) == f"Model not found: {env.models_dir / 'no-such-model.gguf'}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with anyio.fail_after(60):
            with pytest.raises(Exception) as ei:
                await c.start_server(SMOL, port=port)
    assert str(ei.value).startswith("Failed to start llama server: ")
    assert isinstance(ei.value, ServerStartFailed)
    with anyio.fail_after(60):
        with pytest.raises(Exception) as ei:
            await c.start_server(SMOL, host="8.8.8.8", port=free_port())   # oracd binds loopback only
    assert str(ei.value).startswith("Failed to start llama server: ") and "loopback" in str(ei.value)
    assert not isinstance(ei.value, FileNotFoundError)


# ---------------------------------------------------------------------- internals the old code had
async def test_private_server_helpers(env):
    c = LlamaCppClient()
    with anyio.fail_after(180):
        st = await c._ensure_server_running()
        assert st["child"]["model"] == SMOL and st["socket"] == str(env.socket)
        await c._stop_internal_server()
        assert env.call("status")["child"]["model"] is None
        loaded = await c._start_internal_server(SMOL_STEM)
        assert loaded["model"] == SMOL
        await c._stop_internal_server()
        st = await c._ensure_server_running(SMOL)
        assert st["child"]["model"] == SMOL and st["child"]["state"] == "ready"
        with pytest.raises(FileNotFoundError):
            await c._start_internal_server("no-such-model")
        assert (await c.generate(SMOL, "Hi.", **gen_kw())).response


# ---------------------------------------------------------------------- lifetime
async def test_aclose_and_async_with(env):
    before = await settled_connections(env)
    async with LlamaCppClient() as c:
        with anyio.fail_after(150):
            assert (await c.generate(SMOL, "Hi.", **gen_kw())).response
        assert daemon_connections(env) == before + 1
    assert c._rpc.connection() is None
    assert wait_connections(env, before) == before
    with anyio.fail_after(60):       # still usable after aclose: reconnects
        assert await c.list_models()
    await c.aclose()
    await c.aclose()                 # idempotent
    assert wait_connections(env, before) == before


async def test_garbage_collected_client_closes_its_connection(env):
    before = await settled_connections(env)
    c = LlamaCppClient()
    with anyio.fail_after(60):
        await c.list_models()
    assert daemon_connections(env) == before + 1
    del c
    gc.collect()
    await asyncio.sleep(0.05)
    assert await anyio.to_thread.run_sync(wait_connections, env, before) == before


NO_WARNINGS_SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys, threading
    from orac.llama_cpp_client import LlamaCppClient

    SMOL = sys.argv[1]

    async def main(c):
        r = await c.generate(SMOL, "Hi.", max_tokens=2, temperature=0.0, timeout=120)
        assert r.response is not None
        await c.list_models()
        tmp = LlamaCppClient()
        await tmp.list_models()
        del tmp
        gc.collect()
        await asyncio.sleep(0.05)
        async with LlamaCppClient() as c2:
            await c2.list_models()
        try:
            await c.generate(SMOL, "Hi.", max_tokens=200, timeout=0.01)
        except Exception as e:
            assert "timed out" in str(e)
        await asyncio.gather(*(c.generate(SMOL, f"Say {i}.", max_tokens=2, timeout=120) for i in range(4)))

    c = LlamaCppClient()
    asyncio.run(main(c))
    asyncio.run(main(c))          # a second event loop, same client, no close
    t = threading.Thread(target=lambda: asyncio.run(c.list_models()))
    t.start()
    t.join(120)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(c.list_models())
    loop.run_until_complete(c.aclose())
    loop.close()
    print("done")
""")


def test_no_warnings_at_exit(env, tmp_path):
    script = tmp_path / "no_warnings.py"
    script.write_text(NO_WARNINGS_SCRIPT)
    res = subprocess.run([sys.executable, "-W", "error", str(script), SMOL], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "done"
    assert res.stderr == "", res.stderr


# ---------------------------------------------------------------------- daemon restart
async def test_daemon_restart_between_calls(fresh_oracd, monkeypatch):
    d = fresh_oracd().start()
    monkeypatch.setenv("ORACD_SOCKET", str(d.socket))
    monkeypatch.delenv("ORAC_MODELS_PATH", raising=False)
    c = LlamaCppClient()
    with anyio.fail_after(150):
        assert (await c.generate(SMOL, "Hi.", **gen_kw())).response
    conn1 = c._rpc.connection()
    # 1) stopped and restarted while this loop is blocked: the client only finds out when it next
    #    writes; the stale connection is noticed before the request goes out, so generate just works
    d.stop()
    d2 = fresh_oracd(root=d.root).start()
    with anyio.fail_after(150):
        r = await c.generate(SMOL, "Hi again.", **gen_kw())
    assert r.response and r.prompt == "Hi again."
    conn2 = c._rpc.connection()
    assert conn2 is not conn1 and conn1.closed
    # 2) restarted while the loop runs: the reader sees the hang-up first
    await anyio.to_thread.run_sync(d2.stop)
    with anyio.fail_after(10):
        while not conn2.closed:
            await asyncio.sleep(0.01)
    d3 = await anyio.to_thread.run_sync(lambda: fresh_oracd(root=d.root).start())
    with anyio.fail_after(150):
        assert SMOL in [m["name"] for m in await c.list_models()]
        assert (await c.generate(SMOL, "And again.", **gen_kw())).response
    # 3) down: a clear ConnectionError, and back up: works again, same client
    await anyio.to_thread.run_sync(d3.stop)
    with anyio.fail_after(30):
        with pytest.raises(ConnectionError, match=str(d.socket)):
            await c.generate(SMOL, "Anyone?", **gen_kw())
    await anyio.to_thread.run_sync(lambda: fresh_oracd(root=d.root).start())
    with anyio.fail_after(150):
        assert (await c.generate(SMOL, "Back.", **gen_kw())).response


async def test_oversized_request_fails_alone(env):
    """oracd answers an over-long line with an id-less RequestTooLarge: only the big call gets it."""
    from oracd_protocol.errors import RequestTooLarge
    c = LlamaCppClient()
    with anyio.fail_after(120):
        big, models = await asyncio.gather(c.generate(SMOL, "x " * 1_000_000, timeout=60), c.list_models(),
                                           return_exceptions=True)
    assert isinstance(big, RequestTooLarge), big
    assert isinstance(models, list) and models
    with anyio.fail_after(150):
        assert (await c.generate(SMOL, "Still there?", **gen_kw())).response
