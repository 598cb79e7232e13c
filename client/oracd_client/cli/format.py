"""oracctl's human output: sizes, durations, aligned tables, colours, progress lines."""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Optional, Sequence, TextIO


def size(n: Any) -> str:
    """Bytes as B / kB / MB / GB (decimal units: 1 MB = 1,000,000 bytes)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    n = float(n)
    if n < 1000:
        return f"{n:.0f} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        if n < scale * 1000 or unit == "TB":
            value = n / scale
            return f"{value:.2f} {unit}" if unit in ("GB", "TB") else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def duration(seconds: Any) -> str:
    """Seconds for humans: 350 ms, 2.3 s, 4m 05s, 3h 02m, 2d 04h."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = float(seconds)
    if s < 0:
        s = 0.0
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}m {sec:02d}s"
    if s < 86400:
        h, rest = divmod(int(round(s)), 3600)
        return f"{h}h {rest // 60:02d}m"
    d, rest = divmod(int(round(s)), 86400)
    return f"{d}d {rest // 3600:02d}h"


def ms(value: Any) -> str:
    return duration(value / 1000.0) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def plural(n: int, word: str, many: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """An aligned text table (two spaces between columns; columns in ``right`` right-aligned)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(len(r))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def key_values(pairs: Sequence[Sequence[Any]]) -> str:
    """``key  value`` lines with the values aligned."""
    pairs = [(str(k), "" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def dumps(obj: Any, compact: bool = False) -> str:
    if compact:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(obj, ensure_ascii=False, indent=2)


# ---------------------------------------------------------------------- terminal
def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def colour_ok(stream: TextIO) -> bool:
    """ANSI colours on a terminal, unless NO_COLOR is set or TERM=dumb."""
    return is_tty(stream) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


_CODES = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
          "cyan": "36"}


def paint(text: str, style: str, enabled: bool) -> str:
    if not enabled or not text or not style:
        return text
    return f"\033[{';'.join(_CODES[s] for s in style.split())}m{text}\033[0m"


def term_width(default: int = 80) -> int:
    return shutil.get_terminal_size((default, 24)).columns


# ---------------------------------------------------------------------- progress
class Progress:
    """A progress display on ``stream`` (stderr).

    On a terminal: one line redrawn in place with ``\\r`` (bar, percent, counts,
    ETA).  Otherwise: a plain line each time the percentage crosses another 10%
    (and always at 100%), so logs and pipes get a short, readable record.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr, tty: Optional[bool] = None):
        self.label = label
        self.stream = stream
        self.tty = is_tty(stream) if tty is None else tty
        self.last_decile = -1
        self.drawn = False

    def update(self, done: int, total: int, elapsed_s: float, detail: str = "", unit: str = "tensors") -> None:
        if total <= 0:
            return
        done = max(0, min(done, total))
        pct = done * 100.0 / total
        eta = elapsed_s / done * (total - done) if done else None
        if done >= total:
            tail = f"done in {duration(elapsed_s)}"
        else:
            tail = f"ETA {duration(eta)}" if eta is not None else "ETA ?"
        counts = f"{done}/{total} {unit}"
        if self.tty:
            width = term_width()
            bar_w = max(10, min(30, width - 60))
            filled = int(bar_w * done / total)
            bar = "[" + "#" * filled + "-" * (bar_w - filled) + "]"
            line = f"{self.label} {bar} {pct:5.1f}%  {counts}  {tail}"
            if detail and done < total:
                line += f"  {detail}"
            line = line[:max(20, width - 1)]
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            self.drawn = True
            return
        decile = int(pct // 10)
        if decile > self.last_decile:
            self.last_decile = decile
            self.stream.write(f"{self.label} {pct:3.0f}%  {counts}  {duration(elapsed_s)} elapsed  {tail}\n")
            self.stream.flush()

    def status(self, text: str) -> None:
        """A free-form status (load progress): redrawn in place on a terminal, a line otherwise."""
        if self.tty:
            width = term_width()
            self.stream.write("\r\033[K" + f"{self.label} {text}"[:max(20, width - 1)])
            self.stream.flush()
            self.drawn = True
        else:
            self.stream.write(f"{self.label} {text}\n")
            self.stream.flush()

    def clear(self) -> None:
        """Remove the in-place line (a terminal); nothing otherwise."""
        if self.tty and self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False

    def end(self) -> None:
        """Finish the in-place line (newline) so what follows starts on its own line."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


