"""Run llama.cpp's rpc-server as a worker for oracd, safely and with a real "it is up" answer.

Why a wrapper: rpc-server exits 0 on a port in use, a bad host or an unknown
argument, so its exit code says nothing; this checks the arguments first and
then waits for the worker's own HELLO answer (oracd.rpc_probe) before saying
"listening".  Its RPC protocol has no authentication (whoever reaches the port
can use the worker's memory and CPU), so only loopback and private networks
are accepted unless --allow-public.
"""
from __future__ import annotations

import argparse
import collections
import errno
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Deque, IO, List, Optional

from oracd.child import exits
from oracd.child.process import locate, stop_group_sync
from oracd.workers.hello import hello

REPO_ROOT = Path(__file__).resolve().parents[2]
# loopback, RFC1918, link-local, CGNAT: the networks a worker may listen on without --allow-public
SAFE_NETS = [ipaddress.IPv4Network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12",
                                               "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")]
READY_TIMEOUT = 10.0
STOP_GRACE = 5.0


class Refused(Exception):
    """A one-line reason to exit 2 before anything was started."""


def check_host(host: str, allow_public: bool) -> None:
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise Refused(f"--host must be a numeric IPv4 address (rpc-server resolves no names and has "
                      f"no IPv6), got {host!r}") from None
    if allow_public:
        return
    if ip.is_unspecified:
        raise Refused("--host 0.0.0.0 would expose the unauthenticated RPC port on every interface; "
                      "give the private address to listen on (or --allow-public)")
    if not any(ip in net for net in SAFE_NETS):
        raise Refused(f"--host {host} is not a loopback or private address; the RPC protocol is "
                      "unauthenticated (use --allow-public only behind a firewall)")


def check_port_free(host: str, port: int, check_only: bool) -> None:
    """Bind the way rpc-server does (SO_REUSEADDR), because rpc-server itself exits 0 when it cannot."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Refused(f"port {host}:{port} is already in use (another rpc-server?); pick another --port") from None
        if exc.errno == errno.EADDRNOTAVAIL and check_only:
            print(f"rpc-worker: note: {host} is not an address of this machine (yet)", file=sys.stderr)
            return
        raise Refused(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    finally:
        s.close()


def find_binary(explicit: Optional[str]) -> str:
    """--bin, else $ORACD_RPC_SERVER, else the checkout's bin/, else the provisioning cache, else PATH."""
    how = "run scripts/setup to build it, or pass --bin PATH / set ORACD_RPC_SERVER"
    given = explicit or os.environ.get("ORACD_RPC_SERVER")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise Refused(f"rpc-server binary {given} does not exist or is not executable; {how}")
        return given
    from oracd.provision.machine import cached_tool
    found = locate([REPO_ROOT / "bin" / "rpc-server", cached_tool("rpc-server"), "rpc-server"])
    if not found:
        raise Refused(f"rpc-server not found (bin/, the oracd cache, PATH); {how}")
    return found


def build_command(args: argparse.Namespace, binary: str) -> List[str]:
    cmd = [binary, "-H", args.host, "-p", str(args.port)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    if args.device:
        cmd += ["-d", args.device]
    if args.cache:
        cmd.append("-c")
    return cmd


def _pump(src: IO[bytes], dst: IO[bytes], tail: Deque[str]) -> None:
    """Forward rpc-server's output line by line, keeping the last lines for an error message."""
    for line in iter(src.readline, b""):
        dst.write(line)
        dst.flush()
        tail.append(line.decode(errors="replace").rstrip())
    src.close()


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def run(cmd: List[str], address: str) -> int:
    """Start, wait for HELLO, stay in the foreground; SIGINT/SIGTERM stop the whole process group."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if shutil.which("stdbuf"):   # the banner is block-buffered when redirected
        cmd = ["stdbuf", "-oL"] + cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    tail: Deque[str] = collections.deque(maxlen=8)
    pumps = [threading.Thread(target=_pump, args=(s, d, tail), daemon=True)
             for s, d in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))]
    for t in pumps:
        t.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        check = None
        while not stop.is_set() and proc.poll() is None and time.monotonic() < deadline:
            check = hello(address, timeout=1.0)
            if check.answers:
                break
            stop.wait(0.1)
        if check is not None and check.answers and proc.poll() is None:
            print(f'rpc-server {check.version} listening on {address} (pid {proc.pid}); '
                  f'add "{address}" to [llama] rpc_workers in oracd.toml', flush=True)
            while not stop.is_set() and proc.poll() is None:
                stop.wait(0.5)
        elif not stop.is_set():
            rc = proc.poll()
            for t in pumps:
                t.join(1.0)
            last = " | ".join(line for line in tail if line) or "no output"
            what = (exits.describe(rc, "").strip() if rc is not None
                    else f"did not answer HELLO within {READY_TIMEOUT:g}s ({check.error if check else '?'})")
            if "Failed to create server socket" in last:
                what += f" (could not bind {address}: port in use or address not on this machine)"
            print(f"rpc-worker: rpc-server {what} before it was ready; last output: {last}", file=sys.stderr)
            return 1
        if not stop.is_set():
            rc = proc.wait()
            print(f"rpc-worker: {exits.describe(rc, 'rpc-server')}", file=sys.stderr)
            return _exit_code(rc)
        return 0 if _stop(proc) else 1
    finally:
        if proc.poll() is None:
            _stop(proc)
        for t in pumps:
            t.join(1.0)


def _stop(proc: subprocess.Popen) -> bool:
    """oracd's one stopping routine (TERM the group, grace, KILL); True if SIGTERM was enough."""
    return stop_group_sync(proc.pid, proc.wait, STOP_GRACE, (subprocess.TimeoutExpired,)) == signal.SIGTERM


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="rpc-worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="numeric IPv4 address to bind (default: %(default)s)")
    ap.add_argument("--port", type=int, default=50052, help="TCP port (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: rpc-server's own choice)")
    ap.add_argument("--cache", action="store_true", help="enable rpc-server's local tensor cache (-c)")
    ap.add_argument("--device", help="comma-separated ggml devices (-d)")
    ap.add_argument("--bin", help="rpc-server binary (default: $ORACD_RPC_SERVER, bin/, cache, PATH)")
    ap.add_argument("--allow-public", action="store_true", help="allow a non-private address (dangerous)")
    ap.add_argument("--check-only", action="store_true", help="validate and print the command, start nothing")
    args = ap.parse_args(argv)
    try:
        check_host(args.host, args.allow_public)
        if not 0 < args.port < 65536:
            raise Refused(f"--port must be 1-65535, got {args.port}")
        if args.threads is not None and args.threads < 1:
            raise Refused(f"--threads must be at least 1, got {args.threads}")
        cmd = build_command(args, find_binary(args.bin))
        check_port_free(args.host, args.port, args.check_only)
    except Refused as exc:
        print(f"rpc-worker: {exc}", file=sys.stderr)
        return 2
    if args.host == "127.0.0.1":
        print("rpc-worker: note: on 127.0.0.1 only clients on this machine can connect", file=sys.stderr)
    else:
        print(f"rpc-worker: WARNING: the RPC protocol is unauthenticated: anyone who reaches {args.host}:"
              f"{args.port} can use this machine's memory and CPU. Bind only to a private network you trust "
              "and firewall the port so that only the oracd host can connect.", file=sys.stderr)
    address = f"{args.host}:{args.port}"
    if args.check_only:
        print(f"would run: {shlex.join(cmd)}\nthen add \"{address}\" to [llama] rpc_workers in oracd.toml")
        return 0
    return run(cmd, address)


if __name__ == "__main__":
    sys.exit(main())
