"""The one warm llama-server, as an explicit state machine owned by one task.

Only ``Supervisor.run`` starts, stops, restarts or swaps the child.  Request
handlers never touch the process: they say which model they want
(``use()``, ``load()``, ``unload()``) and wait, with a deadline, for the state
to settle.  Every transition is logged once (``child state`` events).

States::

    stopped --want model--> starting --/health 200--> ready
    ready --other model wanted--> stopping (after in-flight requests drain) --> starting
    ready --crash or hang--> backoff --delay--> starting          (restart, backoff grows)
    starting --load fails--> failed (explicit load) | backoff (restart of a model that was ready)
    any --shutdown--> stopping --> shutdown

Where is the child restarted?  ``_on_child_lost`` (crash/hang -> backoff) and the
``start`` branch of ``run``.
"""
from __future__ import annotations

import enum
import logging
import math
import signal
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Deque, Dict, List, Optional, Tuple

import anyio
import anyio.abc
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from . import exits, llama_process as lp
from .config import Config
from .errors import ModelLoadFailed, OracError, ServerUnavailable, ShuttingDown, GenerationTimeout
from .llama_http import LlamaHTTP, LlamaEndpoint
from .rpc_workers import RpcWorkers, worker_lost
from .logs import get as get_logger

log = get_logger("oracd.supervisor")
child_log = get_logger("llama-server")


class ChildState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


_LOAD_REASONS = (
    ("Failed to connect to", "rpc_worker_down"),               # ggml-rpc.cpp: a --rpc worker is not there
    ("Remote RPC server crashed", "rpc_worker_lost"),
    ("unknown model architecture", "unsupported_architecture"),
    ("failed to allocate", "out_of_memory"),
    ("out of memory", "out_of_memory"),
    ("cudaMalloc failed", "out_of_memory"),
    ("invalid magic", "not_gguf"),
    ("failed to read magic", "not_gguf"),
    ("data is not within the file bounds", "corrupt"),        # tensor 'x' data is not within...
    ("failed to load model", "load_failed"),
)


_RSS_CACHE: Dict[int, Tuple[float, Optional[int]]] = {}


def rss_of(proc: psutil.Process, max_age: float = 1.0) -> Optional[int]:
    """A process's RSS, read at most once a second (status is polled; /proc reads are not free)."""
    now = time.monotonic()
    hit = _RSS_CACHE.get(proc.pid)
    if hit is not None and now - hit[0] < max_age:
        return hit[1]
    try:
        rss: Optional[int] = proc.memory_info().rss
    except psutil.Error:
        rss = None
    if len(_RSS_CACHE) > 64:
        _RSS_CACHE.clear()
    _RSS_CACHE[proc.pid] = (now, rss)
    return rss


_LLAMA_LEVELS = {"W ": logging.WARNING, "E ": logging.ERROR, "D ": logging.DEBUG}


def slot_progress(slots: Any) -> Tuple[Any, ...]:
    """The busy slots' progress counters from GET /slots: unchanged for hang_timeout = stuck."""
    if not isinstance(slots, list):
        return ()
    out = []
    for s in slots:
        if isinstance(s, dict) and s.get("is_processing"):
            tokens = s.get("next_token") or []
            out.append((s.get("id"), s.get("id_task"), s.get("n_prompt_tokens_processed"),
                        tuple(t.get("n_decoded") for t in tokens if isinstance(t, dict))))
    return tuple(out)


def cpu_seconds(child: "Child") -> float:
    """CPU time llama-server has used so far (user + system, all threads)."""
    try:
        if child.ps is None:
            child.ps = psutil.Process(child.proc.pid)
        t = child.ps.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def classify_load_failure(tail: List[str]) -> str:
    text = "\n".join(tail)
    for needle, reason in _LOAD_REASONS:
        if needle in text:
            return reason
    return "load_failed"


class Child:
    """One running llama-server: the process, its endpoint and HTTP client, its output tail."""

    def __init__(self, proc: anyio.abc.Process, model: str, endpoint: LlamaEndpoint, cmd: List[str],
                 parallel: int = 0):
        self.proc = proc
        self.model = model
        self.endpoint = endpoint
        self.http = LlamaHTTP(endpoint, max_connections=parallel)
        self.cmd = cmd
        self.exited = anyio.Event()
        self.returncode: Optional[int] = None
        self.tail: Deque[str] = deque(maxlen=40)
        self.started_at = time.monotonic()
        self.ready_at: Optional[float] = None
        self.killed_for: Optional[str] = None   # "hang" / "stop" / "rpc_worker_lost" when we killed it ourselves
        self.rpc_workers: Tuple[str, ...] = ()    # the --rpc workers it was started with
        self.ps: Optional[psutil.Process] = None


class Supervisor:
    """Owns the llama-server child; see the module docstring for the state machine."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.state = ChildState.STOPPED
        self.child: Optional[Child] = None
        self.restarts = 0
        self.loads = 0
        self.consecutive_failures = 0
        self.last_error: Optional[Dict[str, Any]] = None
        self.last_exit: Optional[Dict[str, Any]] = None
        self.rpc = RpcWorkers(cfg)
        self._want: Optional[str] = None        # model name wanted
        self._want_path: Optional[Path] = None
        self._want_fresh = True                 # True until the wanted model has been ready once
        self._backoff_until = 0.0
        self._shutdown = False
        self._kick = anyio.Event()
        self._changed = anyio.Event()
        self._failure_seq = 0
        self._failure: Optional[OracError] = None
        self._failure_model: Optional[str] = None
        self._queue: Deque[Tuple[str, Path]] = deque()   # models other requests are waiting for, in order
        self._waiting: Dict[str, int] = {}                # model -> requests waiting for it
        self._inflight = 0
        self._drained = anyio.Event()
        self._drained.set()
        self._tg: Optional[anyio.abc.TaskGroup] = None
        self.finished = anyio.Event()        # set when run() has stopped the child for good
        self._restart_why: Optional[str] = None
        self.warmup_ms: Optional[float] = None

    # ------------------------------------------------------------------ queries
    @property
    def model(self) -> Optional[str]:
        return self.child.model if self.child else None

    @property
    def inflight(self) -> int:
        return self._inflight

    def status(self) -> Dict[str, Any]:
        child = self.child
        st: Dict[str, Any] = {
            "state": self.state.value, "model": self.model, "wanted_model": self._want,
            "pid": child.proc.pid if child else None, "restarts": self.restarts, "loads": self.loads,
            "consecutive_failures": self.consecutive_failures, "in_flight": self._inflight,
            "endpoint": child.endpoint.describe() if child else None,
            "last_error": self.last_error, "last_exit": self.last_exit,
            "profile": self.model if self.model in self.cfg.profiles else None, "warmup_ms": self.warmup_ms,
        }
        if child and child.returncode is None:
            try:
                if child.ps is None:
                    child.ps = psutil.Process(child.proc.pid)
                st["rss_bytes"] = rss_of(child.ps)
            except psutil.Error:     # exited and reaped, but _reap has not run yet
                st["rss_bytes"] = None
            st["uptime_s"] = round(time.monotonic() - child.started_at, 3)
        if self.state == ChildState.BACKOFF:
            st["retry_in_s"] = round(max(0.0, self._backoff_until - time.monotonic()), 3)
        rpc = self.rpc.status(self.model or self._want, child.rpc_workers if child else ())
        if rpc is not None:
            st["rpc"] = rpc
        return st

    # ------------------------------------------------------------------ requests' side
    def _poke(self) -> None:
        self._kick.set()

    async def _wait_change(self, deadline: float) -> None:
        """Wait for the next state transition, or raise GenerationTimeout at the deadline."""
        ev = self._changed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GenerationTimeout("timed out waiting for the model to become ready")
        with anyio.move_on_after(remaining):
            await ev.wait()
            return
        raise GenerationTimeout("timed out waiting for the model to become ready")

    @property
    def failure_seq(self) -> int:
        """Bumped at every load failure: pass it to load() to see failures since then."""
        return self._failure_seq

    async def _settle_on(self, name: str, path: Path, deadline: float, seq: Optional[int] = None) -> Child:
        """Wait until ``name`` is READY (or its load failed).

        Requests for other models queue up in arrival order (``_queue``); the owner
        swaps to the next queued model once nobody is still waiting for the
        current one, so a swap never starves and never ping-pongs.
        """
        child = self.child
        if (self.state == ChildState.READY and child and child.model == name and self._want == name
                    and child.returncode is None):
            return child                                    # fast path: the warm model
        seq = self._failure_seq if seq is None else seq
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            while True:
                if self._shutdown:
                    raise ShuttingDown()
                child = self.child
                if (self.state == ChildState.READY and child and child.model == name and self._want == name
                    and child.returncode is None):
                    return child
                if self._failure_seq != seq and self._failure_model == name and self._failure is not None:
                    if self._want != name:
                        raise self._failure                     # an explicit load failed: its own error
                    if self.consecutive_failures >= self.cfg.llama.crash_loop_threshold:
                        raise ServerUnavailable(
                            f"llama-server for {name} is in a crash loop ({self.consecutive_failures} failures)",
                            {"last_error": self.last_error, "last_exit": self.last_exit})
                if (self.state == ChildState.BACKOFF and self._want == name
                        and self.consecutive_failures >= self.cfg.llama.crash_loop_threshold):
                    raise ServerUnavailable(
                        f"llama-server for {name} is in a crash loop ({self.consecutive_failures} failures); "
                        f"next attempt in {max(0.0, self._backoff_until - time.monotonic()):.1f}s",
                        {"last_error": self.last_error, "last_exit": self.last_exit})
                if self._want is None:
                    self._set_want(name, path)
                elif self._want != name and all(q != name for q, _ in self._queue):
                    self._queue.append((name, path))
                    self._poke()
                await self._wait_change(deadline)
        finally:
            left = self._waiting[name] - 1
            if left:
                self._waiting[name] = left
            else:
                del self._waiting[name]
                if self._queue:
                    self._poke()       # the owner may now swap to the next queued model

    def _set_want(self, name: Optional[str], path: Optional[Path]) -> None:
        if self._want != name:
            self._want, self._want_path, self._want_fresh = name, path, True
            self._backoff_until = 0.0
            self.consecutive_failures = 0
        self._poke()

    def _next_wanted(self) -> None:
        """Owner side: move on to the next queued model once nobody waits for the current one."""
        while self._queue and (self._want is None or not self._waiting.get(self._want)):
            name, path = self._queue.popleft()
            if name == self._want:
                continue
            if not self._waiting.get(name):
                continue                   # its requests gave up (timeout) meanwhile
            log.info("swap requested", model=name, previous=self._want)
            self._set_want(name, path)
            return

    @asynccontextmanager
    async def use(self, name: str, path: Path, deadline: float) -> AsyncIterator[Child]:
        """Hold the loaded model for one request (a swap waits until in-flight requests finish)."""
        child = await self._settle_on(name, path, deadline)
        self._inflight += 1
        if self._drained.is_set():
            self._drained = anyio.Event()
        try:
            yield child
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._drained.set()

    async def load(self, name: str, path: Path, deadline: float, since_seq: Optional[int] = None) -> Child:
        return await self._settle_on(name, path, deadline, since_seq)

    async def unload(self, deadline: float) -> None:
        self._set_want(None, None)
        while self.state not in (ChildState.STOPPED, ChildState.FAILED, ChildState.SHUTDOWN):
            await self._wait_change(deadline)

    def request_restart(self, why: str) -> None:
        """Restart the warm model (same model, new load options), e.g. after a profile reload."""
        self._restart_why = why
        self._poke()

    async def _kill(self, child: Child, why: str, reason: str = "hang") -> None:
        """The child is stuck or lost a worker: SIGKILL its group and wait for the exit (then it is restarted)."""
        if child.returncode is None and child.killed_for is None:
            if reason == "hang":
                log.warning("child hang", why=why, pid=child.proc.pid)
            child.killed_for = reason
            lp.signal_group(child.proc.pid, signal.SIGKILL)
        with anyio.move_on_after(5):
            await child.exited.wait()

    def shutdown(self) -> None:
        self._shutdown = True
        self._poke()

    # ------------------------------------------------------------------ the owner task
    def _set_state(self, state: ChildState, **info: Any) -> None:
        if state == self.state and not info:
            return
        prev, self.state = self.state, state
        info.setdefault("model", self.model or self._want)
        log.info("child state", state=state.value, previous=prev.value, **info)
        ev, self._changed = self._changed, anyio.Event()
        ev.set()

    async def _wait_kick(self, timeout: float = math.inf) -> None:
        with anyio.move_on_after(timeout):
            await self._kick.wait()
        self._kick = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """The owner loop.  Returns after shutdown() once the child is stopped."""
        binary_name = Path(str(self.cfg.llama.server_bin)).name
        lp.prepare_runtime_dir(self.cfg)
        orphan = await anyio.to_thread.run_sync(lp.reap_orphan, self.cfg, binary_name, self.cfg.llama.stop_grace)
        if orphan:
            log.warning("stopped orphaned llama-server", pid=orphan)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await self._loop()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.child is not None:
                    await self._stop_child("shutdown")
                self._set_state(ChildState.SHUTDOWN)
                self.finished.set()

    async def _loop(self) -> None:
        while True:
            if self._shutdown:
                if self.child is not None:
                    await self._drain_inflight(self.cfg.server.shutdown_grace)
                    await self._stop_child("shutdown")
                return
            self._next_wanted()
            want = self._want
            child = self.child
            if child is None:
                if want is None:
                    if self.state not in (ChildState.STOPPED, ChildState.FAILED):
                        self._set_state(ChildState.STOPPED)
                    await self._wait_kick()
                    continue
                wait = self._backoff_until - time.monotonic()
                if wait > 0:
                    if self.state != ChildState.BACKOFF:
                        self._set_state(ChildState.BACKOFF, retry_in_s=round(wait, 3))
                    await self._wait_kick(wait)
                    continue
                await self._start(want, self._want_path)
                continue
            if child.returncode is not None:
                self._on_child_lost(child)
                continue
            if want != child.model:
                await self._drain_inflight(self.cfg.llama.swap_drain_timeout)
                await self._stop_child("swap" if want else "unload")
                continue
            if self._restart_why:
                why, self._restart_why = self._restart_why, None
                await self._drain_inflight(self.cfg.llama.swap_drain_timeout)
                await self._stop_child(why)
                continue
            await self._monitor(child)

    async def _drain_inflight(self, timeout: float) -> None:
        if self._inflight:
            log.info("waiting for in-flight requests", in_flight=self._inflight, timeout_s=timeout)
            with anyio.move_on_after(timeout):
                await self._drained.wait()

    async def _monitor(self, child: Child) -> None:
        """While READY: wake on a kick or child exit, probe the child every health_interval.

        Idle, the probe is /health.  With generations in flight it is /slots: a
        decode that stops making progress (a GPU hang, a frozen RPC worker) leaves
        /health at 200, but its slot's counters stop moving (or /slots goes
        unanswered).  Either for hang_timeout means the child is killed and restarted.
        """
        l = self.cfg.llama
        unhealthy_since: Optional[float] = None
        slots_probe = True            # off for a child started with slots disabled (501)
        progress: Any = None          # the busy slots' counters at the last /slots answer
        progress_since, progress_cpu = time.monotonic(), 0.0
        while child.returncode is None and not self._kick.is_set():
            with anyio.move_on_after(l.health_interval):
                async with anyio.create_task_group() as tg:
                    async def watch(ev: anyio.Event) -> None:
                        await ev.wait()
                        tg.cancel_scope.cancel()
                    tg.start_soon(watch, self._kick)
                    tg.start_soon(watch, child.exited)
            if child.returncode is not None or self._kick.is_set():
                break
            if child.rpc_workers:
                lost = await anyio.to_thread.run_sync(self.rpc.lost, child.proc.pid, child.rpc_workers)
                if lost:
                    log.warning("rpc worker lost", workers=lost, pid=child.proc.pid)
                    await self._kill(child, f"rpc workers lost: {', '.join(lost)}", "rpc_worker_lost")
                    break
            else:
                await self.rpc.recheck_idle(5 * l.health_interval)
            probe = "/slots" if self._inflight and slots_probe else "/health"
            ok = False
            with anyio.move_on_after(l.health_timeout):
                try:
                    if probe == "/slots":
                        status, slots = await child.http.slots()
                        if status == 501:
                            slots_probe = False
                            status = await child.http.health()
                        elif status == 200:
                            now_progress, cpu = slot_progress(slots), cpu_seconds(child)
                            stalled = time.monotonic() - progress_since
                            if now_progress != progress or not now_progress:
                                progress, progress_since, progress_cpu = now_progress, time.monotonic(), cpu
                            elif stalled >= l.hang_timeout and cpu - progress_cpu < 0.1 * stalled:
                                # counters frozen and the child idle: not a long prompt batch, a stuck decode
                                await self._kill(child, f"no progress in /slots for {stalled:.1f}s "
                                                        f"({cpu - progress_cpu:.2f}s CPU)")
                                break
                    else:
                        progress = None
                        status = await child.http.health()
                    ok = status == 200
                except Exception:
                    ok = False
            now = time.monotonic()
            if ok:
                unhealthy_since = None
                if child.ready_at and now - child.ready_at > l.restart_backoff_reset and self.consecutive_failures:
                    self.consecutive_failures = 0
                continue
            if child.returncode is not None:
                break
            unhealthy_since = unhealthy_since or now
            stuck_s = now - unhealthy_since + l.health_timeout
            log.warning("health probe failed", pid=child.proc.pid, probe=probe,
                        unhealthy_s=round(now - unhealthy_since, 3))
            if stuck_s >= l.hang_timeout:
                await self._kill(child, f"{probe} unanswered for {stuck_s:.1f}s")
                break
        self._kick = anyio.Event()

    def _on_child_lost(self, child: Child) -> None:
        """The child exited on its own (crash) or was killed for a hang: schedule a restart."""
        self.restarts += 1
        self.consecutive_failures += 1
        delay = min(self.cfg.llama.restart_backoff_initial * 2 ** (self.consecutive_failures - 1),
                    self.cfg.llama.restart_backoff_max)
        if child.killed_for is None and child.rpc_workers and worker_lost(child.tail):
            child.killed_for = "rpc_worker_lost"   # llama-server aborted: a worker went away under it
        reason = child.killed_for or "crash"
        message = self._record_exit(child, reason)
        self.last_error = {"message": message, "at": time.time()}
        log.error("child lost", pid=child.proc.pid, message=message, **exits.exit_info(child.returncode),
                  reason=reason, stderr_tail=list(child.tail)[-10:], restart_in_s=delay, restarts=self.restarts)
        self._cleanup_child(child)
        self._backoff_until = time.monotonic() + delay
        self._set_state(ChildState.BACKOFF, retry_in_s=delay)

    def _record_exit(self, child: Child, reason: str) -> str:
        """status.child.last_exit for a child that is gone: "llama-server crashed (SIGSEGV)" and why."""
        message = exits.describe(child.returncode) + ("" if reason in ("crash", "load_failed") else f" ({reason})")
        self.last_exit = {**exits.exit_info(child.returncode), "message": message, "reason": reason,
                          "stderr_tail": list(child.tail)[-10:], "at": time.time()}
        return message

    def _cleanup_child(self, child: Child) -> None:
        self.child = None
        self.rpc.attached = {}
        lp.remove_pidfile(self.cfg)
        if self._tg is not None:
            self._tg.start_soon(child.http.close)

    async def _start(self, name: str, path: Optional[Path]) -> None:
        """STARTING: spawn llama-server for ``name`` and wait for /health 200 while it is alive."""
        assert path is not None and self._tg is not None
        fresh = self._want_fresh
        self._set_state(ChildState.STARTING, model=name)
        t0 = time.monotonic()
        try:
            binary = lp.find_binary(self.cfg.llama.server_bin)
            workers, rpc_error = await self.rpc.plan(name)
            if rpc_error:
                raise ModelLoadFailed(f"cannot load {name}: {rpc_error}",
                                      {"reason": "rpc_worker_down", "workers": [
                                          self.rpc.checks[a].as_dict() for a in workers if a in self.rpc.checks]})
            endpoint = lp.make_endpoint(self.cfg, binary)
            cmd = lp.build_command(self.cfg, binary, path, endpoint, workers)
            proc = await anyio.open_process(cmd, stdin=None, env=lp.child_env(endpoint), start_new_session=True)
        except OracError as exc:
            self._load_failed(name, exc, fresh)
            return
        except OSError as exc:
            self._load_failed(name, ModelLoadFailed(f"cannot start llama-server: {exc}", {"reason": "spawn"}), fresh)
            return
        child = Child(proc, name, endpoint, cmd, self.cfg.llama.parallel)
        child.rpc_workers = workers
        self.child = child
        self.loads += 1
        lp.write_pidfile(self.cfg, proc.pid)
        log.info("child spawned", pid=proc.pid, cmd=" ".join(cmd))
        self._tg.start_soon(self._pump, child, proc.stdout, "stdout")
        self._tg.start_soon(self._pump, child, proc.stderr, "stderr")
        self._tg.start_soon(self._reap, child)
        err = await self._wait_healthy(child)
        if err is None and child.returncode is None and self._want == name and not self._shutdown:
            await self._warm(child)
            if workers:   # status shows the connections from the start, not from the first health tick
                await anyio.to_thread.run_sync(self.rpc.lost, proc.pid, workers)
            child.ready_at = time.monotonic()
            self._want_fresh = False
            self.last_error = None
            self._set_state(ChildState.READY, pid=proc.pid, load_s=round(child.ready_at - t0, 3))
            return
        if err is None:  # aborted: someone wants another model, or we are shutting down
            log.info("start aborted", model=name, why="shutdown" if self._shutdown else "another model wanted")
            await self._stop_child("start aborted")
            return
        if child.returncode is not None:
            self._record_exit(child, "load_failed")
        await self._stop_child("load failed")
        self._load_failed(name, err, fresh)

    async def _warm(self, child: Child) -> None:
        """Prefill every slot's KV cache with the profile's system prompt (cache_prompt keeps it),
        so the first real request after a start, swap or restart pays only for its own tokens."""
        prof = self.cfg.profile_for(child.model)
        system = prof.effective_system_prompt() if prof is not None else None
        if not system or not self.cfg.llama.warmup:
            self.warmup_ms = None
            return
        t0 = time.monotonic()

        async def one(slot: int) -> None:
            body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "ok"}],
                    "max_tokens": 1, "temperature": 0, "id_slot": slot, "cache_prompt": True}
            try:
                await child.http.chat(body)
            except Exception as exc:   # warm-up is an optimisation: never fail a load over it
                log.warning("warm-up failed", slot=slot, error=str(exc))

        with anyio.move_on_after(self.cfg.llama.load_timeout):
            async with anyio.create_task_group() as tg:
                for slot in range(self.cfg.llama.parallel):
                    tg.start_soon(one, slot)
        self.warmup_ms = round((time.monotonic() - t0) * 1000, 1)
        log.info("slots warmed", model=child.model, slots=self.cfg.llama.parallel, ms=self.warmup_ms)

    def _load_failed(self, name: str, err: OracError, fresh: bool) -> None:
        self.last_error = {"message": err.message, "data": err.data, "at": time.time()}
        self._failure, self._failure_model = err, name
        self._failure_seq += 1
        log.error("load failed", model=name, error=err.message, fresh=fresh)
        if fresh:
            # an explicit load (or swap) failed: do not retry on our own; callers see the error
            self._want, self._want_path = None, None
            self._set_state(ChildState.FAILED, error=err.message)
        else:
            # restarting a model that was serving: keep trying with growing backoff (crash loop)
            self.restarts += 1
            self.consecutive_failures += 1
            delay = min(self.cfg.llama.restart_backoff_initial * 2 ** (self.consecutive_failures - 1),
                        self.cfg.llama.restart_backoff_max)
            self._backoff_until = time.monotonic() + delay
            self._set_state(ChildState.BACKOFF, retry_in_s=delay, error=err.message)

    async def _wait_healthy(self, child: Child) -> Optional[OracError]:
        """None when /health says 200 (or the start was aborted); an error when the load failed."""
        l = self.cfg.llama
        deadline = time.monotonic() + l.load_timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if child.returncode is not None:
                tail = list(child.tail)[-15:]
                reason = classify_load_failure(tail)
                # llama.cpp's own reason ("error loading model: tensor 'x' data is not within the file
                # bounds, ...") beats the generic last line ("exiting due to model loading error")
                last = next((t for t in tail if "error loading model:" in t), None) or next(
                    (t for t in reversed(tail) if "error" in t.lower() or "failed" in t.lower()),
                    tail[-1] if tail else "")
                return ModelLoadFailed(
                    f"{exits.describe(child.returncode)} while loading {child.model}: {last}",
                    {"reason": reason, **exits.exit_info(child.returncode), "stderr_tail": tail})
            if self._want != child.model or self._shutdown:
                return None
            with anyio.move_on_after(min(l.health_timeout, max(0.01, deadline - time.monotonic()))):
                try:
                    if await child.http.health() == 200:
                        return None
                except Exception:
                    pass
            with anyio.move_on_after(delay):
                await child.exited.wait()
            if self._kick.is_set():
                self._kick = anyio.Event()
            delay = min(delay * 1.5, 0.25)
        return ModelLoadFailed(f"llama-server did not become ready within {l.load_timeout:.0f}s loading {child.model}",
                               {"reason": "load_timeout", "stderr_tail": list(child.tail)[-15:]})

    async def _stop_child(self, why: str) -> None:
        """STOPPING: SIGTERM to the group, grace period, then SIGKILL."""
        child = self.child
        if child is None:
            return
        self._set_state(ChildState.STOPPING, why=why, pid=child.proc.pid)
        if child.returncode is None:
            child.killed_for = child.killed_for or "stop"
            lp.signal_group(child.proc.pid, signal.SIGTERM)
            with anyio.move_on_after(self.cfg.llama.stop_grace):
                await child.exited.wait()
            if child.returncode is None:
                log.warning("child ignored SIGTERM, killing", pid=child.proc.pid, grace_s=self.cfg.llama.stop_grace)
                lp.signal_group(child.proc.pid, signal.SIGKILL)
                with anyio.move_on_after(10):
                    await child.exited.wait()
        log.info("child stopped", pid=child.proc.pid, returncode=child.returncode, why=why)
        self._cleanup_child(child)
        await child.http.close()
        if not self._shutdown:
            self._set_state(ChildState.STOPPED, why=why)

    async def _reap(self, child: Child) -> None:
        child.returncode = await child.proc.wait()
        # make sure nothing of the group survives the leader
        lp.signal_group(child.proc.pid, signal.SIGKILL)
        child.exited.set()
        self._poke()

    async def _pump(self, child: Child, stream: Any, name: str) -> None:
        """Drain one of the child's pipes line by line into our log (source=llama-server)."""
        if stream is None:
            return
        buffered = BufferedByteReceiveStream(stream)
        pid = child.proc.pid
        while True:
            try:
                raw = await buffered.receive_until(b"\n", 65536)
            except anyio.DelimiterNotFound:
                raw = await buffered.receive(65536)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            child.tail.append(line)
            # llama.cpp lines look like "0.00.177.025 W msg": keep its level
            level = _LLAMA_LEVELS.get(line[13:15], logging.INFO)
            child_log.log(level, line, source="llama-server", stream=name, pid=pid)
