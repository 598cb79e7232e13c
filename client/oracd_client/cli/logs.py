"""``oracctl logs``: read oracd's rotated JSON-lines log (orac.log.2, .1, orac.log), pretty-print, follow.

oracd rotates by renaming (``orac.log`` -> ``orac.log.1`` -> ``orac.log.2``) and
opening a new ``orac.log``, so following means: read the open file to its end,
and when the name points to another inode (rotation) drain the old file and
reopen the name from its start; a file that shrank (truncated) is re-read from
the start.
"""
from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, TextIO

from oracd_protocol.errors import OracdUnavailable
from oracd_protocol.names import PACKAGE_PARENT_PARENT

from .context import EXIT_ERROR, Ctx
from .format import paint

POLL_INTERVAL = 0.2
_BLOCK = 64 * 1024
_HIDDEN = ("event", "level", "timestamp", "logger")
_LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "red", "critical": "red bold",
                "exception": "red"}
_BARE = re.compile(r"^[\w.:/@+,-]+$")


def rotated_files(path: Path) -> List[Path]:
    """Existing log files oldest first: ``orac.log.N`` ... ``orac.log.1``, ``orac.log``."""
    backups = []
    try:
        for p in path.parent.iterdir():
            suffix = p.name[len(path.name) + 1:]
            if p.name.startswith(path.name + ".") and suffix.isdigit():
                backups.append((int(suffix), p))
    except FileNotFoundError:
        pass
    files = [p for _, p in sorted(backups, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def tail_lines(fh: Any, end: int, n: int) -> List[bytes]:
    """The last ``n`` complete lines before byte offset ``end`` of a binary file (read backwards)."""
    if n <= 0 or end <= 0:
        return []
    pos = end
    data = b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if pos > 0:
        lines = lines[1:]       # the first piece may be the end of an earlier line
    return lines[-n:]


# ---------------------------------------------------------------------- formatting
def _value(v: Any) -> str:
    if isinstance(v, str):
        return v if v and _BARE.match(v) else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)


def _time(ts: Any) -> str:
    if not isinstance(ts, str):
        return "-"
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    if t.tzinfo is not None:
        t = t.astimezone()          # local time, like journalctl
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


class Formatter:
    """One JSON log line -> ``time LEVEL logger event key=value ...`` (llama-server lines marked)."""

    def __init__(self, colour: bool = False):
        self.colour = colour

    def __call__(self, raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        try:
            ev = json.loads(text)
        except ValueError:
            return text                             # not JSON (a partial line, a foreign file): as is
        if not isinstance(ev, dict):
            return text
        c = self.colour
        level = str(ev.get("level", "")).lower()
        fields: Dict[str, Any] = {k: v for k, v in ev.items() if k not in _HIDDEN}
        exc = fields.pop("exception", None)
        if fields.get("source") == "llama-server":
            fields.pop("source")
            stream = fields.pop("stream", None)
            pid = fields.pop("pid", None)
            who = f"llama-server[{pid}]" if pid is not None else "llama-server"
            if stream == "stdout":
                who += ":out"
            who = paint(f"{who:<18}", "magenta", c)
            event = paint(str(ev.get("event", "")), "dim", c)
        else:
            who = paint(f"{str(ev.get('logger') or 'oracd'):<18}", "cyan", c)
            event = str(ev.get("event", ""))
            event = paint(event, "bold", c) if level in ("warning", "error", "critical") else event
        lvl = paint(f"{level.upper():<7}", _LEVEL_STYLE.get(level, ""), c)
        line = f"{paint(_time(ev.get('timestamp')), 'dim', c)} {lvl} {who} {event}"
        if fields:
            line += "  " + " ".join(f"{paint(k, 'dim', c)}={_value(v)}" for k, v in fields.items())
        if exc:
            line += "\n" + "\n".join("    " + ln for ln in str(exc).rstrip().splitlines())
        return line


# ---------------------------------------------------------------------- reading
def last_lines(path: Path, n: int) -> List[bytes]:
    """The last ``n`` lines across the rotated files, oldest first."""
    out: List[bytes] = []
    for p in reversed(rotated_files(path)):
        if len(out) >= n:
            break
        try:
            with open(p, "rb") as fh:
                end = os.fstat(fh.fileno()).st_size
                out = tail_lines(fh, end, n - len(out)) + out
        except FileNotFoundError:
            continue          # rotated away while we looked
    return out


class Follower:
    """Yields new complete lines of ``path``, across rotations and truncation."""

    def __init__(self, path: Path, start_at_end: bool = True, notice: Optional[Callable[[str], None]] = None):
        self.path = path
        self.fh: Optional[Any] = None
        self.ino: Optional[tuple] = None
        self.buf = b""
        self.notice = notice or (lambda _m: None)
        self._open(at_end=start_at_end)

    def _open(self, at_end: bool) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if at_end:
            fh.seek(st.st_size)
        self.fh, self.ino, self.buf = fh, (st.st_dev, st.st_ino), b""
        return True

    def _drain(self) -> List[bytes]:
        assert self.fh is not None
        data = self.fh.read()
        if not data:
            return []
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def poll(self) -> List[bytes]:
        """New lines since the last poll (possibly none)."""
        if self.fh is None:
            if not self._open(at_end=False):
                return []
            self.notice(f"{self.path} appeared")
        lines = self._drain()
        if lines:
            return lines
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []          # between oracd's rename and its reopen: keep the old file for now
        if (st.st_dev, st.st_ino) != self.ino:       # rotated: finish the old file, then the new one
            lines = self._drain()
            if self.buf:
                lines.append(self.buf)
            self.fh.close()
            self.fh = None
            lines += self._missed_backups()
            if self._open(at_end=False):
                lines += self._drain()
            return lines
        if st.st_size < self.fh.tell():              # truncated in place: start over
            self.notice(f"{self.path} was truncated; reading from its start")
            self.fh.seek(0)
            self.buf = b""
            return self._drain()
        return []

    def _missed_backups(self) -> List[bytes]:
        """Several rotations between two polls: the backups newer than the file we had, oldest first."""
        missed: List[Path] = []
        i = 1
        while True:
            p = self.path.with_name(f"{self.path.name}.{i}")
            try:
                st = os.stat(p)
            except FileNotFoundError:
                break
            if (st.st_dev, st.st_ino) == self.ino:
                break
            missed.append(p)
            i += 1
        lines: List[bytes] = []
        for p in reversed(missed):
            try:
                lines += [ln for ln in p.read_bytes().split(b"\n") if ln]
            except FileNotFoundError:
                continue
        return lines

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def own_lines(peer_pid: int) -> Callable[[bytes], bool]:
    """A filter for the lines oracd logs about one client's connection (``peer_pid``): ``oracctl logs``
    asks ``status`` for the log path, and its own three lines would otherwise end every tail."""
    digits = str(peer_pid).encode()

    def is_own(line: bytes) -> bool:
        if b'"peer_pid"' not in line or digits not in line:
            return False
        try:
            return json.loads(line).get("peer_pid") == peer_pid
        except (ValueError, AttributeError):
            return False
    return is_own


def run(path: Path, n: int, follow: bool, raw: bool, out: TextIO, colour: bool,
        notice: Callable[[str], None], stop: Optional[Callable[[], bool]] = None,
        skip: Optional[Callable[[bytes], bool]] = None) -> int:
    """Print the last ``n`` lines, then (``follow``) new ones until interrupted (or ``stop()``);
    lines for which ``skip(line)`` is true are left out."""
    fmt: Callable[[bytes], str] = (lambda b: b.decode("utf-8", "replace").rstrip("\r\n")) if raw \
        else Formatter(colour)
    want = n + 8 if skip is not None else n     # room for the skipped lines
    follower = Follower(path, start_at_end=True, notice=notice) if follow else None
    # the follower opened orac.log first, so nothing written after this read is lost or doubled
    if follower is not None and follower.fh is not None:
        end = follower.fh.tell()
        with open(path, "rb") as again:        # a separate handle: the follower's offset stays put
            older = [] if want <= 0 else tail_lines(again, end, want)
        if len(older) < want:
            rest = [p for p in rotated_files(path) if p != path]
            older = _backups_tail(rest, want - len(older)) + older
    else:
        older = last_lines(path, want)
    if skip is not None:
        older = [ln for ln in older if not skip(ln)]
    _emit(older[-n:] if n else [], fmt, out)
    if follower is None:
        return 0
    try:
        while stop is None or not stop():
            lines = follower.poll()
            if lines:
                _emit([ln for ln in lines if skip is None or not skip(ln)], fmt, out)
            else:
                time.sleep(POLL_INTERVAL)
    finally:
        follower.close()
    return 0


def _backups_tail(files: List[Path], n: int) -> List[bytes]:
    out: List[bytes] = []
    for p in reversed(files):
        if len(out) >= n:
            break
        try:
            with open(p, "rb") as fh:
                out = tail_lines(fh, os.fstat(fh.fileno()).st_size, n - len(out)) + out
        except FileNotFoundError:
            continue
    return out


def _emit(lines: Iterable[bytes], fmt: Callable[[bytes], str], out: TextIO) -> None:
    for ln in lines:
        if ln.strip():
            out.write(fmt(ln) + "\n")
    out.flush()


# ---------------------------------------------------------------------- the command
def _log_path(ctx: Ctx) -> Path:
    if ctx.args.file:
        return Path(ctx.args.file)
    try:
        st = ctx.call("status", timeout=10)
        ctx.asked_status = True
        return Path(st["log_file"])
    except OracdUnavailable:
        # oracd is down, which is when its log matters most: try the usual places
        for cand in (Path("/var/log/oracd/orac.log"), PACKAGE_PARENT_PARENT / "logs" / "orac.log"):
            if cand.exists():
                ctx.note(f"oracd is not running at {ctx.socket}; reading {cand} (use --file to choose)")
                return cand
        raise


def cmd_logs(ctx: Ctx) -> int:
    a = ctx.args
    path = _log_path(ctx)
    if not path.exists() and not rotated_files(path) and not a.follow:
        ctx.note(f"oracctl: no log at {path}", "red")
        return EXIT_ERROR
    skip = own_lines(os.getpid()) if ctx.asked_status else None   # our own status call
    return run(path, a.lines, a.follow, ctx.json, ctx.out, ctx.colour_out,
               notice=lambda m: ctx.note(f"oracctl: {m}"), skip=skip)
