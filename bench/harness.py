"""The benchmark's plumbing: timeouts, progress lines, failed requests and failed phases.

Kept free of oracd, llama.cpp and third-party imports so it can be unit-tested in
milliseconds (tests/unit/test_bench_harness.py).  Why it exists: a full run takes
minutes, so it must say how far along it is, and one timed-out request (or one
daemon that will not start) must cost that request (or that phase), not the run.
"""
from __future__ import annotations

import inspect
import statistics
import sys
import time
from dataclasses import dataclass, fields
from typing import IO, Any, Awaitable, Callable, Dict, List, Optional

FAILED = object()   # what attempt() returns for a failed request: unambiguous, unlike None


@dataclass(frozen=True)
class Timeouts:
    """Every wait of the benchmark, in seconds, in one place.

    Generous on purpose: a loaded 2-core box can be many times slower than a quiet
    one, and a timeout only bounds a wait, it never shortens a measurement.
    ``--timeout-scale`` stretches them all (or shrinks them, to exercise the failure
    path); ``stop`` only ever grows, so cleanup stays reliable.
    """
    generate: float = 120.0   # one generate request
    load: float = 300.0       # load_model / unload_model (the warm-up phase prefills a long prompt)
    start: float = 180.0      # oracd or llama-server, from launch to ready
    call: float = 30.0        # a cheap RPC: status, list_models
    grace: float = 15.0       # a client waits this much beyond the server's own timeout, so its error arrives
    stop: float = 60.0        # stopping a process at cleanup

    def scaled(self, k: float) -> "Timeouts":
        if not k > 0:
            raise ValueError(f"timeout scale must be > 0, not {k}")
        vals = {f.name: round(getattr(self, f.name) * k, 3) for f in fields(self)}
        vals["stop"] = round(self.stop * max(1.0, k), 3)
        return Timeouts(**vals)


# ---------------------------------------------------------------------- figures
def pct(xs: List[float], p: float) -> Optional[float]:
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _r(v: Optional[float], nd: int = 3) -> Optional[float]:
    return None if v is None else round(v, nd)


def summary(xs: List[float], failures: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Percentiles of the successful requests only (None when there were none), with their failures."""
    out: Dict[str, Any] = {"n": len(xs), "p50": _r(pct(xs, 50)), "p95": _r(pct(xs, 95)), "p99": _r(pct(xs, 99)),
                           "mean": _r(statistics.fmean(xs)) if xs else None,
                           "min": _r(min(xs)) if xs else None, "max": _r(max(xs)) if xs else None}
    if failures is not None:
        out["failures"] = failures
    return out


def div(a: Optional[float], b: Optional[float], nd: int) -> Optional[float]:
    """a / b rounded, or None when either is missing (a variant with no successful request)."""
    return None if a is None or b is None or b == 0 else round(a / b, nd)


def sub(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a - b rounded, or None when either is missing."""
    return None if a is None or b is None else round(a - b, 3)


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` (some exceptions have an empty message), cut to ``limit`` characters."""
    msg = str(exc).strip()
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


class Failures:
    """Failed requests by key (a variant, a measurement): how many, and the first few errors.

    A failed request is recorded instead of raised, so one timeout costs one sample,
    not the minutes of measurements around it; callers leave it out of the figures.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._count: Dict[str, int] = {}
        self._examples: Dict[str, List[str]] = {}

    def add(self, key: str, error: Any) -> None:
        self._count[key] = self._count.get(key, 0) + 1
        examples = self._examples.setdefault(key, [])
        if len(examples) < self.keep:
            examples.append(describe(error) if isinstance(error, BaseException) else str(error))

    def count(self, key: Optional[str] = None) -> int:
        return sum(self._count.values()) if key is None else self._count.get(key, 0)

    def get(self, key: str) -> Dict[str, Any]:
        return {"count": self.count(key), "examples": list(self._examples.get(key, []))}

    def as_dict(self) -> Dict[str, Dict[str, Any]]:
        return {k: self.get(k) for k in self._count}


def failures_note(failures: Dict[str, Dict[str, Any]]) -> List[str]:
    """The markdown line under a table when some of its requests failed (nothing when none did)."""
    parts = [f"{k}: {v['count']} (e.g. {first_line(v['examples'][0]) if v['examples'] else '?'})"
             for k, v in failures.items() if v.get("count")]
    return [f"Failed requests, left out of the figures: {'; '.join(parts)}."] if parts else []


# ---------------------------------------------------------------------- progress
def fmt_elapsed(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = max(0, int(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress lines for a whole run, on stderr (stdout stays the final markdown).

    Each line is ``[bench <elapsed since start>] <text>``.  Phases report through
    ``phase()``; what they did (time, failed requests, or why they could not run at
    all) is kept for the results and for the exit status.
    """

    def __init__(self, stream: Optional[IO[str]] = None, clock: Callable[[], float] = time.monotonic,
                 every_frac: float = 0.1, min_gap: float = 2.0, max_gap: float = 15.0):
        self.stream = stream
        self.clock = clock
        self.every_frac, self.min_gap, self.max_gap = every_frac, min_gap, max_gap
        self.t0 = clock()
        self.phases: Dict[str, Dict[str, Any]] = {}

    def line(self, text: str) -> None:
        print(f"[bench {fmt_elapsed(self.clock() - self.t0)}] {text}", file=self.stream or sys.stderr, flush=True)

    def phase(self, name: str, total: int, unit: str = "run", detail: str = "") -> "Phase":
        return Phase(self, name, total, unit, detail)

    def failed_phases(self) -> List[str]:
        return [k for k, v in self.phases.items() if v.get("failed")]

    def finish(self) -> None:
        failed = self.failed_phases()
        reqs = sum(v["failed_requests"] for v in self.phases.values())
        self.line(f"finished: {len(self.phases)} phases, "
                  + (f"{len(failed)} FAILED ({', '.join(failed)})" if failed else "none failed")
                  + f", {reqs} failed requests")


class Phase:
    """One measurement phase: its progress lines and the failures of its requests.

    ``run(body)`` prints the start line, runs ``body(phase)`` and prints the end line;
    if the body raises (the daemon would not start...), the phase's result is
    ``{"failed": reason}`` and the run goes on.  Inside, every measured request goes
    through ``timed``/``attempt``, which record a failure instead of raising.
    """

    def __init__(self, progress: Progress, name: str, total: int, unit: str, detail: str):
        self.progress, self.name, self.total, self.unit, self.detail = progress, name, total, unit, detail
        self.done = 0
        self.failures = Failures()
        self._last_step = 0
        self._last_line = self.t0 = progress.clock()

    def _suffix(self) -> str:
        return f" ({self.detail})" if self.detail else ""

    def advance(self, n: int = 1) -> None:
        """Count ``n`` units done; print a line each ~every_frac of the total (at most every min_gap
        seconds), or after max_gap seconds without one.  Cheap: call it per request."""
        self.done += n
        if self.total <= 0 or self.done >= self.total:
            return                                   # the end line says the rest
        now = self.progress.clock()
        step = self.done * round(1 / self.progress.every_frac) // self.total     # whole steps done, exact
        since = now - self._last_line
        if (step > self._last_step and since >= self.progress.min_gap) or since >= self.progress.max_gap:
            self._last_step, self._last_line = step, now
            failed = self.failures.count()
            self.progress.line(f"{self.name}: {self.unit} {self.done}/{self.total}{self._suffix()}"
                               + (f", {failed} failed" if failed else ""))

    def fail(self, key: str, error: Any) -> None:
        self.failures.add(key, error)

    def attempt(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), or FAILED (recorded under ``key``) if it raised."""
        try:
            return fn(*args)
        except Exception as exc:
            self.fail(key, exc)
            return FAILED

    async def attempt_async(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """await fn(), or FAILED (recorded under ``key``) if it raised."""
        try:
            return await fn()
        except Exception as exc:
            self.fail(key, exc)
            return FAILED

    async def timed(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Optional[float]:
        """Milliseconds that ``await fn()`` took, or None (recorded under ``key``) if it raised."""
        t0 = time.perf_counter()
        try:
            await fn()
        except Exception as exc:
            self.fail(key, exc)
            return None
        return (time.perf_counter() - t0) * 1000

    async def sample(self, into: Dict[str, List[float]], key: str, fn: Callable[[], Awaitable[Any]],
                     into_key: Optional[str] = None) -> Optional[float]:
        """timed(), appending the milliseconds to ``into[into_key or key]`` when the request succeeded."""
        ms = await self.timed(key, fn)
        if ms is not None:
            into[into_key or key].append(ms)
        return ms

    async def run(self, body: Callable[["Phase"], Any]) -> Any:
        """The phase's result (a dict gets this phase's "failures"), or {"failed": reason}."""
        self.progress.line(f"{self.name}: start, {self.total} {self.unit}s{self._suffix()}")
        self._last_line = self.t0 = self.progress.clock()
        error = None
        try:
            result = body(self)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            error = describe(exc, limit=2000)
            result = {"failed": error}
        took = fmt_elapsed(self.progress.clock() - self.t0)
        failed = self.failures.count()
        if error:
            self.progress.line(f"{self.name}: FAILED after {took}: {first_line(error)}")
        else:
            self.progress.line(f"{self.name}: done in {took}, {self.done}/{self.total} {self.unit}s, "
                               f"{failed} failed requests")
        if isinstance(result, dict):
            result.setdefault("failures", self.failures.as_dict())
        self.progress.phases[self.name] = {"elapsed_s": round(self.progress.clock() - self.t0, 1),
                                           "failed_requests": failed, "failed": error}
        return result
