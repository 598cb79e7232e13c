"""Who may talk to oracd (and to its llama-server), checked with real processes of other uids.

Tests run as root, which file permissions do not stop, so every "another user" check runs in
a forked child that drops to an unprivileged uid/gid (no such user needs to exist) and reports
what happened through a pipe.

Covered elsewhere: socket mode 0660 (test_rpc.py::test_socket_mode_and_status), name traversal
via generate/load_model (test_rpc.py::test_error_paths), quantize output names and a symlinked
input leading outside (test_quantize.py::test_output_name_confined,
test_quantize.py::test_symlinked_input_followed_unless_confined).
"""
from __future__ import annotations

import grp
import itertools
import json
import os
import select
import shutil
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import psutil
import pytest

from helpers import MODELS, SMOL, Conn, Oracd, write_tiny_f32, log_events

FAST = {"threads": 1, "extra_args": ["--no-warmup"]}   # see test_faults.py
OTHER_UID, OTHER_GID = 12345, 12345                    # nobody on this machine
THIRD_UID = 12346
ALLOWED_GID = 54321
_ids = itertools.count(1)


# ---------------------------------------------------------------------- helpers
def as_user(uid: int, gid: int, fn: Callable[[], Any], groups: Sequence[int] = (), timeout: float = 30) -> Dict:
    """Run fn() in a forked child with the given uid/gid/supplementary groups.

    Returns {"ok": value} or {"exc": name, "errno": n, "msg": text}.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # child: drop privileges, run, report, _exit
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            out: Dict[str, Any] = {"ok": fn(), "pid": os.getpid()}
        except BaseException as exc:
            out = {"exc": type(exc).__name__, "errno": getattr(exc, "errno", None), "msg": str(exc)}
        try:
            os.write(w, json.dumps(out, default=str).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"child as uid {uid} did not finish in {timeout} s")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(data)


def rpc_from(sock_path: Path, method: str = "status", params: Optional[Dict[str, Any]] = None,
             refused: bool = False) -> Callable[[], Any]:
    """A child-side function: connect, send one request, return the first answer line.

    With ``refused``, also wait for oracd to close the connection (EOF, or a reset because
    the request line was never read) and report it as ``closed``.
    """
    def fn() -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(str(sock_path))
        msg = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params:
            msg["params"] = params
        try:
            s.sendall(json.dumps(msg).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                      # refused before we wrote: the refusal is still there to read
        buf = b""
        closed = False
        try:
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                buf += chunk
            if refused and not closed:
                closed = s.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        s.close()
        return {"answer": json.loads(buf) if buf else None, "closed": closed}
    return fn


def creq(c: Conn, method: str, **params: Any) -> Dict[str, Any]:
    rid = f"a{next(_ids)}"
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n")
    while True:
        msg = c.recv()
        if isinstance(msg, dict) and "method" in msg and "id" not in msg:
            continue                                   # a progress notification
        assert msg.get("id") == rid, msg
        return msg


def req(o: Oracd, method: str, **params: Any) -> Dict[str, Any]:
    with Conn(o.socket, 60) as c:
        return creq(c, method, **params)


def wait_logged_ready(o: Oracd, timeout: float = 60) -> None:
    """Readiness without talking to oracd (root may be refused by allowed_uids)."""
    deadline = time.monotonic() + timeout
    while not (o.socket.exists() and o.log_file.exists() and log_events(o, "oracd ready")):
        assert o.proc.poll() is None, o.stderr_tail()
        assert time.monotonic() < deadline, o.stderr_tail()
        time.sleep(0.05)


def reachable_by_others(o: Oracd) -> None:
    """Let other uids traverse to the socket (mkdtemp makes the root 0700; nothing is made readable)."""
    os.chmod(o.root, 0o711)
    os.chmod(o.socket.parent, 0o711)


def other_group() -> grp.struct_group:
    """An existing group other than root's (created nothing on the host)."""
    for name in ("daemon", "nogroup", "users"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    return next(g for g in grp.getgrall() if g.gr_gid not in (0, os.getgid()))


@pytest.fixture
def daemon():
    made: List[Oracd] = []

    def make(server: Dict[str, Any], llama: Optional[Dict[str, Any]] = None, wait: bool = True) -> Oracd:
        o = Oracd(server=server, llama=dict(FAST, **(llama or {"preload": False})))
        made.append(o)
        o.start(wait=wait)
        if not wait:
            wait_logged_ready(o)
        return o

    yield make
    for o in made:
        o.cleanup()


# ---------------------------------------------------------------------- socket mode and group
def test_socket_group_mode_and_peer_credentials_logged(daemon):
    g = other_group()
    o = daemon({"socket_group": g.gr_name, "socket_mode": "0660"})
    st = os.stat(o.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == g.gr_gid and st.st_uid == os.getuid()
    reachable_by_others(o)

    assert req(o, "status")["result"]["pid"] == o.proc.pid
    mine = [e for e in log_events(o, "connection open") if e.get("peer_pid") == os.getpid()]
    assert mine and all(e["peer_uid"] == os.getuid() and e["peer_gid"] == os.getgid() for e in mine)

    # another user outside the group: the socket's permissions stop it before oracd sees it
    denied = as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket))
    assert denied.get("exc") == "PermissionError", denied
    # the same user with the socket's group as a supplementary group gets in
    member = as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket), groups=[g.gr_gid])
    assert member.get("ok", {}).get("answer", {}).get("result", {}).get("pid") == o.proc.pid, member
    theirs = [e for e in log_events(o, "connection open") if e.get("peer_pid") == member["pid"]]
    assert len(theirs) == 1 and theirs[0]["peer_uid"] == OTHER_UID and theirs[0]["peer_gid"] == OTHER_GID
    reqs = [e for e in log_events(o, "request") if e.get("peer_pid") == member["pid"]]
    assert reqs and reqs[0]["peer_uid"] == OTHER_UID and reqs[0]["method"] == "status"


# ---------------------------------------------------------------------- allowed_uids / allowed_gids
def _refused(result: Dict[str, Any]) -> bool:
    ans = result.get("ok", {})
    err = (ans.get("answer") or {}).get("error", {})
    return err.get("code") == -32013 and ans.get("closed") is True


def test_allowed_uids(daemon):
    o = daemon({"socket_mode": "0666", "allowed_uids": [OTHER_UID]}, wait=False)
    reachable_by_others(o)
    # root is not in the list: -32013, then the connection is closed
    with Conn(o.socket, 10) as c:
        c.send_raw(b'{"jsonrpc":"2.0","method":"status","id":1}\n')
        msg = c.recv()
        assert msg["error"]["code"] == -32013 and msg["id"] is None, msg
        assert str(os.getuid()) in msg["error"]["message"]
        with pytest.raises(ConnectionError):   # closed (ConnectionLost; also when reset: our line was never read)
            c.recv()
    refused = log_events(o, "connection refused: peer not allowed")
    assert refused and refused[-1]["peer_pid"] == os.getpid() and refused[-1]["peer_uid"] == os.getuid()
    # the allowed uid gets a normal answer; another one does not
    ok = as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket))
    assert ok.get("ok", {}).get("answer", {}).get("result", {}).get("pid") == o.proc.pid, ok
    assert _refused(as_user(THIRD_UID, OTHER_GID, rpc_from(o.socket, refused=True)))


def test_allowed_gids_primary_or_supplementary(daemon):
    o = daemon({"socket_mode": "0666", "allowed_gids": [ALLOWED_GID]}, wait=False)
    reachable_by_others(o)
    assert _refused({"ok": rpc_from(o.socket, refused=True)()})                 # root
    assert _refused(as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket, refused=True)))
    supp = as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket), groups=[ALLOWED_GID])
    assert supp.get("ok", {}).get("answer", {}).get("result", {}).get("pid") == o.proc.pid, supp
    primary = as_user(THIRD_UID, ALLOWED_GID, rpc_from(o.socket))
    assert primary.get("ok", {}).get("answer", {}).get("result", {}).get("pid") == o.proc.pid, primary


# ---------------------------------------------------------------------- llama-server is oracd's alone
def test_llama_server_unreachable_to_other_users(daemon):
    o = daemon({"socket_mode": "0666"}, llama={"preload": True})
    reachable_by_others(o)
    child = req(o, "status")["result"]["child"]
    assert child["state"] == "ready" and child["endpoint"].startswith("unix:")
    llama_sock = Path(child["endpoint"][len("unix:"):])
    runtime = llama_sock.parent
    st = os.stat(runtime)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    # nothing listens on TCP: the private Unix socket is the only way in
    proc = psutil.Process(child["pid"])
    conns = getattr(proc, "net_connections", None) or proc.connections
    assert not [c for c in conns(kind="inet") if c.status == "LISTEN"]

    def try_llama() -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(llama_sock))
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        return s.recv(100).decode(errors="replace")

    r = as_user(OTHER_UID, OTHER_GID, try_llama)
    assert r.get("exc") == "PermissionError", r
    r = as_user(OTHER_UID, OTHER_GID, lambda: os.listdir(runtime))
    assert r.get("exc") == "PermissionError", r
    r = as_user(OTHER_UID, OTHER_GID, lambda: open(runtime / "llama-server.pid").read())
    assert r.get("exc") == "PermissionError", r
    # ... while the same user may use oracd itself (the 0666 socket in the same tree)
    ok = as_user(OTHER_UID, OTHER_GID, rpc_from(o.socket))
    assert ok.get("ok", {}).get("answer", {}).get("result", {}).get("child", {}).get("state") == "ready", ok
    # and root, as a control, reaches llama-server directly
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(llama_sock))
    s.close()


# ---------------------------------------------------------------------- names confined to the models dirs
@pytest.fixture(scope="module")
def names_daemon():
    o = Oracd(llama=dict(FAST, preload=False))
    write_tiny_f32(o.models_dir / "tiny-f32.gguf")
    o.start()
    yield o
    o.cleanup()


NAME_PARAMS = [("generate", "model", {"prompt": "hi"}), ("load_model", "model", {}),
               ("start_server", "model", {"port": 0}), ("quantize_model", "input_model", {"output_model": "o"}),
               ("quantize_model", "output_model", {"input_model": "tiny-f32"})]
BAD_NAMES = ["../x", "../../etc/passwd", "/etc/passwd", "/tmp", "a/b", "..", ".", ".hidden", "a\x00b", "x.gguf\x00",
             "\\..\\x", "sub/../x"]


@pytest.mark.parametrize("method, param, extra", NAME_PARAMS, ids=[f"{m}.{p}" for m, p, _ in NAME_PARAMS])
def test_every_name_param_is_confined(names_daemon, method, param, extra):
    wrong = []
    with Conn(names_daemon.socket, 30) as c:
        for name in BAD_NAMES:
            resp = creq(c, method, **dict(extra, **{param: name}))
            if resp.get("error", {}).get("code") != -32008:
                wrong.append((name, resp))
    assert not wrong, wrong
    assert not [p for p in names_daemon.models_dir.iterdir() if p.name.startswith(".") or p.name == "o.gguf"]


def test_symlinked_models_are_listed_and_served_unless_confined(tmp_path):
    """Operators keep models on another disk and link them in: listed, loaded and served by default.

    With llama.confine_model_links = true, links leading outside are neither listed nor
    used (-32008).  Either way client names stay plain names inside the models dir.
    """
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    shutil.copyfile(MODELS / SMOL, elsewhere / "smol-copy.gguf")
    outside_dir = tmp_path / "dir.gguf"
    outside_dir.mkdir()
    links = {"smol-link.gguf": elsewhere / "smol-copy.gguf", "to-dir.gguf": outside_dir,
             "to-etc.gguf": Path("/etc/passwd")}
    for confine in (False, True):
        o = Oracd(llama=dict(FAST, preload=False, confine_model_links=confine))
        for name, target in links.items():
            (o.models_dir / name).symlink_to(target)
        (o.models_dir / "chain.gguf").symlink_to(o.models_dir / "smol-link.gguf")
        try:
            o.start()
            listed = {m["name"]: m for m in req(o, "list_models")["result"]}
            assert SMOL in listed and "to-dir.gguf" not in listed
            if not confine:
                assert listed["smol-link.gguf"]["architecture"] == "llama" and listed["smol-link.gguf"]["valid"]
                assert listed["chain.gguf"]["valid"] and listed["to-etc.gguf"]["valid"] is False
                r = req(o, "generate", model="smol-link", prompt="Say hi.", max_tokens=2, temperature=0,
                        timeout=60)["result"]
                assert r["model"] == "smol-link" and r["usage"]["completion_tokens"] == 2
                st = req(o, "status")["result"]["child"]
                assert st["model"] == "smol-link.gguf" and st["state"] == "ready"
                assert req(o, "load_model", model="chain")["result"]["model"] == "chain.gguf"
                assert req(o, "load_model", model="to-etc")["error"]["code"] == -32002   # not a GGUF: refused
            else:
                assert not {"smol-link.gguf", "chain.gguf", "to-etc.gguf"} & set(listed), listed
                for name in ("smol-link", "chain", "to-etc"):
                    for method, params in (("generate", {"model": name, "prompt": "hi"}),
                                           ("load_model", {"model": name}),
                                           ("quantize_model", {"input_model": name, "output_model": "never"})):
                        resp = req(o, method, **params)
                        assert resp.get("error", {}).get("code") == -32008, (name, method, resp)
                        assert "confine_model_links" in resp["error"]["message"]
                assert not (o.models_dir / "never.gguf").exists()
            assert (elsewhere / "smol-copy.gguf").stat().st_size == (MODELS / SMOL).stat().st_size
        finally:
            o.cleanup()


def test_models_path_must_be_a_served_dir(names_daemon, tmp_path):
    o = names_daemon
    link_to_models = tmp_path / "models-link"
    link_to_models.symlink_to(o.models_dir)
    link_to_etc = tmp_path / "etc-link"
    link_to_etc.symlink_to("/etc")
    ok = [str(o.models_dir), str(o.models_dir) + "/", str(link_to_models), f"{o.models_dir}/../models"]
    wrong = []
    for path in ok:
        resp = req(o, "list_models", models_path=path)
        if not ("result" in resp and "tiny-f32.gguf" in [m["name"] for m in resp["result"]]):
            wrong.append((path, resp))
    bad = [str(link_to_etc), "/etc", f"{o.models_dir}/..", str(tmp_path), "relative/dir", "", "models",
           f"{o.models_dir}\x00", "/\x00", "x" * 5000]
    for path in bad:
        resp = req(o, "list_models", models_path=path)
        if resp.get("error", {}).get("code") != -32008:
            wrong.append((path, resp))
    assert not wrong, wrong


def test_quantize_output_symlink_never_writes_through(names_daemon, tmp_path):
    """An output name that is a symlink (dangling or to a file outside) never writes outside."""
    o = names_daemon
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    (o.models_dir / "out-link.gguf").symlink_to(victim)
    (o.models_dir / "dangling.gguf").symlink_to(tmp_path / "nowhere" / "x.gguf")
    try:
        resp = req(o, "quantize_model", input_model="tiny-f32", output_model="out-link", quantization_type="q4_0")
        assert resp.get("error", {}).get("code") in (-32011, -32008), resp
        for name in ("out-link", "dangling"):
            resp = req(o, "quantize_model", input_model="tiny-f32", output_model=name, quantization_type="q4_0",
                       overwrite=True)
            assert "result" in resp or resp["error"]["code"] in (-32008, -32011), (name, resp)
            if "result" in resp:            # the link itself was replaced by a regular file
                out = o.models_dir / f"{name}.gguf"
                assert out.is_file() and not out.is_symlink()
        assert victim.read_bytes() == b"precious"
        assert not (tmp_path / "nowhere").exists()
    finally:
        for name in ("out-link.gguf", "dangling.gguf"):
            (o.models_dir / name).unlink(missing_ok=True)
