"""Saved slot KV caches on disk: keyed by everything that makes the bytes valid, written atomically, bounded.

llama-server writes and reads the files itself (``--slot-save-path`` and
``POST /slots/{id}?action=save|restore``); this module decides their names and
looks after the directory:

- the key (``entry_key``) covers the model file's identity (size, mtime, a hash
  of its first MiB), the llama-server binary's identity, the command line that
  shapes the KV cache (context, parallel, GPU layers, batch sizes, template,
  extra arguments; not the endpoint or threads) and the exact prompt text the
  warm-up sends, so a changed model, binary, setting or prompt never gets an old entry;
- llama-server saves under a temporary name, then we rename: a half-written file
  is never taken as an entry;
- the directory is private (0700) and bounded by ``kv_cache_max_mb``: the least
  recently used entries are evicted first (a restore counts as a use);
- each entry has a sha256 sidecar written at save time and checked before a
  restore (``intact``): llama-server checks the token list of a file, not its KV
  bytes, so flipped bits there would restore silently; a corrupt or truncated
  entry is discarded and replaced, never fatal.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..logs import get as get_logger
from ..safe_read import open_regular, real_path

log = get_logger("oracd.kvstore")
FORMAT = 1                          # bump when the meaning of an entry changes
SUFFIX = ".kv"
SUM = ".sha256"
_HEAD = 1 << 20
# command-line options that do not change the KV bytes (where it listens, how many threads compute)
_IRRELEVANT = {"--host", "--port", "-t", "--threads", "--slot-save-path", "--api-key", "--cache-ram"}


def file_identity(path: Path, hash_head: bool) -> Dict[str, Any]:
    st = path.stat()
    ident: Dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if hash_head:
        with open_regular(real_path(path)) as fh:       # a model may be a link; never a FIFO (safe_read)
            ident["head_sha256"] = hashlib.sha256(fh.read(_HEAD)).hexdigest()
    return ident


def kv_relevant_args(cmd: Sequence[str]) -> List[str]:
    """The command line without its endpoint and thread options (and without the binary's path)."""
    out, skip = [], False
    for arg in list(cmd)[1:]:
        if skip:
            skip = False
            continue
        if arg in _IRRELEVANT:
            skip = True
            continue
        out.append(arg)
    return out


def entry_key(model: Path, binary: str, cmd: Sequence[str], prompt: str) -> str:
    material = {"format": FORMAT, "model": file_identity(model, True),
                "binary": {"path": os.path.realpath(binary), **file_identity(Path(binary), False)},
                "args": kv_relevant_args(cmd), "prompt": prompt}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# why a save failed, for status.child.warm.save.reason: errno first, then llama-server's words
_SAVE_ERRNOS = {errno.ENOSPC: "no_space", errno.EDQUOT: "no_space", errno.EIO: "io_error",
                errno.EROFS: "read_only", errno.EACCES: "permission", errno.EPERM: "permission"}
_SAVE_WORDS = (("no space", "no_space"), ("quota", "no_space"), ("input/output", "io_error"),
               ("read-only", "read_only"), ("permission denied", "permission"))
LOW_SPACE = 1 << 20       # under 1 MiB free: a save that failed for any reason is taken as out of space


def classify_save_failure(exc: BaseException, free_bytes: Optional[int]) -> str:
    """'no_space', 'io_error', 'read_only', 'permission' or 'failed' (pure).

    Why also free space: llama-server answers a failed write with a generic message
    ("failed to save slot"), so a nearly full cache dir is the telling fact."""
    code = getattr(exc, "errno", None)
    if code in _SAVE_ERRNOS:
        return _SAVE_ERRNOS[code]
    text = str(exc).lower()
    for words, reason in _SAVE_WORDS:
        if words in text:
            return reason
    if free_bytes is not None and free_bytes < LOW_SPACE:
        return "no_space"
    return "failed"


def free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


class KVStore:
    def __init__(self, directory: Path, max_bytes: int):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._size: Optional[int] = None     # cached for status; None: recount on the next ask

    def prepare(self) -> None:
        """Create the private dir; drop temporary files that a killed save left behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for p in self.dir.glob("tmp-*"):
            p.unlink(missing_ok=True)

    def name(self, key: str) -> str:
        return key + SUFFIX

    def tmp_name(self, key: str) -> str:
        return f"tmp-{key}-{os.getpid()}{SUFFIX}"

    def has(self, key: str) -> bool:
        return (self.dir / self.name(key)).is_file()

    def used(self, key: str) -> None:
        """Mark an entry as just used (LRU order is by mtime)."""
        try:
            os.utime(self.dir / self.name(key))
        except FileNotFoundError:
            pass

    def commit(self, key: str) -> None:
        """llama-server finished writing ``tmp_name(key)``: checksum it, make it the entry, keep within the bound.
        (Blocking -- it reads the whole entry: run it in a thread.)"""
        tmp = self.dir / self.tmp_name(key)
        digest = _sha256(tmp)
        part = self.dir / f"tmp-{key}-{os.getpid()}{SUM}"
        part.write_text(digest + "\n")
        os.replace(part, self.dir / (key + SUM))
        os.replace(tmp, self.dir / self.name(key))
        self._size = None
        self.evict(keep=key)

    def intact(self, key: str) -> bool:
        """Does the entry still match the checksum taken when it was saved?  (Blocking: run in a thread.)"""
        try:
            want = (self.dir / (key + SUM)).read_text().strip()
            return _sha256(self.dir / self.name(key)) == want
        except OSError:
            return False

    def discard(self, key: str, why: str) -> None:
        log.warning("kv cache entry discarded", key=key, why=why)
        for name in (self.name(key), key + SUM, self.tmp_name(key)):
            (self.dir / name).unlink(missing_ok=True)
        self._size = None

    def entries(self) -> List[os.DirEntry]:
        try:
            return [e for e in os.scandir(self.dir) if e.name.endswith(SUFFIX) and not e.name.startswith("tmp-")]
        except FileNotFoundError:
            return []

    def size_bytes(self) -> int:
        if self._size is None:
            self._size = self._count_bytes()
        return self._size

    def _count_bytes(self) -> int:
        total = 0
        for e in self.entries():
            try:
                total += e.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def evict(self, keep: Optional[str] = None) -> List[str]:
        """Remove least recently used entries until the dir fits ``max_bytes`` (``keep`` stays)."""
        sized = []
        for e in self.entries():
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            sized.append((st.st_mtime_ns, st.st_size, e.name))
        total = sum(s for _, s, _ in sized)
        removed = []
        for _, size, name in sorted(sized):
            if total <= self.max_bytes:
                break
            if keep is not None and name == self.name(keep):
                continue
            (self.dir / name).unlink(missing_ok=True)
            (self.dir / (name[: -len(SUFFIX)] + SUM)).unlink(missing_ok=True)
            total -= size
            removed.append(name[: -len(SUFFIX)])
        if removed:
            self._size = None
            log.info("kv cache entries evicted", keys=removed, limit_mb=round(self.max_bytes / 2 ** 20, 1))
        return removed
