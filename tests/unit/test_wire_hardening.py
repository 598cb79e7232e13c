"""Hostile input, the pure parts: what a request may send as a grammar or schema, safe file reads,
log clipping and rate limits, peer groups from SO_PEERGROUPS, the socket-activation check, and batch limits."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from helpers import write_tiny_f32
from oracd.api import listener
from oracd.api.constraints import request_constraint, request_grammar, request_schema
from oracd.api.generate import Sent, build_body
from oracd.api.jsonrpc import CallContext, Dispatcher, Peer, rpc_method
from oracd.api.logguard import PeerLogLimiter, TokenBucket, clip
from oracd.config import Profile
from oracd.config.profiles import JSON_GRAMMAR
from oracd.config.settings import ConfigError, from_dict, with_overrides
from oracd.models.gguf import header, read_gguf_header
from oracd.safe_read import UnsafeFile, aread_capped, read_capped
from oracd_protocol.errors import InvalidParams
from oracd_protocol.schemas import COMMAND_SCHEMA

BASE = Path("/tmp")
CAP = 65536


@pytest.fixture
def hostile(tmp_path):
    """Files a hostile client could name: a FIFO, a 0600 file, a symlink to it, a file outside any models dir."""
    secret = tmp_path / "creds.json"
    secret.write_text('{"type": "object"}')
    secret.chmod(0o600)
    gbnf = tmp_path / "secret.gbnf"
    gbnf.write_text('root ::= "leak"')
    gbnf.chmod(0o600)
    fifo = tmp_path / "x.gbnf"
    os.mkfifo(fifo)
    link = tmp_path / "link.gbnf"
    link.symlink_to(gbnf)
    return {"secret": secret, "gbnf": gbnf, "fifo": fifo, "link": link, "missing": tmp_path / "nope.gbnf"}


# ------------------------------------------------------------------ grammar / json_schema in a request
def test_request_grammar_and_schema_never_name_files(hostile):
    """Every path form is refused with -32602 and one message, whether the file exists, is a FIFO, is 0600,
    is a link or is missing (no path oracle); nothing is opened (a FIFO read would hang this test)."""
    grammar_paths = [str(hostile["gbnf"]), str(hostile["fifo"]), str(hostile["link"]), str(hostile["missing"]),
                     "../../x/secret.gbnf", "secret.gbnf", "~/g.gbnf", "C:\\g.gbnf", "root::=x.gbnf"]
    messages = set()
    for p in grammar_paths:
        with pytest.raises(InvalidParams) as err:
            request_grammar(p, CAP)
        assert err.value.data == {"param": "grammar", "reason": "path_not_allowed"}, p
        messages.add(err.value.message)
    schema_paths = [str(hostile["secret"]), "../../../x/creds.json", "creds.json", str(hostile["missing"])]
    for p in schema_paths:
        with pytest.raises(InvalidParams) as err:
            request_schema(p, CAP)
        assert err.value.data == {"param": "json_schema", "reason": "path_not_allowed"}, p
        messages.add(err.value.message.replace("json_schema", "grammar"))
    assert len(messages) == 1, messages


def test_request_grammar_and_schema_accept_builtins_and_inline():
    assert request_grammar("json", CAP) == JSON_GRAMMAR
    inline = 'root ::= "on" | "off/auto"'          # a "/" inside GBNF text is text, not a path
    assert request_grammar(inline, CAP) == inline
    multi = 'root ::= item\nitem ::= "a.json"\n'
    assert request_grammar(multi, CAP) == multi
    assert request_schema("command", CAP) is COMMAND_SCHEMA
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert request_schema(schema, CAP) is schema
    assert request_constraint(None, None, CAP) == (None, None)


@pytest.mark.parametrize("grammar, schema, reason", [
    ("root ::= \"a\"\x00", None, "nul_byte"),
    ("x\x00.gbnf", None, "nul_byte"),
    (None, "c\x00.json", "nul_byte"),
    ("command", None, "schema_name"),
    ("hello", None, "not_gbnf"),
    ("   ", None, "bad_type"),
    (None, "nope", "not_schema"),
    (None, ["type", "object"], "bad_type"),
    (None, 42, "bad_type"),
    ("json", "command", "both_constraints"),
    ('root ::= "' + "a" * CAP + '"', None, "too_large"),
    (None, {"enum": ["a" * CAP]}, "too_large"),
])
def test_bad_constraints_are_specific_invalid_params(grammar, schema, reason):
    with pytest.raises(InvalidParams) as err:
        request_constraint(grammar, schema, CAP)
    assert err.value.code == -32602 and err.value.data["reason"] == reason, err.value.data
    if reason == "too_large":
        assert err.value.data["limit"] == CAP and "server.max_grammar_bytes" in err.value.message


def test_max_grammar_bytes_is_a_validated_setting():
    assert from_dict({}, BASE).server.max_grammar_bytes == 65536
    assert from_dict({"server": {"max_grammar_bytes": 2048}}, BASE).server.max_grammar_bytes == 2048
    with pytest.raises(ConfigError, match="server.max_grammar_bytes"):
        from_dict({"server": {"max_grammar_bytes": 10}}, BASE)


@pytest.mark.parametrize("field", ["prompt", "system_prompt", "prefill", "stop"])
def test_nul_in_text_params_is_invalid_params_naming_the_param(field):
    kw = {"prompt": "hi"}
    kw[field] = ["ok", "a\x00b"] if field == "stop" else "a\x00b"
    cfg = from_dict({}, BASE)
    with pytest.raises(InvalidParams) as err:
        build_body(Sent(**kw), Profile(model="m.gguf"), cfg)
    assert err.value.data == {"param": field, "reason": "nul_byte"}


def test_build_body_sends_inline_constraints_and_profile_files_still_apply():
    cfg = from_dict({}, BASE)
    prof = Profile(model="m.gguf", grammar='root ::= "p"')
    assert build_body(Sent("hi"), prof, cfg)["grammar"] == 'root ::= "p"'
    body = build_body(Sent("hi", json_schema={"type": "object"}), prof, cfg)
    assert body["json_schema"] == {"type": "object"} and "grammar" not in body
    small = with_overrides(cfg, server={"max_grammar_bytes": 1024})
    with pytest.raises(InvalidParams):
        build_body(Sent("hi", grammar='root ::= "' + "x" * 2000 + '"'), prof, small)


def test_profile_grammar_files_are_read_safely_at_config_load(hostile, tmp_path):
    """Files stay a profile feature: read when the config loads, through safe_read (a FIFO is refused at
    once, a link to a grammar file is followed, as an operator's layout may need)."""
    from oracd.config.profiles import ProfileError, parse_profiles
    prof = parse_profiles({"m.gguf": {"grammar": str(hostile["link"])}}, tmp_path)["m.gguf"]
    assert prof.grammar == 'root ::= "leak"'
    done = {}

    def load():
        try:
            parse_profiles({"m.gguf": {"grammar": "x.gbnf"}}, tmp_path)
        except ProfileError as exc:
            done["error"] = str(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "a FIFO named in a profile blocked the config load"
    assert "not a regular file" in done["error"]


# ------------------------------------------------------------------ safe file reads
def test_safe_read_refuses_fifo_symlink_and_oversize_without_blocking(hostile, tmp_path):
    outcome = {}

    def attempt():
        try:
            read_capped(hostile["fifo"], 1024)
        except OSError as exc:
            outcome["fifo"] = exc

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome["fifo"], UnsafeFile)
    with pytest.raises(OSError) as err:
        read_capped(hostile["link"], 1024)
    assert err.value.errno == errno.ELOOP
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 5000)
    with pytest.raises(UnsafeFile, match="larger than 4096"):
        read_capped(big, 4096)
    assert read_capped(big, 5000) == b" " * 5000


@pytest.mark.anyio
async def test_aread_capped_reads_in_a_worker_thread_and_refuses_a_fifo(hostile):
    with anyio.fail_after(5):                  # a FIFO opened on the loop would hang here for good
        with pytest.raises(UnsafeFile):
            await aread_capped(hostile["fifo"], 1024)
    with pytest.raises(OSError):
        await aread_capped(hostile["link"], 1024)
    assert await aread_capped(hostile["gbnf"], 1024) == b'root ::= "leak"'


def test_gguf_header_reads_through_model_links_but_never_waits_on_a_fifo(tmp_path):
    """Model files may be symlinks (supported): the header is read from the resolved file.  A FIFO named
    x.gguf is refused at once, not waited on."""
    (tmp_path / "elsewhere").mkdir()
    real = write_tiny_f32(tmp_path / "elsewhere" / "real.gguf")
    link = tmp_path / "linked.gguf"
    link.symlink_to(real)
    meta = read_gguf_header(link)
    assert meta["valid"] is True and meta["tensor_count"] > 0, meta
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("meta", header(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the GGUF header read blocked on a FIFO"
    assert done["meta"]["valid"] is False and "not a regular file" in done["meta"]["error"]


@pytest.mark.anyio
async def test_check_loadable_reads_the_header_and_memory_in_a_worker_thread(tmp_path, monkeypatch):
    """A header cache miss (and /proc, cgroup files) is read off the event loop: never a file read there."""
    from oracd.api import methods
    from oracd.config import ConfigHolder
    from oracd.serve import build_app
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_f32(models / "m.gguf")
    cfg = from_dict({"llama": {"models_dir": str(models), "kv_cache_dir": str(tmp_path / "kv")}}, BASE)
    app = build_app(ConfigHolder(cfg))
    loop_thread = threading.get_ident()
    seen = {}
    real_meta, real_avail = app.store.metadata, methods.available
    monkeypatch.setattr(app.store, "metadata", lambda p: seen.setdefault("meta", threading.get_ident())
                        and real_meta(p))
    monkeypatch.setattr(methods, "available", lambda d: seen.setdefault("mem", threading.get_ident())
                        and real_avail(d))
    await app.check_loadable(app.store.resolve("m.gguf"))
    assert seen["meta"] != loop_thread and seen["mem"] != loop_thread, seen


# ------------------------------------------------------------------ logs
def test_clip_marks_the_original_length():
    assert clip("status") == "status"
    assert clip(7) == 7 and clip(None) is None
    long = "m" * 1_000_000
    out = clip(long)
    assert out.startswith("m" * 200) and out.endswith("...[1000000 chars]") and len(out) < 230
    assert clip({"a": "b" * 500}).endswith("chars]")


def test_token_bucket_and_peer_limiter_count_and_report_suppressed_lines():
    b = TokenBucket(rate=1.0, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(1.0) is True and b.take(1.0) is False
    lim = PeerLogLimiter(rate=1.0, burst=2)
    assert lim.admit("p", 0.0) == 0 and lim.admit("p", 0.0) == 0
    assert [lim.admit("p", 0.0) for _ in range(5)] == [None] * 5
    assert lim.admit("other", 0.0) == 0            # per peer: another peer is not held back
    assert lim.admit("p", 1.0) == 5                  # the next line written says how many were held back
    assert lim.admit("p", 1.0) is None and lim.suppressed["p"] == 1


def test_peer_limiter_stays_bounded():
    lim = PeerLogLimiter(rate=1.0, burst=1, max_peers=10)
    for i in range(1000):
        lim.admit(i, float(i))
    assert len(lim.buckets) <= 10


# ------------------------------------------------------------------ peers
def test_peer_groups_come_from_so_peergroups_not_proc(monkeypatch):
    """Under ProtectProc=invisible /proc/<pid>/status is hidden: the groups must come from the socket."""
    monkeypatch.setattr(listener, "_supplementary_gids", lambda pid: pytest.fail("read /proc"))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = listener.peer_of(a)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert set(peer.groups) == set(os.getgroups())


def test_allowed_gids_uses_the_peers_groups_and_refuses_unknown_peers():
    cfg = with_overrides(from_dict({}, BASE), server={"allowed_gids": (4242,)})
    hidden_pid = 2 ** 22 + 1           # no /proc entry: only Peer.groups can say it is in 4242
    assert listener.allowed(cfg, Peer(hidden_pid, 1000, 1000, (27, 4242)))
    assert not listener.allowed(cfg, Peer(hidden_pid, 1000, 1000, (27,)))
    assert not listener.allowed(cfg, Peer())
    assert listener.allowed(from_dict({}, BASE), Peer())    # no allow-list: the socket's mode decides


def test_a_tcp_peer_is_unknown():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    with srv, cli, conn:
        assert listener.peer_of(conn) == Peer()


def test_check_listening_refuses_anything_but_a_unix_stream_socket():
    for fam, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_DGRAM)):
        with pytest.raises(listener.StartupError, match="only a Unix stream socket"):
            listener.check_listening(socket.socket(fam, kind))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ok:
        listener.check_listening(ok)


def test_socket_activation_with_a_tcp_socket_on_fd_3_is_refused():
    """The real path: LISTEN_PID/LISTEN_FDS and a TCP listener on fd 3, as a misconfigured .socket gives."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    code = ("import os, socket\nos.dup2(int(os.environ['TCPFD']), 3)\nos.environ['LISTEN_PID'] = str(os.getpid())\n"
            "from oracd.api.listener import inherited_socket, StartupError\n"
            "try:\n    inherited_socket()\nexcept StartupError as e:\n    print('REFUSED', e)\n"
            "else:\n    print('ACCEPTED')\n")
    env = dict(os.environ, TCPFD=str(srv.fileno()), LISTEN_FDS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, pass_fds=(srv.fileno(),), capture_output=True,
                         text=True, timeout=60)
    srv.close()
    assert out.stdout.startswith("REFUSED") and "AF_INET/SOCK_STREAM" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------ batches
class _Slots:
    """A connection's pending slots, as connection._LineSlots keeps them, with a high-water mark."""

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 1, 1
        self.room = anyio.Event()

    def give_back_line(self):
        self.release()

    async def acquire(self):
        while self.used >= self.limit:
            if self.room.is_set():
                self.room = anyio.Event()
            await self.room.wait()
        self.used += 1
        self.peak = max(self.peak, self.used)

    def release(self):
        self.used -= 1
        self.room.set()


@pytest.mark.anyio
async def test_a_batch_counts_against_pending_and_is_capped():
    running = {"now": 0, "peak": 0}

    async def work(ctx, *, n: int = 0):
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await anyio.sleep(0.001)
        running["now"] -= 1
        return n

    d = Dispatcher({"work": rpc_method(work)}, max_batch_items=32)
    slots = _Slots(limit=4)
    items = [{"jsonrpc": "2.0", "method": "work", "params": {"n": i}, "id": i} for i in range(999)]
    items.append({"jsonrpc": "2.0", "method": "work"})            # a notification past the cap: no answer
    items.append(17)                                               # not a request, past the cap: Busy, id null
    out = json.loads(await d.handle_line(json.dumps(items).encode(), CallContext(Peer(), slots=slots)))
    ok = [r for r in out if "result" in r]
    busy = [r for r in out if "error" in r]
    assert sorted(r["result"] for r in ok) == list(range(32))
    assert len(busy) == 968 and {r["id"] for r in busy} == set(range(32, 999)) | {None}
    assert all(r["error"]["code"] == -32005 and r["error"]["data"] == {"reason": "batch_too_large", "limit": 32}
               for r in busy)
    assert running["peak"] <= 4 and slots.peak <= 4, (running, slots.peak)
    assert slots.used == 0                            # every slot came back, the line's own included


@pytest.mark.anyio
async def test_two_batches_waiting_for_room_do_not_deadlock():
    async def work(ctx):
        await anyio.sleep(0.001)
        return 1

    d = Dispatcher({"work": rpc_method(work)}, max_batch_items=50)
    slots = _Slots(limit=2)
    slots.used = 2                                    # two lines, each holding its slot
    line = json.dumps([{"jsonrpc": "2.0", "method": "work", "id": i} for i in range(20)]).encode()
    got = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                async def run():
                    got.append(json.loads(await d.handle_line(line, CallContext(Peer(), slots=slots))))
                tg.start_soon(run)
    assert [len(g) for g in got] == [20, 20] and slots.used == 0
