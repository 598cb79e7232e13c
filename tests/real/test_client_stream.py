"""LlamaCppClient.generate_stream() and per-call notifications in the transport, against a real oracd.

The stream's chunks concatenate to the final text (and to generate()'s at temperature 0); leaving a
stream early -- break, aclose(), cancellation -- frees the llama-server slot (its own connection is
closed and oracd aborts the generation); notifications reach only the call they name.
"""
from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Dict, List, Tuple

import pytest

from helpers import SMOL, write_tiny_f32
from llama_direct import busy_slots
from oracd_client import GenerateStream, LlamaCppClient, OracdClient
from oracd_client.sync import call_sync

pytestmark = pytest.mark.anyio
MODEL = SMOL[:-len(".gguf")]
LONG = "Write a very long story about a dragon who learns to sing."


async def wait_idle(endpoint: str, timeout: float = 5.0) -> float:
    """Seconds until no llama-server slot is busy (fails after ``timeout``); the loop keeps running."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if busy_slots(endpoint) == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"llama-server slot still busy after {timeout}s")


async def wait_busy(endpoint: str, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while busy_slots(endpoint) == 0:
        assert time.monotonic() - t0 < timeout, "the generation never started"
        await asyncio.sleep(0.01)


@pytest.fixture
def client(oracd):
    return LlamaCppClient(socket_path=str(oracd.socket))


@pytest.fixture
def endpoint(oracd):
    return oracd.call("status")["child"]["endpoint"]


async def test_chunks_concatenate_to_the_final_text(client):
    stream = client.generate_stream(MODEL, "Name three colours of the rainbow.", temperature=0, max_tokens=40)
    assert isinstance(stream, GenerateStream)
    chunks: List[str] = []
    times: List[float] = []
    async for text in stream:
        assert isinstance(text, str) and text
        chunks.append(text)
        times.append(time.monotonic())
    assert len(chunks) >= 2, chunks
    assert times[-1] > times[0]                           # they arrived over time, not in one piece
    assert "".join(chunks) == stream.result["response"] == stream.response.response
    assert stream.response.usage["completion_tokens"] == stream.result["usage"]["completion_tokens"] <= 40
    assert stream.response.model == MODEL and stream.response.elapsed_ms > 0
    plain = await client.generate(MODEL, "Name three colours of the rainbow.", temperature=0, max_tokens=40)
    assert plain.response == "".join(chunks)
    async for _ in stream:                                # exhausted: stays exhausted
        raise AssertionError("a finished stream yielded again")


async def test_system_prompt_and_async_with(client):
    async with client.generate_stream(MODEL, "What are you?", temperature=0, max_tokens=16,
                                      system_prompt="You are a pirate. Answer like one.") as stream:
        text = "".join([t async for t in stream])
    assert text == stream.result["response"]
    plain = await client._rpc.call("generate", {"prompt": "What are you?", "model": MODEL, "temperature": 0.0,
                                                "max_tokens": 16, "system_prompt": "You are a pirate. Answer like one."})
    assert plain["response"] == text


async def test_break_frees_the_slot(client, endpoint):
    n = 0
    async for _ in client.generate_stream(MODEL, LONG, max_tokens=2000, timeout=300):
        n += 1
        if n == 3:
            assert busy_slots(endpoint) == 1
            break
    assert await wait_idle(endpoint, 5) < 5
    # blocking right after the break (no await): the slot is freed all the same
    async for _ in client.generate_stream(MODEL, LONG, max_tokens=2000, timeout=300):
        break
    gc.collect()
    t0 = time.monotonic()
    while busy_slots(endpoint) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert busy_slots(endpoint) == 0


async def test_aclose_and_cancellation_free_the_slot(client, endpoint):
    stream = client.generate_stream(MODEL, LONG, max_tokens=2000, timeout=300)
    assert await stream.__anext__()
    await wait_busy(endpoint)
    await stream.aclose()
    assert await wait_idle(endpoint, 5) < 5
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()

    async def consume() -> None:
        async for _ in client.generate_stream(MODEL, LONG, max_tokens=2000, timeout=300):
            pass

    task = asyncio.ensure_future(consume())
    await wait_busy(endpoint)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_idle(endpoint, 5) < 5
    # the shared connection of the client is untouched by all this
    assert (await client.generate(MODEL, "Say hi.", max_tokens=4)).response


async def test_errors_are_raised_like_generate(client, oracd):
    with pytest.raises(ValueError, match="Prompt cannot be empty"):
        client.generate_stream(MODEL, "   ")                       # before any I/O
    with pytest.raises(FileNotFoundError, match="Model not found"):
        async for _ in client.generate_stream("no-such-model", "hi"):
            pass
    with pytest.raises(ValueError):
        async for _ in client.generate_stream(MODEL, "hi", temperature=99):
            pass
    with pytest.raises(Exception, match=r"^Generation timed out after 0.2 seconds$"):
        async for _ in client.generate_stream(MODEL, LONG, max_tokens=2000, timeout=0.2):
            pass
    down = LlamaCppClient(socket_path=str(oracd.root / "nothing.sock"))
    with pytest.raises(ConnectionError):
        async for _ in down.generate_stream(MODEL, "hi"):
            pass


async def test_notifications_reach_only_their_call(oracd):
    """Two streamed generates pipelined on one shared connection: each on_notify gets its own chunks."""
    rpc = OracdClient(str(oracd.socket))
    got: Dict[int, List[Tuple[str, Dict[str, Any]]]] = {0: [], 1: []}
    prompts = ["Count from one to five.", "Name two animals."]

    async def one(i: int) -> Dict[str, Any]:
        return await rpc.call("generate", {"prompt": prompts[i], "model": MODEL, "temperature": 0, "max_tokens": 24,
                                           "stream": True}, on_notify=lambda m, p: got[i].append((m, p)))

    r0, r1 = await asyncio.gather(one(0), one(1))
    conn = rpc.connection()
    assert conn is not None and not conn.listeners               # nothing left registered
    for i, r in enumerate((r0, r1)):
        assert {m for m, _ in got[i]} == {"generate.chunk"}
        assert len({p["id"] for _, p in got[i]}) == 1
        assert "".join(p["text"] for _, p in got[i]) == r["response"]
    assert got[0][0][1]["id"] != got[1][0][1]["id"]
    # a plain call on the same connection still works and gets no callback
    assert (await rpc.call("status"))["child"]["state"] == "ready"
    await rpc.aclose()


async def test_quantize_progress_through_on_notify(oracd):
    write_tiny_f32(oracd.models_dir / "tiny-stream-f32.gguf")
    rpc = OracdClient(str(oracd.socket))
    seen: List[Dict[str, Any]] = []
    r = await rpc.call("quantize_model", {"input_model": "tiny-stream-f32", "output_model": "tiny-stream-q8",
                                          "quantization_type": "q8_0", "overwrite": True},
                       on_notify=lambda m, p: seen.append(p) if m == "quantize.progress" else None)
    assert r["ok"] is True
    assert seen and seen[-1]["done"] == seen[-1]["total"]
    assert [p["done"] for p in seen] == sorted(p["done"] for p in seen)
    await rpc.aclose()
    # the blocking client (what oracctl uses) routes them the same way
    sync_seen: List[str] = []
    call_sync("quantize_model", {"input_model": "tiny-stream-f32", "output_model": "tiny-stream-q8",
                                 "quantization_type": "q8_0", "overwrite": True},
              socket_path=str(oracd.socket), timeout=120, on_notify=lambda m, p: sync_seen.append(m))
    assert sync_seen and set(sync_seen) == {"quantize.progress"}


async def test_a_faulty_callback_does_not_break_the_connection(oracd):
    rpc = OracdClient(str(oracd.socket))

    def boom(method: str, params: Dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    r = await rpc.call("generate", {"prompt": "Say hi.", "model": MODEL, "max_tokens": 6, "stream": True},
                       on_notify=boom)
    assert r["response"]
    assert (await rpc.call("status"))["child"]["state"] == "ready"
    await rpc.aclose()
