"""Safe file reads for the request path: off the event loop, capped, never blocked by what the file is.

Why: one ``open()`` of a FIFO blocks until a writer shows up, and a read of a
huge file stalls every client for seconds; on the event loop either one freezes
the whole daemon.  Every file oracd reads while serving a request goes
through here: opened with ``O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`` (a FIFO, a device or a
link swapped in is never waited on), ``fstat`` must say "regular file", and the
read stops at ``max_bytes``.  The ``a*`` forms run in a worker thread.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Union

import anyio

PathLike = Union[str, Path]
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OSError):
    """The file is not a plain regular file, is a symlink, or is bigger than allowed."""


def open_regular(path: PathLike) -> BinaryIO:
    """A binary file object for ``path``, which must be a regular file and not a symlink (the caller
    resolves links it trusts first: ``real_path``).  Never blocks on a FIFO or device."""
    fd = os.open(path, FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: not a regular file")
        os.set_blocking(fd, True)      # a regular file: plain blocking reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: PathLike, max_bytes: int) -> bytes:
    """The whole of a regular file no bigger than ``max_bytes`` (UnsafeFile if it is bigger)."""
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size > max_bytes:
            raise UnsafeFile(f"{path}: larger than {max_bytes} bytes")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:          # it grew while we read
        raise UnsafeFile(f"{path}: larger than {max_bytes} bytes")
    return data


def real_path(path: PathLike) -> Path:
    """``path`` with every symlink resolved: for files that may be links on purpose (model files)."""
    return Path(os.path.realpath(path))


async def aread_capped(path: PathLike, max_bytes: int) -> bytes:
    """``read_capped`` in a worker thread."""
    return await anyio.to_thread.run_sync(read_capped, path, max_bytes)
