"""Grammar files read on every request, for the price of one ``stat``: ``GrammarFiles.read(path)``.

Today's ORAC passes a ``.gbnf`` path with each generation and rewrites that file
when its device mappings change.  oracd takes the grammar per request, so the
shim reads the file each time and sends its text; the text is cached and reused
while the file is unchanged.

When is a file unchanged?  When its identity and stat are the same: device, inode,
size, ``mtime_ns`` and ``ctime_ns`` (an atomic replace changes the inode; an edit
in place changes the size or the times).  One case escapes all of them: a rewrite
of the same size within one tick of the filesystem's timestamp clock (ext4 stamps
files from a coarse clock, a few milliseconds; some filesystems have 1 or 2 s).  So,
as git does for its index ("racily clean" entries), a cached text is trusted only
once the read happened more than ``RACY_WINDOW_NS`` after the file's mtime; until
then every call reads the file again (a few microseconds for a grammar) and
compares.  A rewritten file is therefore picked up by the very next call.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

#: A file modified less than this before it was read may still change without its stat changing.
RACY_WINDOW_NS = 2_000_000_000

StatKey = Tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class _Entry:
    key: StatKey
    text: str
    trusted: bool          # read long enough after its mtime: the stat alone proves it unchanged
    version: int           # bumped each time the text changes


class GrammarFiles:
    """Texts of grammar files by path, re-read only when the file changed (see the module docstring).

    Thread-safe (ORAC may call from FastAPI's worker threads).  ``read`` returns None
    for a missing or unreadable file, as ORAC treats a grammar file that does not
    exist as no grammar file.
    """

    def __init__(self, racy_window_ns: int = RACY_WINDOW_NS):
        self.racy_window_ns = racy_window_ns
        self._entries: Dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.reads = 0         # how many times a file was actually opened (tests, measurements)

    def read(self, path: str) -> Optional[str]:
        """The file's text, from the cache when its stat proves it unchanged."""
        try:
            st = os.stat(path)
        except OSError:
            self._entries.pop(path, None)
            return None
        key = stat_key(st)
        e = self._entries.get(path)
        if e is not None and e.trusted and e.key == key:
            return e.text
        return self._load(path, key, st.st_mtime_ns, e)

    def version(self, path: str) -> int:
        """A number that changes whenever ``read(path)`` returns different text (0: never read)."""
        e = self._entries.get(path)
        return e.version if e is not None else 0

    def forget(self, path: Optional[str] = None) -> None:
        """Drop one cached file (or all): the next ``read`` opens it."""
        with self._lock:
            if path is None:
                self._entries.clear()
            else:
                self._entries.pop(path, None)

    def _load(self, path: str, key: StatKey, mtime_ns: int, old: Optional[_Entry]) -> Optional[str]:
        now = time.time_ns()
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            self._entries.pop(path, None)
            return None
        self.reads += 1
        with self._lock:
            version = old.version if old is not None and old.text == text else \
                (old.version + 1 if old is not None else 1)
            self._entries[path] = _Entry(key, text, now - mtime_ns > self.racy_window_ns, version)
        return text


__all__ = ["GrammarFiles", "RACY_WINDOW_NS", "stat_key"]
