"""sd_notify with a real oracd on a real datagram socket: READY, STATUS, WATCHDOG, STOPPING."""
from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from helpers import Conn, Oracd

WATCHDOG_USEC = "1000000"   # oracd should ping every 0.5 s


@dataclass
class Datagram:
    t: float                     # time.monotonic() when received
    pid: Optional[int]           # sender pid from SCM_CREDENTIALS
    text: str
    fields: Dict[str, str] = field(default_factory=dict)


class NotifySocket:
    """What systemd does: a bound AF_UNIX datagram socket; a thread collects what arrives."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="oracd-n-", dir="/tmp"))
        self.path = str(self.dir / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.q: "queue.Queue[Datagram]" = queue.Queue()
        self.all: List[Datagram] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except socket.timeout:
                continue
            except OSError:
                return
            t = time.monotonic()
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cdata) >= creds:
                    pid = struct.unpack("3i", cdata[:creds])[0]
            text = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            self.q.put(Datagram(t, pid, text, fields))

    def next(self, timeout: float) -> Optional[Datagram]:
        """The next datagram within ``timeout`` seconds (None if none came)."""
        try:
            dg = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        self.all.append(dg)
        return dg

    def wait_for(self, pred: Callable[[Datagram], bool], proc, timeout: float, what: str) -> Datagram:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} datagram within {timeout}s; got {[d.text for d in self.all]}")
            dg = self.next(min(left, 0.5))
            if dg is not None and pred(dg):
                return dg
            if dg is None and proc.poll() is not None and self.q.empty():
                raise AssertionError(f"oracd exited ({proc.returncode}) before {what}; "
                                     f"got {[d.text for d in self.all]}")

    def drain(self) -> List[Datagram]:
        out = []
        while True:
            try:
                dg = self.q.get_nowait()
            except queue.Empty:
                return out
            self.all.append(dg)
            out.append(dg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


def start_oracd(fresh_oracd, ns: NotifySocket, **kw) -> Oracd:
    d = fresh_oracd(env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": WATCHDOG_USEC}, **kw)
    d.env.pop("WATCHDOG_PID", None)   # in case the test runner itself runs under systemd
    return d.start(wait=False)


def is_ping(dg: Datagram) -> bool:
    return dg.fields.get("WATCHDOG") == "1"


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_ready_status_watchdog_stopping(fresh_oracd, notify_socket):
    ns = notify_socket
    d = start_oracd(fresh_oracd, ns)
    pid = d.proc.pid

    ready = ns.wait_for(lambda dg: dg.fields.get("READY") == "1", d.proc, 120, "READY=1")
    # READY means ready: the socket accepts connections and the preloaded model is serving
    with Conn(d.socket, timeout=30) as c:
        st = c.call("status")
    assert st["pid"] == pid
    assert st["child"]["state"] == "ready", st["child"]
    assert ns.all[0] is ready, f"something was sent before READY: {[x.text for x in ns.all]}"
    assert ready.fields.get("MAINPID") == str(pid), ready.text
    assert ready.fields.get("STATUS", "").startswith("ready"), ready.text
    # llama-server must not inherit the notify socket or the watchdog settings
    with open(f"/proc/{st['child']['pid']}/environ", "rb") as fh:
        child_env = {kv.split(b"=", 1)[0].decode() for kv in fh.read().split(b"\0") if kv}
    assert not child_env & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}, child_env

    # WATCHDOG=1 at half of WATCHDOG_USEC (a loose protocol check, not a benchmark)
    pings = [ns.wait_for(is_ping, d.proc, 10, "WATCHDOG=1") for _ in range(7)]
    intervals = [b.t - a.t for a, b in zip(pings, pings[1:])]
    assert 0.3 <= statistics.median(intervals) <= 1.0, intervals

    # STATUS= follows the supervisor: unload -> idle, load -> ready
    assert d.call("unload_model")["state"] == "stopped"
    idle = ns.wait_for(lambda dg: dg.fields.get("STATUS", "").startswith("idle"), d.proc, 20, "STATUS=idle")
    assert "READY" not in idle.fields
    assert d.call("load_model")["state"] == "ready"
    ns.wait_for(lambda dg: dg.fields.get("STATUS", "").startswith("ready") and "READY" not in dg.fields,
                d.proc, 20, "STATUS=ready")

    # SIGTERM: STOPPING=1, clean exit, socket removed
    d.proc.send_signal(signal.SIGTERM)
    stopping = ns.wait_for(lambda dg: dg.fields.get("STOPPING") == "1", d.proc, 30, "STOPPING=1")
    assert "STATUS" in stopping.fields, stopping.text
    assert d.proc.wait(60) == 0, d.stderr_tail()
    assert not d.socket.exists()
    ns.drain()
    assert sum(1 for dg in ns.all if dg.fields.get("READY") == "1") == 1
    # systemd (NotifyAccess=main) only listens to the main pid
    senders = {dg.pid for dg in ns.all}
    assert senders == {pid}, senders


def test_watchdog_stops_while_oracd_is_frozen(fresh_oracd, notify_socket):
    ns = notify_socket
    d = start_oracd(fresh_oracd, ns, llama={"preload": False})
    pid = d.proc.pid
    ns.wait_for(lambda dg: dg.fields.get("READY") == "1", d.proc, 60, "READY=1")
    for _ in range(2):
        ns.wait_for(is_ping, d.proc, 10, "WATCHDOG=1")

    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while process_state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(pid) == "T"
        time.sleep(0.3)
        ns.drain()                              # anything sent before the stop took effect
        t_end = time.monotonic() + 1.5
        late = []
        while time.monotonic() < t_end:
            dg = ns.next(max(0.0, t_end - time.monotonic()))
            if dg is not None:
                late.append(dg)
        assert not [dg.text for dg in late if is_ping(dg)], "WATCHDOG=1 sent while oracd was stopped"
    finally:
        os.kill(pid, signal.SIGCONT)

    ns.wait_for(is_ping, d.proc, 5, "WATCHDOG=1 after SIGCONT")
    ns.wait_for(is_ping, d.proc, 5, "a second WATCHDOG=1 after SIGCONT")
    assert d.stop() == 0, d.stderr_tail()
    assert not d.socket.exists()


def test_heartbeat_pings_only_while_its_event_loop_runs(notify_socket, monkeypatch):
    """SIGSTOP freezes every thread, so also check in-process that the pings come from the event loop:
    a blocked loop (a synchronous sleep in a task) must mean no WATCHDOG=1, whatever other threads do."""
    import anyio
    from types import SimpleNamespace

    from oracd.notify import Notifier
    from oracd.serve import _heartbeat
    from oracd.child.states import ChildState
    from oracd.child.snapshot import ChildSnapshot

    ns = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")     # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    app = SimpleNamespace(requests_in_flight=0, supervisor=SimpleNamespace(
        snapshot=ChildSnapshot(state=ChildState.READY, model="m.gguf")))
    sent: List[float] = []

    class RecordingNotifier(Notifier):
        def watchdog(self) -> None:
            sent.append(time.monotonic())
            super().watchdog()

    windows = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, app, RecordingNotifier())
            await anyio.sleep(0.6)
            t0 = time.monotonic()
            time.sleep(1.0)                            # the loop is blocked
            windows["blocked"] = (t0, time.monotonic())
            await anyio.sleep(0.6)
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")
    t0, t1 = windows["blocked"]
    assert [t for t in sent if t < t0], "no pings before the loop was blocked"
    assert [t for t in sent if t > t1], "no pings after the loop was unblocked"
    assert not [t for t in sent if t0 < t < t1], "WATCHDOG=1 sent while the event loop was blocked"
    # and every ping really went out on the socket, from this process
    dgs = ns.drain()
    deadline = time.monotonic() + 5
    while sum(map(is_ping, dgs)) < len(sent) and time.monotonic() < deadline:
        dg = ns.next(0.1)
        if dg is not None:
            dgs.append(dg)
    assert sum(map(is_ping, dgs)) == len(sent), [dg.text for dg in dgs]
    assert {dg.pid for dg in dgs} == {os.getpid()}
