"""The listening Unix socket and who may use it.

Startup takes an flock next to the socket (two oracd never share one), never
steals a live oracd's socket, replaces a stale one, and binds atomically with
``socket_mode`` and ``socket_group`` (or takes the socket systemd passed by
socket activation: it must be an AF_UNIX stream socket).  Each connection's peer
is read with SO_PEERCRED and its supplementary groups with SO_PEERGROUPS (the
shipped unit's ProtectProc=invisible hides /proc/<pid>/status, so it cannot be the source);
with ``allowed_uids``/``allowed_gids`` set, only those peers are served, and a
peer whose credentials cannot be read is not.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Optional, Tuple

from ..config import Config
from ..logs import get as get_logger
from .jsonrpc import Peer

log = get_logger("oracd.listener")


class StartupError(RuntimeError):
    """oracd cannot start (socket taken, bad permissions...); the message says why."""


def take_lock(cfg: Config) -> int:
    """Hold an flock next to the socket for our lifetime: two oracd never share a socket."""
    lock_path = cfg.server.socket.with_name(cfg.server.socket.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.read(fd, 32).decode().strip()
        finally:
            os.close(fd)
        raise StartupError(f"another oracd (pid {other or '?'}) is running on {cfg.server.socket}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)


def inherited_socket() -> Optional[socket.socket]:
    """The listening socket passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if n < 1:
        return None
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)
    check_listening(sock)
    return sock


def check_listening(sock: socket.socket) -> None:
    """A passed socket must be what oracd's access control assumes: a Unix stream socket (peer credentials
    exist only there).  A TCP socket would let anyone in as an unknown peer."""
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        kind = f"{socket.AddressFamily(sock.family).name}/{socket.SocketKind(sock.type).name}"
        sock.close()
        raise StartupError(f"the socket passed by systemd (fd 3) is {kind}; oracd serves only a Unix stream "
                           f"socket (ListenStream=/path/to/oracd.sock in the .socket unit)")


def socket_gid(cfg: Config) -> Optional[int]:
    """The gid for server.socket_group ("" = oracd's own group: None), or a StartupError saying how to fix it."""
    name = cfg.server.socket_group
    if not name:
        return None
    import grp
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(
            f"server.socket_group: there is no group {name} on this machine, so the socket cannot be shared "
            f"with it. Either create it and add the users who may talk to oracd "
            f"(sudo groupadd --system {name}; sudo usermod -aG {name} $USER; scripts/install does both), "
            f"or set socket_group = \"\" in [server] of {cfg.path or 'the config'} to keep the group oracd runs as"
        ) from None


def bind_socket(cfg: Config) -> socket.socket:
    """Create the JSON-RPC listening socket with socket_mode (and socket_group), atomically in place."""
    return bind_unix_listener(cfg.server.socket, cfg)


def bind_unix_listener(path: Path, cfg: Config, setting: str = "") -> socket.socket:
    """A listening Unix socket at ``path`` with ``[server]`` socket_mode and socket_group, renamed into place
    only when complete.  Never steals a live one or replaces a file that is not a socket; a stale one (nobody
    listening) is replaced.  ``setting``: the config key that named ``path``, for the errors."""
    where = f"{setting}: " if setting else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{where}{path} exists and is not a socket; refusing to replace it")
        if _socket_alive(path):
            raise StartupError(f"{where}another process is already serving {path}")
        log.warning("removing stale socket", path=str(path))
        path.unlink()
    gid = socket_gid(cfg)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, cfg.server.socket_mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(1024)
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)    # Linux >= 4.13; Python's socket module may lack it


def peer_of(sock: Optional[socket.socket]) -> Peer:
    """The peer's pid/uid/gid and supplementary groups; all None (unknown) if they cannot be read."""
    if sock is None:
        return Peer()
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return Peer()
    if uid < 0 or gid < 0:              # not a Unix peer: the kernel has no credentials for it
        return Peer()
    return Peer(pid, uid, gid, peer_groups(sock, pid))


def peer_groups(sock: socket.socket, pid: Optional[int]) -> Tuple[int, ...]:
    """Supplementary groups from SO_PEERGROUPS (taken by the kernel at connect()); /proc only where the
    kernel lacks that option."""
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            return struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4])
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 65536 * 4:   # more groups than fit: NGROUPS_MAX is 65536
                size *= 16
                continue
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                return _supplementary_gids(pid)
            return ()


def _supplementary_gids(pid: Optional[int]) -> Tuple[int, ...]:
    """The fallback for kernels without SO_PEERGROUPS (a few hundred bytes of procfs, never a disk)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def allowed(cfg: Config, peer: Peer) -> bool:
    """allowed_uids/allowed_gids: empty lists mean the socket's permissions alone decide."""
    uids, gids = cfg.server.allowed_uids, cfg.server.allowed_gids
    if not uids and not gids:
        return True
    if not peer.known:
        return False
    if peer.uid in uids:
        return True
    return bool(gids) and (peer.gid in gids or any(g in gids for g in peer.groups))
