"""The event loop's short CPU slice: the sched_attr oracd sends, and that it is asked for only when set."""
from __future__ import annotations

import struct
import threading
from pathlib import Path

from oracd import loopslice
from oracd.config import from_dict


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, event, **kw):
        self.warnings.append((event, kw))


def test_the_attr_is_sched_other_with_the_slice_reset_on_fork_and_the_nice_kept():
    size, policy, flags, nice, prio, runtime, deadline, period, umin, umax = struct.unpack(
        "IIQiIQQQII", loopslice.attr(100_000, 5))
    assert (size, policy, flags, nice, prio, runtime) == (56, 0, loopslice.SCHED_FLAG_RESET_ON_FORK, 5, 0, 100_000)
    assert (deadline, period, umin, umax) == (0, 0, 0, 0)


def test_zero_or_an_unknown_architecture_leaves_the_kernels_default():
    log = Log()
    assert loopslice.apply(from_dict({"server": {"loop_slice_us": 0}}, Path("/tmp")), log) is None
    assert loopslice.apply(from_dict({}, Path("/tmp")), log, machine="riscv64") is None
    assert log.warnings == []


def _slice_of_this_thread() -> int:
    import ctypes, platform
    nr = {"x86_64": 315, "aarch64": 275}[platform.machine()]      # sched_getattr
    buf = ctypes.create_string_buffer(56)
    assert ctypes.CDLL(None, use_errno=True).syscall(nr, 0, buf, 56, 0) == 0
    return struct.unpack("IIQiIQQQII", buf.raw)[5]


def test_the_slice_is_set_on_the_calling_thread_only_where_the_kernel_has_it():
    got = {}

    def run():                       # a thread of its own: the slice stays there
        before = _slice_of_this_thread()
        log = Log()
        got["set"] = loopslice.apply(from_dict({"server": {"loop_slice_us": 200}}, Path("/tmp")), log)
        got["now"], got["before"], got["log"] = _slice_of_this_thread(), before, log.warnings
        inner = []
        t = threading.Thread(target=lambda: inner.append(_slice_of_this_thread()))
        t.start()
        t.join()
        got["spawned"] = inner[0]

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if got["set"] is None:           # a kernel that refuses it: logged, nothing else changed
        assert got["log"] and got["now"] == got["before"]
        return
    assert got["set"] == 200_000 and got["now"] == 200_000
    assert got["spawned"] == got["before"]      # reset on fork: threads and children get the default
