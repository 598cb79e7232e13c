"""Is an llama.cpp rpc-server worker there?  TCP connect plus the RPC protocol's own HELLO.

Wire format (ggml-rpc.cpp, little-endian, packed): request ``cmd:u8 | size:u64 |
payload``, reply ``size:u64 | payload``.  HELLO (cmd 14) must be the first
command on a connection: payload 24 zero bytes (no RDMA), reply 28 bytes
(major, minor, patch, pad, 24 caps bytes).  This llama.cpp speaks 7.0.0.

Two traps, both measured here (docs/rpc-workers.md):
- rpc-server serves ONE client at a time.  While llama-server is attached, a
  probe's connect succeeds (kernel backlog) but HELLO is never answered, so
  oracd never probes a worker its llama-server is using; it looks at
  llama-server's TCP connection instead (``attached_workers``).
- A timed-out probe closed normally (FIN) sits in the worker's backlog with
  its HELLO; when the worker later answers it, the write hits a reset socket
  and SIGPIPE kills rpc-server silently.  Probes that fail are therefore
  closed with a reset (SO_LINGER 0), which the worker survives.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple

HELLO = 14
CAPS = 24
PROTO_MAJOR = 7


@dataclass
class WorkerCheck:
    """One probe's outcome, as ``status`` shows it."""
    address: str
    answers: bool
    version: Optional[str] = None
    error: Optional[str] = None
    rtt_ms: Optional[float] = None
    checked_at: float = field(default_factory=time.time)

    def as_dict(self) -> Dict[str, object]:
        return {"address": self.address, "answers": self.answers, "version": self.version,
                "error": self.error, "rtt_ms": self.rtt_ms, "checked_at": round(self.checked_at, 3)}


def split_address(address: str) -> Tuple[str, int]:
    """"host:port" -> (host, port); ValueError with the reason otherwise (IPv4 or a name: rpc-server has no IPv6)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1-65535, got {address!r}")
    if ":" in host or host.startswith("["):
        raise ValueError(f"rpc-server speaks IPv4 only, got {address!r}")
    return host, int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"worker closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def hello(address: str, timeout: float = 2.0) -> WorkerCheck:
    """Connect, send HELLO, read the version.  Blocking: call it from a worker thread."""
    t0 = time.monotonic()
    host, port = split_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        why = "timed out connecting" if isinstance(exc, socket.timeout) else (exc.strerror or repr(exc))
        return WorkerCheck(address, False, error=f"cannot connect: {why}")
    reset = True
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(struct.pack("<BQ", HELLO, CAPS) + bytes(CAPS))
        (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
        if size != 4 + CAPS:
            return WorkerCheck(address, False, error=f"not an rpc-server (HELLO reply of {size} bytes)")
        major, minor, patch = _recv_exact(sock, size)[:3]
        version = f"{major}.{minor}.{patch}"
        reset = False
        if major != PROTO_MAJOR:
            return WorkerCheck(address, False, version=version,
                               error=f"RPC protocol {version}; this llama.cpp speaks {PROTO_MAJOR}.x")
        return WorkerCheck(address, True, version=version, rtt_ms=round((time.monotonic() - t0) * 1000, 2))
    except socket.timeout:
        return WorkerCheck(address, False, error=f"connected but no HELLO answer within {timeout:g}s "
                                                 "(busy with another client, or hung)")
    except (OSError, ConnectionError) as exc:
        return WorkerCheck(address, False, error=f"HELLO failed: {exc}")
    finally:
        if reset:   # never leave a half-done HELLO in the worker's backlog (see the module docstring)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def attached_workers(pid: int, addresses: Iterable[str]) -> Dict[str, bool]:
    """Which workers llama-server ``pid`` holds an ESTABLISHED TCP connection to (the kernel's view).

    A worker that dies closes its end; llama-server only notices at its next RPC
    call (and aborts), so oracd watches the connection instead and restarts early.
    """
    import psutil
    wanted: Dict[Tuple[str, int], str] = {}
    for a in addresses:
        host, port = split_address(a)
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            ip = host
        wanted[(ip, port)] = a
    found = {a: False for a in wanted.values()}
    try:
        proc = psutil.Process(pid)
        conns = (getattr(proc, "net_connections", None) or proc.connections)(kind="tcp4")
    except (psutil.Error, OSError):
        return found
    for c in conns:
        if c.status == psutil.CONN_ESTABLISHED and c.raddr and (c.raddr.ip, c.raddr.port) in wanted:
            found[wanted[(c.raddr.ip, c.raddr.port)]] = True
    return found
