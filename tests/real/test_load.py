"""Load against a real oracd + llama-server: many clients, many requests, bounded memory, slots freed.

Covered elsewhere: one timed-out or one disconnected generation frees its slot
(test_generate.py::test_timeout_aborts_upstream_generation,
test_generate.py::test_client_disconnect_aborts_upstream_generation); 20 threads x 5 status
calls (test_rpc.py::test_many_connections_concurrently).
"""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Any, Dict, List

import psutil
import pytest

from helpers import SMOL, Conn, Oracd
from llama_direct import busy_slots

FAST = {"threads": 1, "extra_args": ["--no-warmup"]}   # see test_faults.py
RSS_GROWTH_LIMIT = 20 * 2 ** 20                          # after 10,000 requests
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def lo():
    o = Oracd(llama=dict(FAST, ctx_size=4096)).start()      # 2048 tokens a slot: long generations stay long
    yield o
    o.cleanup()


def read_msg(c: Conn) -> Any:
    """Next answer on c (server notifications, which carry no id, are skipped)."""
    while True:
        msg = c.recv()
        if isinstance(msg, dict) and "method" in msg and "id" not in msg:
            continue
        return msg


def status(o: Oracd) -> Dict[str, Any]:
    with Conn(o.socket, 30) as c:
        c.send_raw(b'{"jsonrpc":"2.0","method":"status","id":"st"}\n')
        return read_msg(c)["result"]


def wait_slots_idle(endpoint: str, timeout: float) -> float:
    t0 = time.monotonic()
    while busy_slots(endpoint):
        assert time.monotonic() - t0 < timeout, f"llama-server slot still busy after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0


# ---------------------------------------------------------------------- 50 clients x 20 mixed requests
def _client(o: Oracd, n: int, out: Dict[int, Any]) -> None:
    """20 mixed requests pipelined on one connection; every answer checked against its own request."""
    problems: List[str] = []
    reqs: Dict[str, Dict[str, Any]] = {}
    for j in range(20):
        rid = f"c{n}-r{j}"
        if j % 10 == 3:                            # 2 generates a client, 100 in all
            params = {"prompt": f"Client {n}, request {j}: say hello.", "max_tokens": 2 + (n + j) % 3,
                      "temperature": 0, "timeout": 120}
            reqs[rid] = {"jsonrpc": "2.0", "id": rid, "method": "generate", "params": params}
        else:
            reqs[rid] = {"jsonrpc": "2.0", "id": rid, "method": "status" if j % 2 else "list_models"}
    try:
        with Conn(o.socket, timeout=180) as c:
            c.send_raw(b"".join(json.dumps(r).encode() + b"\n" for r in reqs.values()))
            seen: Dict[str, int] = {}
            for _ in range(len(reqs)):
                msg = read_msg(c)
                rid = msg.get("id")
                seen[rid] = seen.get(rid, 0) + 1
                req = reqs.get(rid)
                if req is None:
                    problems.append(f"answer for an id this client never sent: {str(msg)[:200]}")
                    continue
                if "result" not in msg:
                    problems.append(f"{rid}: {str(msg)[:300]}")
                    continue
                res = msg["result"]
                if req["method"] == "generate":
                    p = req["params"]
                    if res["prompt"] != p["prompt"] or res["model"] != SMOL \
                            or not 1 <= res["usage"]["completion_tokens"] <= p["max_tokens"]:
                        problems.append(f"{rid}: mismatched generate answer {res}")
                elif req["method"] == "status":
                    if res.get("pid") != o.proc.pid or "child" not in res:
                        problems.append(f"{rid}: not a status answer {str(res)[:200]}")
                elif not (isinstance(res, list) and any(m.get("name") == SMOL for m in res)):
                    problems.append(f"{rid}: not a list_models answer {str(res)[:200]}")
            c.sock.settimeout(0.3)                 # nothing more may come: no duplicates
            try:
                extra = c.recv_line()
                problems.append(f"unexpected extra answer {extra[:200]!r}")
            except (TimeoutError, ConnectionError):    # nothing more came, or oracd closed the idle connection
                pass
            lost = sorted(set(reqs) - set(seen))
            dup = sorted(r for r, k in seen.items() if k > 1)
            if lost:
                problems.append(f"lost: {lost}")
            if dup:
                problems.append(f"duplicated: {dup}")
    except Exception as exc:
        problems.append(f"client {n}: {exc!r}")
    out[n] = problems


def test_50_clients_x_20_mixed_requests(lo):
    before = status(lo)
    out: Dict[int, Any] = {}
    threads = [threading.Thread(target=_client, args=(lo, n, out), daemon=True) for n in range(50)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    took = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "clients still waiting after 240 s"
    assert sorted(out) == list(range(50))
    problems = {n: p for n, p in out.items() if p}
    assert not problems, problems
    after = status(lo)
    assert after["requests"]["served"] - before["requests"]["served"] >= 1000
    assert after["requests"]["generations"] - before["requests"]["generations"] == 100
    assert after["requests"]["in_flight"] == 0 and after["child"]["restarts"] == before["child"]["restarts"]
    print(f"1000 mixed requests from 50 clients in {took:.1f} s")


# ---------------------------------------------------------------------- memory after 10,000 requests
def _pipeline(o: Oracd, tag: str, n: int, window: int = 50) -> int:
    """n status/list_models requests on one connection, `window` in flight at a time; answers checked."""
    done = 0
    with Conn(o.socket, timeout=60) as c:
        while done < n:
            k = min(window, n - done)
            ids = [f"{tag}-{done + i}" for i in range(k)]
            c.send_raw(b"".join(json.dumps({"jsonrpc": "2.0", "id": rid,
                                            "method": "status" if (done + i) % 2 else "list_models"}).encode()
                                + b"\n" for i, rid in enumerate(ids)))
            got = sorted((read_msg(c) for _ in ids), key=lambda m: str(m.get("id")))
            assert [m.get("id") for m in got] == sorted(ids), got[:3]
            assert all("result" in m for m in got), [m for m in got if "result" not in m][:3]
            done += k
    return done


def _run_pipelines(o: Oracd, tag: str, total: int, conns: int = 4) -> None:
    errors: List[BaseException] = []

    def one(i: int) -> None:
        try:
            _pipeline(o, f"{tag}{i}", total // conns)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_rss_growth_after_10000_requests_is_bounded(lo):
    proc = psutil.Process(lo.proc.pid)
    _run_pipelines(lo, "warm", 1000)                # caches, pools and the allocator settle first
    before = proc.memory_info().rss
    t0 = time.monotonic()
    _run_pipelines(lo, "load", 10_000)
    took = time.monotonic() - t0
    growth = proc.memory_info().rss - before
    print(f"10,000 requests in {took:.1f} s; RSS {before / 2**20:.1f} -> {(before + growth) / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB over 10,000 requests"
    st = status(lo)
    assert st["requests"]["in_flight"] == 0 and st["connections"] == 1


# ---------------------------------------------------------------------- slots freed under load
def _long(rid: str, timeout: float) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "generate",
                       "params": {"prompt": f"Write a very long story ({rid}) about a lighthouse keeper.",
                                  "max_tokens": 1800, "temperature": 0.8, "timeout": timeout}}).encode() + b"\n"


def test_disconnect_and_timeout_free_both_slots_under_load(lo):
    """Both slots busy with long generations; their client hangs up (pipelined on one connection),
    then both time out: each time the slots are free again within seconds, while other clients
    keep getting answers."""
    endpoint = status(lo)["child"]["endpoint"]
    stop = threading.Event()
    side: List[Any] = []

    def chatter() -> None:                         # other clients keep working meanwhile
        try:
            while not stop.is_set():
                with Conn(lo.socket, 30) as c:
                    c.send_raw(b'{"jsonrpc":"2.0","method":"list_models","id":"side"}\n')
                    m = read_msg(c)
                    assert m["id"] == "side" and "result" in m, m
                side.append(1)
                time.sleep(0.05)
        except BaseException as exc:  # reported below
            side.append(exc)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        # 1. a client pipelines two long generations, then hangs up
        c = Conn(lo.socket, 60)
        c.send_raw(_long("gone-1", 120) + _long("gone-2", 120))
        deadline = time.monotonic() + 30
        while busy_slots(endpoint) < 2:
            assert time.monotonic() < deadline, "the two generations never ran together"
            time.sleep(0.02)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        freed = wait_slots_idle(endpoint, 5)

        # 2. two long generations with a short timeout each
        with Conn(lo.socket, 60) as c:
            t0 = time.monotonic()
            c.send_raw(_long("late-1", 2.5) + _long("late-2", 2.5))
            got = {m["id"]: m for m in (read_msg(c), read_msg(c))}
            answered = time.monotonic() - t0
        for rid in ("late-1", "late-2"):
            assert got[rid]["error"]["code"] == -32003, got[rid]
            assert got[rid]["error"]["message"] == "Generation timed out after 2.5 seconds"
        assert answered < 30
        freed_after_timeout = wait_slots_idle(endpoint, 5)

        # 3. the server is immediately usable again
        with Conn(lo.socket, 60) as c:
            c.send_raw(json.dumps({"jsonrpc": "2.0", "id": "after", "method": "generate",
                                   "params": {"prompt": "Say hi.", "max_tokens": 2, "temperature": 0}}).encode()
                       + b"\n")
            m = read_msg(c)
            assert m["id"] == "after" and m["result"]["usage"]["completion_tokens"] == 2
    finally:
        stop.set()
        t.join(30)
    assert side and all(x == 1 for x in side), [x for x in side if x != 1][:3]
    st = status(lo)
    assert st["requests"]["in_flight"] == 0 and st["child"]["state"] == "ready"
    print(f"slots freed {freed:.2f} s after the hang-up, {freed_after_timeout:.2f} s after the timeouts")
