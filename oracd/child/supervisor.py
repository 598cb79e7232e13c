"""The one warm llama-server, owned by one task: where the child is started, restarted and swapped.

Only the owner loop (``Supervisor.run`` -> ``_loop``) starts, stops, restarts or
swaps the child and writes its state (``states.py`` rejects illegal moves).
Requests never touch the process or that state.  They post what they want into
the owner's inbox (``use``, ``load``, ``unload``, ``prewarm``, ``request_restart``)
and wait on a ticket that the owner resolves with the child to use, or with the
error that ends the wait; a request using the child holds a lease
(``tickets.py``).  The owner takes the inbox in at one place (``_events``).
Their deadline is their own, one clock per request (``api/deadline.py``);
waiting here has none.  Everyone else reads ``snapshot``, an immutable
``ChildSnapshot`` the owner replaces on every change.

The decisions are pure and live next door: which model runs next
(``swap_queue``), how long to back off and when to fail fast (``backoff``),
whether the child is hung (``hang``, asked by the ``watchdog``'s probes), and
what a load failure means (``failures``).

A start is a sequence of steps, one job each (``_start``): plan the launch
(binary, RPC pre-flight, memory fit, endpoint, command), spawn, adopt (pidfile,
OOM baseline, wedge detector, reaper), wait for /health, warm up, READY.

Where is the child restarted?  ``_on_child_lost`` (crash, hang kill) puts it in
backoff; ``_loop`` starts it again when the delay is over ("no child" branch).
"""
from __future__ import annotations

import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import anyio
import anyio.abc

from ..config import ConfigHolder
from oracd_protocol.errors import ModelLoadFailed, OracError, ServerUnavailable, ShuttingDown
from ..isolate import contained
from ..logs import get as get_logger
from ..memory import context_for_start, oom_kills, own_cgroup_dir
from ..models.gguf import header
from ..procinfo import RssSampler
from ..workers.pool import RpcWorkers
from . import exits
from .backoff import BackoffPolicy
from .command import batch_invariant_args, build_command, child_env, find_binary, make_endpoint
from .failures import classify_load_failure, load_retry_due, telling_line, worker_lost
from .http import LlamaEndpoint
from .idle_rules import IdleRules
from .instance import Child, log_child_line
from .pidfile import prepare_runtime_dir, reap_orphan, remove_pidfile, write_pidfile
from .process import ManagedProcess
from .readiness import TIMED_OUT, wait_healthy
from .snapshot import ChildSnapshot, frozen_map, plain
from .states import ChildState, check_transition
from .swap_queue import SwapQueue
from .watchdog import Watchdog
from .wedge import WedgeDetector
from .tickets import Ticket, TicketsAndLeases
from .kvstore import KVStore
from .swa import plan_for_start
from .warmup import WarmReport, Warmer, warm_target

log = get_logger("oracd.supervisor")
ABANDONED = "abandoned"     # a health wait ended because another model is wanted now, or oracd stops


@dataclass(frozen=True)
class Launch:
    """What a start runs: decided before anything is spawned, so a refusal costs nothing."""
    name: str
    path: Path
    binary: str
    workers: Tuple[str, ...]
    swa: Any                                  # swa.SwaPlan, or None for a model without sliding windows
    ctx_fit: Optional[Dict[str, Any]]         # set when fit_ctx starts it with a smaller context
    endpoint: LlamaEndpoint
    cmd: List[str]
    batch_invariant: Optional[bool]           # None: wanted, but this build lacks the flags (command.py)


class Supervisor:
    """Owns the llama-server child; see the module docstring."""

    def __init__(self, holder: ConfigHolder):
        self.holder = holder
        # the owner's working state: written and read by the owner task only; others read ``snapshot``
        self._state = ChildState.STOPPED
        self._child: Optional[Child] = None
        self._restarts = 0
        self._restart_reasons: Dict[str, int] = {}     # crash, hang, wedged, out_of_memory, load_failed, ...
        self._loads = 0
        self._consecutive_failures = 0
        self._last_error: Optional[Dict[str, Any]] = None
        self._last_exit: Optional[Dict[str, Any]] = None
        cfg = holder.cfg
        store = KVStore(cfg.llama.kv_cache_dir, cfg.llama.kv_cache_max_mb * 2 ** 20) if cfg.llama.warm_restore else None
        self.warmer = Warmer(store)
        self._warm = WarmReport()
        self.rpc = RpcWorkers(holder)
        self.finished = anyio.Event()             # set when run() has stopped the child for good
        self._queue = SwapQueue()
        self._paths: Dict[str, Path] = {}
        self._claims = TicketsAndLeases()
        self._inbox: Deque[Tuple[str, Any]] = deque()
        self._kick = anyio.Event()
        self._backoff_until = 0.0
        self._restart_why: Optional[str] = None
        self._want_seen: Optional[str] = None
        self._load_retried = False            # a fresh load killed from outside was retried once already
        self._kill_request: Optional[Tuple[Child, str, str]] = None   # (child, reason, why): the owner kills it
        self.idle_rules = IdleRules()    # the default and keep-alives: set by requests, read here (idle_rules.py)
        self._last_wanted = time.monotonic()                           # when a request last wanted the child
        self.cgroup_dir = cfg.llama.cgroup_dir or own_cgroup_dir()
        self.on_ready: Optional[Callable[[float], None]] = None      # load seconds, for the metrics
        self._shutdown = False
        self._tg: Optional[anyio.abc.TaskGroup] = None
        self._rss = RssSampler()
        self.snapshot = ChildSnapshot()          # what others read; replaced by the owner (``_publish``)
        self._publish()

    @property
    def policy(self) -> BackoffPolicy:
        l = self.holder.cfg.llama
        return BackoffPolicy(l.restart_backoff_initial, l.restart_backoff_max, l.restart_backoff_reset,
                             l.crash_loop_threshold)

    # ------------------------------------------------------------------ queries (any task): the snapshot
    def _publish(self) -> None:
        """Owner side: replace the snapshot with the working state as it is now."""
        child = self._child
        self.snapshot = ChildSnapshot(
            state=self._state, model=child.model if child else None, wanted_model=self._queue.current,
            child=child, restarts=self._restarts, restarts_by_reason=frozen_map(self._restart_reasons),
            loads=self._loads, consecutive_failures=self._consecutive_failures,
            last_error=frozen_map(self._last_error), last_exit=frozen_map(self._last_exit),
            backoff_until=self._backoff_until, warm=self._warm, warm_counts=frozen_map(self.warmer.counts))

    @property
    def state(self) -> ChildState:
        return self.snapshot.state

    @property
    def model(self) -> Optional[str]:
        return self.snapshot.model

    @property
    def child(self) -> Optional[Child]:
        return self.snapshot.child

    @property
    def wanted_model(self) -> Optional[str]:
        """The model the child should run now (loading, or about to be)."""
        return self.snapshot.wanted_model

    @property
    def in_flight(self) -> int:
        return self._claims.in_flight

    @property
    def waiting(self) -> int:
        """Requests waiting for a model (the swap queue's depth)."""
        return len(self._claims.tickets)

    def status(self) -> Dict[str, Any]:
        """status.child: the snapshot, plus what moves on its own (RSS, uptime, backoff left, in flight)."""
        snap = self.snapshot
        child, model = snap.child, snap.model
        cfg = self.holder.cfg
        warm = snap.warm
        st: Dict[str, Any] = {
            "state": snap.state.value, "model": model, "wanted_model": snap.wanted_model,
            "pid": child.pid if child else None, "restarts": snap.restarts, "loads": snap.loads,
            "restarts_by_reason": dict(snap.restarts_by_reason),
            "consecutive_failures": snap.consecutive_failures, "in_flight": self._claims.in_flight,
            "endpoint": child.endpoint.describe() if child else None,
            "last_error": plain(snap.last_error), "last_exit": plain(snap.last_exit),
            "profile": model if model in cfg.profiles else None,
            "warmup_ms": warm.ms if warm.how != "none" else None,
            "warm": warm.as_dict(self.warmer.store, snap.warm_counts),
            "ctx_fit": child.ctx_fit if child else None,
            "batch_invariant": child.batch_invariant if child else None,
        }
        if child and child.returncode is None:
            ps = child.psutil()
            st["rss_bytes"] = self._rss.rss(ps) if ps is not None else None
            st["uptime_s"] = round(time.monotonic() - child.started_at, 3)
        if snap.state == ChildState.BACKOFF:
            st["retry_in_s"] = round(max(0.0, snap.backoff_until - time.monotonic()), 3)
        rpc = self.rpc.status(model or snap.wanted_model, child.rpc_workers if child else ())
        if rpc is not None:
            st["rpc"] = rpc
        return st

    # ------------------------------------------------------------------ the door's side (door.py): post, hold a lease
    def post(self, kind: str, item: Any = None) -> None:
        """Leave ``item`` in the owner's inbox and wake it ("want", "leave", "restart", "kill", "warmed")."""
        self._inbox.append((kind, item))
        self._kick.set()

    @property
    def leases(self) -> TicketsAndLeases:
        """The in-flight leases on the child (requests take and release them; a swap waits for them)."""
        return self._claims

    def pending(self) -> bool:
        """Is something posted that the owner has not taken in yet?"""
        return bool(self._inbox)

    @property
    def stopping(self) -> bool:
        """oracd is shutting down: no new waits."""
        return self._shutdown

    def child_rss(self) -> int:
        """What the running child holds (and frees when it is replaced), in bytes."""
        child = self.snapshot.child
        ps = child.psutil() if child is not None else None
        return (self._rss.rss(ps) or 0) if ps is not None else 0

    def restores(self, name: str) -> bool:
        """Would a load of ``name`` warm its slots from a saved cache (warm restore on, something to warm)?"""
        return self.warmer.store is not None and \
            warm_target(self.holder.cfg, name, self.warmer.targets.get(name)) is not None

    def shutdown(self) -> None:
        self._shutdown = True
        self._kick.set()

    # ------------------------------------------------------------------ owner side: the inbox and tickets
    async def _events(self, timeout: float = math.inf) -> None:
        """The one place the owner takes in what requests posted: wait up to ``timeout`` for a post, a child's
        exit or shutdown (0: do not wait), then apply the inbox and resolve every ticket the state can answer."""
        if timeout > 0:
            await self._wait_kick(timeout)
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "want":
                self._last_wanted = time.monotonic()
                self._claims.add(item)
                if item.model is None:
                    dropped = self._queue.current
                    self._queue.unload()
                    if dropped is not None:   # waiting for the model being unloaded: answered now, not at timeout
                        self._resolve(lambda t: t.model == dropped, error=ServerUnavailable(
                            f"{dropped} was unloaded (unload_model) while this request waited for it",
                            {"reason": "unloaded", "model": dropped}))
                else:
                    self._paths[item.model] = Path(os.fspath(item.path))   # a ModelFile: its resolved path
                    self._queue.arrive(item.model)
            elif kind == "leave":
                if self._claims.remove(item):
                    self._queue.leave(item.model)
            elif kind == "restart":
                self._restart_why = item
            elif kind == "kill":
                self._kill_request = item
            elif kind == "warmed":
                child, report = item
                if child is self._child:
                    self._warm = report
        self._settle_tickets()
        self._publish()

    def _resolve(self, match: Callable[[Ticket], bool], child: Optional[Child] = None,
                 error: Optional[OracError] = None) -> None:
        self._claims.resolve(match, self._queue.leave, child, error)

    def _settle_tickets(self) -> None:
        if self._shutdown:
            self._resolve(lambda t: True, error=ShuttingDown())
            self._claims.resolve_unloads()
            return
        child, current = self._child, self._queue.current
        if self._state is ChildState.READY and child is not None and child.returncode is None \
                and child.model == current:
            self._resolve(lambda t: t.model == current, child=child)
        elif self._state is ChildState.BACKOFF and current and self.policy.fail_fast(self._consecutive_failures):
            err = ServerUnavailable(
                f"llama-server for {current} is in a crash loop ({self._consecutive_failures} failures); "
                f"next attempt in {max(0.0, self._backoff_until - time.monotonic()):.1f}s",
                {"last_error": self._last_error, "last_exit": self._last_exit})
            self._resolve(lambda t: t.model == current, error=err)

    async def _wait_kick(self, timeout: float = math.inf) -> None:
        with anyio.move_on_after(timeout):
            await self._kick.wait()
        if self._kick.is_set():
            self._kick = anyio.Event()

    # ------------------------------------------------------------------ the owner task
    def _set_state(self, state: ChildState, **info: Any) -> None:
        """Move the state (``states.check_transition`` refuses an illegal move) and publish the snapshot."""
        if state == self._state and not info:
            self._publish()
            return
        check_transition(self._state, state)
        prev, self._state = self._state, state
        info.setdefault("model", (self._child.model if self._child else None) or self._queue.current)
        self._publish()
        log.info("child state", state=state.value, previous=prev.value, **info)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """The owner loop.  Returns after shutdown() once the child is stopped."""
        cfg = self.holder.cfg
        prepare_runtime_dir(cfg)
        if self.warmer.store is not None:
            try:
                self.warmer.store.prepare()
                self.warmer.load_targets()
            except OSError as exc:       # restore is an optimisation: run without it, and say so
                log.warning("kv cache dir unusable; warm restore off", dir=str(cfg.llama.kv_cache_dir), error=str(exc))
                self.warmer.store = None
        orphan = await anyio.to_thread.run_sync(reap_orphan, cfg, Path(str(cfg.llama.server_bin)).name,
                                                cfg.llama.stop_grace)
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
                if self._child is not None:
                    await self._stop_child("shutdown")
                self._set_state(ChildState.SHUTDOWN)
                self._settle_tickets()
                self.finished.set()

    async def _loop(self) -> None:
        """The one loop of the owner: take in what was posted, then one step for the state the child is in."""
        while True:
            await self._events(0)
            if self._shutdown:
                if self._child is not None:
                    await self._drain(self.holder.cfg.server.shutdown_grace)
                    await self._stop_child("shutdown")
                return
            moved_from = self._queue.current
            if self._queue.advance() is not None:
                log.info("swap requested", model=self._queue.current, previous=moved_from)
            want, child = self._queue.current, self._child
            if want != self._want_seen:
                self._want_seen = want
                if want is not None:      # another model (or the same after an unload): a clean slate
                    self._backoff_until, self._consecutive_failures = 0.0, 0
                    self._load_retried = False
            self._publish()
            if child is None:
                self._claims.resolve_unloads()
                if want is None:
                    if self._state not in (ChildState.STOPPED, ChildState.FAILED):
                        self._set_state(ChildState.STOPPED)
                    await self._events()
                    continue
                wait = self._backoff_until - time.monotonic()
                if wait > 0:
                    if self._state is not ChildState.BACKOFF:
                        self._set_state(ChildState.BACKOFF, retry_in_s=round(wait, 3))
                    await self._events(wait)
                    continue
                await self._start(want)
                continue
            if child.returncode is not None:
                self._on_child_lost(child)
                continue
            if want != child.model:
                await self._drain(self.holder.cfg.llama.swap_drain_timeout)
                await self._stop_child("swap" if want else "unload")
                continue
            if self._kill_request is not None:
                target, reason, why = self._kill_request
                self._kill_request = None
                if target is child:
                    await self._kill(child, reason, why)
                continue
            if self._restart_why:
                why, self._restart_why = self._restart_why, None
                await self._drain(self.holder.cfg.llama.swap_drain_timeout)
                await self._stop_child(why)
                continue
            await self._tend(child)

    async def _tend(self, child: Child) -> None:
        """READY with nothing asked of it: give way to the default model when idle long enough; else wait for
        the next probe (a post or the child's exit wakes the loop sooner, without moving the schedule), then
        probe, and kill a hung child or one that lost an RPC worker."""
        now = time.monotonic()
        back_at = self.return_to_default_at(child)
        if back_at is not None and now >= back_at and self.in_flight == 0:
            self._return_to_default()
            return
        watchdog = child.watchdog
        if now < watchdog.next_probe:
            wake = watchdog.next_probe if back_at is None else min(watchdog.next_probe, max(back_at, now + 0.05))
            await self._events(wake - now)
            return
        probe = await watchdog.probe(self.in_flight)
        if child.returncode is not None:
            return
        if probe.answered:
            self._reset_failures_if_healthy(child)
        if probe.kill is not None:
            await self._kill(child, *probe.kill)

    async def _drain(self, timeout: float) -> None:
        if self._claims.in_flight:
            log.info("waiting for in-flight requests", in_flight=self._claims.in_flight, timeout_s=timeout)
            await self._claims.drain(timeout)

    # ------------------------------------------------------------------ STARTING, one step per job
    async def _start(self, name: str) -> None:
        """STARTING: plan the launch, spawn llama-server for ``name``, wait for /health 200, warm it up: READY."""
        fresh = self._queue.never_ready
        self._set_state(ChildState.STARTING, model=name)
        t0 = time.monotonic()
        try:
            launch = await self._plan_launch(name)
            child = await self._spawn(launch)
        except OracError as exc:
            self._load_failed(name, exc, fresh)
            return
        except OSError as exc:
            self._load_failed(name, ModelLoadFailed(f"cannot start llama-server: {exc}", {"reason": "spawn"}), fresh)
            return
        self._adopt(child)
        err = await self._wait_healthy(child)
        if err is None and child.returncode is None and self._queue.current == name and not self._shutdown:
            await self._warm_up(child)
            if child.returncode is not None:   # died during warm-up: a crash like any other, its waiters stay
                self._on_child_lost(child)
                return
            await self._become_ready(child, t0)
            return
        if err is None:  # aborted: unloaded meanwhile, or we are shutting down
            log.info("start aborted", model=name, why="shutdown" if self._shutdown else "unloaded")
            await self._stop_child("start aborted")
            return
        await self._start_failed(child, err, fresh)

    async def _plan_launch(self, name: str) -> Launch:
        """What to start: the binary, the RPC workers that answer, the memory fit, the endpoint, the command."""
        cfg, path = self.holder.cfg, self._paths[name]
        binary = find_binary(cfg.llama.server_bin)
        workers = await self._rpc_preflight(name)
        swa, ctx_fit = await self._fit_memory(name, path)
        endpoint = await make_endpoint(cfg, binary)
        invariant = await anyio.to_thread.run_sync(batch_invariant_args, cfg, binary, name)
        if invariant is None:
            log.warning("batch_invariant: this llama-server lacks --no-repack / --flash-attn off; answers may "
                        "depend on batching (fast-forward's may differ from compact sampling's)", model=name)
        store = self.warmer.store
        cmd = build_command(cfg, binary, path, endpoint, workers, store.dir if store is not None else None,
                            ctx_size=ctx_fit["ctx_size"] if ctx_fit else None,
                            swa_full=swa is not None and swa.full, name=name, invariant=invariant or ())
        return Launch(name, path, binary, workers, swa, ctx_fit, endpoint, cmd,
                      None if invariant is None else bool(invariant))

    async def _rpc_preflight(self, name: str) -> Tuple[str, ...]:
        """The RPC workers ``name`` runs on, all of them answering (or none, with rpc_fallback_local)."""
        workers, rpc_error = await self.rpc.plan(name)
        if rpc_error:
            raise ModelLoadFailed(f"cannot load {name}: {rpc_error}", {"reason": "rpc_worker_down", "workers": [
                self.rpc.checks[a].as_dict() for a in workers if a in self.rpc.checks]})
        return workers

    async def _fit_memory(self, name: str, path: Path) -> Tuple[Any, Optional[Dict[str, Any]]]:
        """The sliding-window cache mode and the context that fit in memory (``fit_ctx``); header reads in a
        thread."""
        cfg = self.holder.cfg
        swa = await anyio.to_thread.run_sync(plan_for_start, cfg, name, path, self.cgroup_dir, self.restores(name))
        swa_full = swa is not None and swa.full
        ctx_fit = await anyio.to_thread.run_sync(context_for_start, cfg, name, path, self.cgroup_dir, swa_full)
        return swa, ctx_fit

    async def _spawn(self, launch: Launch) -> Child:
        """Start the process; its output goes to oracd's log."""
        cfg = self.holder.cfg
        proc = await ManagedProcess.spawn(launch.cmd, env=child_env(launch.endpoint, cfg.llama.child_env,
                                                                    batch_invariant=bool(launch.batch_invariant)))
        proc.on_line = lambda stream, line: log_child_line(proc.pid, stream, line)
        child = Child(proc, launch.name, launch.endpoint, cfg.llama.parallel, launch.workers, launch.path,
                      launch.binary, launch.cmd)
        child.ctx_fit, child.swa, child.batch_invariant = launch.ctx_fit, launch.swa, launch.batch_invariant
        return child

    def _adopt(self, child: Child) -> None:
        """The spawned process becomes the owner's child: counted, its pidfile written, the OOM-kill baseline
        taken (to name a kernel kill later), its wedge detector armed, and a task reaping it."""
        assert self._tg is not None
        cfg = self.holder.cfg
        self._child = child
        self._loads += 1
        write_pidfile(cfg, child.pid)
        log.info("child spawned", pid=child.pid, cmd=" ".join(child.cmd))
        child.oom_baseline = oom_kills(self.cgroup_dir)
        child.wedge = WedgeDetector(cfg.llama.wedge_threshold, cfg.llama.wedge_window)
        self._tg.start_soon(contained, "reaping llama-server", self._reap, child)
        self._publish()

    async def _warm_up(self, child: Child) -> None:
        """Put the model's warm target into every slot: restored from the KV cache dir, or prefilled."""
        meta = await anyio.to_thread.run_sync(header, child.path)
        self._warm = await self.warmer.warm(child.http, self.holder.cfg, child.path, child.binary, child.cmd, meta,
                                           self.warmer.targets.get(child.model), name=child.model, swa=child.swa)
        self._publish()

    async def _become_ready(self, child: Child, t0: float) -> None:
        """READY: the watchdog starts, the failure slate is wiped, and the waiters get the child."""
        if child.rpc_workers:   # status shows the connections from the start, not from the first health tick
            await anyio.to_thread.run_sync(self.rpc.lost, child.pid, child.rpc_workers)
        child.ready_at = time.monotonic()
        child.watchdog = Watchdog(self.holder.cfg.llama, self.rpc, child)
        self._queue.served()
        self._load_retried = False
        self._last_error = None
        self._set_state(ChildState.READY, pid=child.pid, load_s=round(child.ready_at - t0, 3))
        if self.on_ready is not None:
            self.on_ready(child.ready_at - t0)
        self._settle_tickets()

    async def _start_failed(self, child: Child, err: OracError, fresh: bool) -> None:
        """The spawned child did not become healthy: retry once if it was killed from outside while loading,
        else stop it and fail the load (``_load_failed``)."""
        if child.returncode is not None:
            if fresh and load_retry_due(child.returncode, child.killed_for, self._load_retried):
                # killed from outside while loading: its waiters keep waiting for one more start
                self._load_retried = True
                log.warning("load interrupted, retrying once", model=child.model, error=err.message)
                self._on_child_lost(child)
                return
            self._record_exit(child, "load_failed")
        await self._stop_child("load failed", settle=False)
        self._load_failed(child.model, err, fresh)

    async def _wait_healthy(self, child: Child) -> Optional[OracError]:
        """None when /health says 200 (or the start was abandoned); the error when the load failed."""
        l = self.holder.cfg.llama

        def stop() -> Optional[Any]:
            if child.returncode is not None:
                tail = list(child.tail)[-15:]
                return ModelLoadFailed(
                    f"{exits.describe(child.returncode)} while loading {child.model}: {telling_line(tail)}",
                    {"reason": classify_load_failure(tail), **exits.exit_info(child.returncode), "stderr_tail": tail})
            return ABANDONED if self._queue.current != child.model or self._shutdown else None

        await self._events(0)           # posted while spawning: an unload or a swap abandons the wait at once
        outcome = await wait_healthy(child.http, time.monotonic() + l.load_timeout, l.health_timeout, stop,
                                     self._events, first_pause=0.02, max_pause=0.25)
        if outcome == TIMED_OUT:
            return ModelLoadFailed(f"llama-server did not become ready within {l.load_timeout:.0f}s loading "
                                   f"{child.model}", {"reason": "load_timeout", "stderr_tail": list(child.tail)[-15:]})
        return outcome if isinstance(outcome, OracError) else None      # healthy, or abandoned

    def _load_failed(self, name: str, err: OracError, fresh: bool) -> None:
        restored = self._restore_previous(name, err) if fresh else None
        self._last_error = {"message": err.message, "data": err.data, "at": time.time()}
        log.error("load failed", model=name, error=err.message, fresh=fresh)
        if fresh:
            # an explicit load (or swap) failed: no retry on our own; its waiters get the error
            self._resolve(lambda t: t.model == name, error=err)
            if self._queue.current == name:        # (not when restoring: the previous model is current)
                self._queue.unload()
            self._set_state(ChildState.FAILED, error=err.message,
                            **({"restoring": restored} if restored else {}))
        else:
            # restarting a model that was serving: keep trying with growing backoff (crash loop)
            self._schedule_restart("load_failed")
            self._set_state(ChildState.BACKOFF, retry_in_s=round(self._backoff_until - time.monotonic(), 3),
                            error=err.message)
            self._settle_tickets()

    def _restore_previous(self, name: str, err: OracError) -> Optional[str]:
        """A fresh load of ``name`` failed after the warm model was stopped for it: make that model current
        again, so the loop starts it at once (warm-up restores its slots from disk), and say so in the
        error's data and in last_exit.  Returns the model being restored, or None."""
        if self._shutdown:
            return None
        prev = self._queue.take_previous(name)
        if prev is None:
            return None
        err.data = {**(err.data if isinstance(err.data, dict) else {}), "restored_previous": prev}
        if self._last_exit is not None and self._last_exit.get("model") == name \
                and self._last_exit.get("reason") == "load_failed":
            self._last_exit["restored_previous"] = prev
        log.warning("restoring the previous model after a failed load", model=prev, failed=name)
        return prev

    def _schedule_restart(self, reason: str) -> float:
        self._restarts += 1
        self._restart_reasons[reason] = self._restart_reasons.get(reason, 0) + 1
        self._consecutive_failures += 1
        delay = self.policy.delay(self._consecutive_failures, reason)
        self._backoff_until = time.monotonic() + delay
        return delay

    def _on_child_lost(self, child: Child) -> None:
        """The child exited on its own (crash) or was killed for a hang: back off, then restart."""
        if child.killed_for is None and child.rpc_workers and worker_lost(child.tail):
            child.killed_for = "rpc_worker_lost"   # llama-server aborted: a worker went away under it
        if child.killed_for is None and child.returncode == -signal.SIGKILL:
            kills = oom_kills(self.cgroup_dir)     # a SIGKILL we did not send: the kernel's OOM killer?
            if kills is not None and child.oom_baseline is not None and kills > child.oom_baseline:
                child.killed_for = "out_of_memory"
        reason = child.killed_for or "crash"
        delay = self._schedule_restart(reason)
        message = self._record_exit(child, reason)
        self._last_error = {"message": message, "at": time.time()}
        log.error("child lost", pid=child.pid, message=message, **exits.exit_info(child.returncode),
                  reason=reason, stderr_tail=list(child.tail)[-10:], restart_in_s=delay, restarts=self._restarts)
        self._cleanup_child(child)
        self._set_state(ChildState.BACKOFF, retry_in_s=delay)
        self._settle_tickets()

    def _record_exit(self, child: Child, reason: str) -> str:
        """status.child.last_exit for a child that is gone: "llama-server crashed (SIGSEGV)" and why."""
        message = exits.describe(child.returncode) + ("" if reason in ("crash", "load_failed") else f" ({reason})")
        self._last_exit = {**exits.exit_info(child.returncode), "message": message, "reason": reason,
                          "model": child.model,
                          "stderr_tail": list(child.tail)[-10:], "at": time.time()}
        return message

    def _cleanup_child(self, child: Child, close_http: bool = True) -> None:
        self._child = None
        self._publish()
        self.rpc.attached = {}
        remove_pidfile(self.holder.cfg)
        if close_http and self._tg is not None:
            self._tg.start_soon(contained, "closing llama-server's HTTP client", child.http.close)

    # ------------------------------------------------------------------ settings the owner reads; READY helpers
    def set_default(self, name: str, path: Path) -> None:
        """The model to return to after ``return_to_default_after`` idle seconds on another one."""
        self.idle_rules.set_default(name, path)

    def set_keep_alive(self, name: str, seconds: float) -> None:
        """An HTTP client's keep_alive (``IdleRules.set_keep_alive``); the owner recomputes when to return."""
        self.idle_rules.set_keep_alive(name, seconds)
        self._kick.set()

    def idle_since(self) -> float:
        """When a request last wanted the child (the owner notes it) or let go of it (the lease ledger does)."""
        return max(self._last_wanted, self._claims.last_release)

    def return_to_default_at(self, child: Child) -> Optional[float]:
        """When the idle child should give way to the default model (None: never)."""
        return self.idle_rules.return_at(child.model, self.idle_since(), self.holder.cfg.llama.return_to_default_after)

    def _return_to_default(self) -> None:
        """Nobody used the other model for long enough: make the default current (the loop swaps)."""
        name, path = self.idle_rules.default        # type: ignore[misc]  (return_at said there is one)
        log.info("returning to the default model", model=name, previous=self._child.model if self._child else None,
                 idle_s=round(time.monotonic() - self.idle_since(), 1))
        self._paths[name] = path
        self._queue.want(name)

    def _reset_failures_if_healthy(self, child: Child) -> None:
        """A child ready for restart_backoff_reset seconds wipes the slate: backoff starts over."""
        if child.ready_at and self._consecutive_failures and \
                self.policy.healthy_long_enough(time.monotonic() - child.ready_at):
            self._consecutive_failures = 0
            self._publish()

    async def _kill(self, child: Child, reason: str, why: str) -> None:
        """The child is stuck or lost a worker: SIGKILL its group and wait for the exit (then it is restarted)."""
        if child.returncode is None and child.killed_for is None:
            if reason == "hang":
                log.warning("child hang", why=why, pid=child.pid)
            child.killed_for = reason
        await child.proc.stop(0, first=signal.SIGKILL)

    async def _stop_child(self, why: str, settle: bool = True) -> None:
        """STOPPING: SIGTERM to the group, grace period, then SIGKILL (``process.stop_steps``)."""
        child = self._child
        if child is None:
            return
        self._set_state(ChildState.STOPPING, why=why, pid=child.pid)
        if child.returncode is None:
            child.killed_for = child.killed_for or "stop"
            grace = self.holder.cfg.llama.stop_grace
            if await child.proc.stop(grace) == signal.SIGKILL:
                log.warning("child ignored SIGTERM, killed", pid=child.pid, grace_s=grace)
        log.info("child stopped", pid=child.pid, returncode=child.returncode, why=why)
        self._cleanup_child(child, close_http=False)
        await contained("closing llama-server's HTTP client", child.http.close)   # not an owner invariant
        if settle and not self._shutdown:
            self._set_state(ChildState.STOPPED, why=why)

    async def _reap(self, child: Child) -> None:
        try:
            await child.proc.wait_and_drain()
        finally:                  # even if watching failed: the owner loop looks at the child again
            self._kick.set()
