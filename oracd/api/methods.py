"""The JSON-RPC methods: generate, list_models, quantize_model, load/unload, status, reload, start/stop_server.

Parameter names and defaults follow the old ``LlamaCppClient`` so the compat
client passes its arguments straight through.  Each method checks its input,
runs under one deadline (``deadline.py``) and raises the named errors from
``errors.py``; the wire is ``jsonrpc.py``.  Methods ask the supervisor for a
model through its public calls and never touch the child's state.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import anyio

from .. import config
from ..child.door import ChildDoor
from ..child.extra_servers import ExtraServers
from ..child.supervisor import Supervisor
from ..config import ConfigHolder, Profile, load_options_changed, plan_reload
from oracd_protocol.errors import (Busy, GenerationTimeout, InvalidParams, InvalidPath, LoadTimeout, ModelLoadFailed, OracError,
                      ShuttingDown, UnloadTimeout)
from ..logs import get as get_logger
from ..metrics import Metrics
from ..memory import available, memory_verdict
from ..child.command import child_env
from ..child.swa import plan as swa_plan
from ..child.warmup import chat_target
from ..models.quantize import quantize
from ..models.quota import QuantizeLimits
from ..models.store import ModelFile, ModelStore
from .admin import require_admin
from .deadline import Deadline
from .fastforward import generate_json, sampling_of
from .generate import Sent, build_request, check_range, fetch, strip_think
from .jsonrpc import CallContext, Method, rpc_method
from .appview import AcceptState, Described, DispatchCounts, OpenConnections
from .status import SelfStatus, status_dict

log = get_logger("oracd.methods")
NAMES = ("generate", "list_models", "quantize_model", "load_model", "unload_model", "status",
         "start_server", "stop_server", "server_info", "reload", "metrics", "prewarm", "clear_prewarm")


class App:
    """The RPC method handlers, and what they share.  A container: ``serve.build_app`` builds the parts
    (config holder, model store, supervisor, extra servers, metrics) and wires them; serve() attaches the
    front door's parts that status reports on once they exist (they are built around the handlers)."""

    def __init__(self, holder: ConfigHolder, store: ModelStore, supervisor: Supervisor, door: ChildDoor,
                 extra_servers: ExtraServers, prom: Metrics):
        self.holder = holder
        self.store = store
        self.supervisor = supervisor       # read: its snapshot, its memory and warm-up queries
        self.door = door                   # ask: use, load, unload, prewarm, restart
        self.extra_servers = extra_servers
        self.prom = prom
        self.started = time.time()
        self.requests_in_flight = 0
        self.generations = 0
        self.accepting = True
        self.active_default: str = holder.cfg.llama.default_model    # a fallback model after a failed preload
        self.fallback: Optional[Dict[str, Any]] = None
        self.quantizing: Optional[str] = None              # the output of the one quantize running now
        self.memory: Optional[Dict[str, Any]] = None   # the last memory check: required/available bytes
        self.self_status = SelfStatus()
        # the front door (status counts): attached by serve(), built around these handlers
        self.dispatcher: Optional[DispatchCounts] = None     # served / errors
        self.connections: Optional[OpenConnections] = None   # open connections
        self.acceptor: Optional[AcceptState] = None          # accept failures
        self.fds: Optional[Dict[str, Any]] = None            # RLIMIT_NOFILE vs the budget
        self.http: Optional[Described] = None                # the HTTP APIs (oracd/http/), if [http] listen

    @property
    def cfg(self) -> config.Config:
        return self.holder.cfg

    def methods(self) -> Dict[str, Method]:
        return {name: rpc_method(getattr(self, name)) for name in NAMES}

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown()

    def _model_name(self, model: Optional[str]) -> str:
        name = model or self.active_default
        if not name:
            raise InvalidParams("model is required (no llama.default_model is configured)", "model")
        return name

    async def check_loadable(self, path: ModelFile, replaces_child: bool = True) -> None:
        """Refuse a non-GGUF file, or one that cannot fit in memory, before it can evict the model that is
        serving (``replaces_child``: the warm model would be stopped for it, so its memory counts as free).
        The header and the memory figures are read in a worker thread: never a file read on the event loop."""
        if path.name == self.supervisor.model:
            return
        meta = await anyio.to_thread.run_sync(self.store.metadata, path.path)
        if not meta.get("valid"):
            raise ModelLoadFailed(f"{path.name} is not a loadable GGUF model: {meta.get('error')}",
                                  {"path": str(path), "reason": "not_gguf"})
        if meta.get("truncated"):
            size = path.path.stat().st_size
            raise ModelLoadFailed(f"{path.name} is truncated: its tensor data should end at byte "
                                  f"{meta['data_end']}, the file has {size} bytes (an interrupted copy or download?)",
                                  {"path": str(path), "reason": "truncated", "size": size,
                                   "expected_size": meta["data_end"]})
        cfg = self.cfg
        if not cfg.llama.memory_check:
            return
        avail, source = await anyio.to_thread.run_sync(available, self.supervisor.cgroup_dir)
        if avail is None:
            return
        freed = self.supervisor.child_rss() if replaces_child else 0
        swa = swa_plan(cfg, path.name, meta, avail + freed, self.supervisor.restores(path.name))
        v = memory_verdict(cfg, path.name, meta, avail + freed, swa_full=swa is not None and swa.full)
        self.memory = v.as_dict()
        v.fits_or_raise(source, freed)

    # ------------------------------------------------------------------ generate
    async def generate(self, ctx: CallContext, *, prompt: str, model: Optional[str] = None,
                       temperature: Optional[float] = None, top_p: Optional[float] = None,
                       top_k: Optional[int] = None, max_tokens: Optional[int] = None, timeout: float = 30,
                       system_prompt: Optional[str] = None, stop: Optional[List[str]] = None,
                       grammar: Optional[str] = None, json_schema: Optional[Any] = None,
                       stream: bool = False, raw: Optional[Union[bool, str]] = None,
                       prefill: Optional[str] = None, compact_json: Optional[bool] = None,
                       fast_forward: Optional[bool] = None) -> Dict[str, Any]:
        """A completion: chat with the model's template, or ``raw`` with the caller's (``generate.py``).

        Omitted (or null) parameters come from the model's profile, then from the
        defaults (temperature 0.7, top_p 0.7, top_k 40, max_tokens 512).
        ``grammar`` may be GBNF or "json"; ``json_schema`` a schema or "command".
        ``stream=true`` also sends each piece of text as a ``generate.chunk``
        notification {id, text} before the final result.  ``prefill``: the answer
        begins with this text, and ``response`` includes it.  ``compact_json`` /
        ``fast_forward``: a json_schema answer without optional whitespace / with its
        forced text written by oracd (README "Compact output and fast-forward").
        """
        t0 = time.perf_counter()
        self._check_accepting()
        if not prompt.strip():
            raise InvalidParams("Prompt cannot be empty", "prompt: must not be blank")
        name = self._model_name(model)
        path = self.store.resolve(name)
        cfg = self.cfg
        prof = cfg.profile_for(path.name) or Profile(model=path.name)
        body, out = build_request(Sent(prompt, temperature, top_p, top_k, max_tokens, system_prompt, stop, grammar,
                                       json_schema, raw, prefill, compact_json, fast_forward), prof, cfg)
        deadline = Deadline(timeout, lambda s: GenerationTimeout(f"Generation timed out after {s:g} seconds",
                                                                 {"timeout": s}))
        await self.check_loadable(path)
        self.requests_in_flight += 1
        try:
            with deadline.scope():
                on_delta = (lambda text: ctx.progress("generate.chunk", text=text)) if stream else None
                ask = None
                if out is not None and not prefill:   # compact, fast-forwarded or not: one path, (b) and (c) alike

                    def ask(child: Any, relay: Any) -> Any:    # relay: fetch's counting chunk sender
                        return generate_json(
                            child.http, path.name, out.schema, sampling_of(body),
                            body.get("n_predict", body.get("max_tokens")), prompt=body.get("prompt"),
                            messages=body.get("messages"), template_kwargs=body.get("chat_template_kwargs"),
                            on_delta=relay, use_fast_forward=out.use_fast_forward(child.batch_invariant))
                data = await fetch(self.door, path, body, cfg, on_delta, ask)
        finally:
            self.requests_in_flight -= 1
        self.generations += 1
        self.prom.generate_seconds.observe(time.perf_counter() - t0)
        usage = data["usage"]
        text = data["content"]
        if prefill and not text.startswith(prefill):       # raw: the prefill was part of the prompt
            text = prefill + text
        result = {
            "response": strip_think(text),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
            "model": model or name,
            "prompt": prompt,
            "finish_reason": data["finish_reason"],
            "usage": {**{k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
                      # prompt tokens llama-server took from the slot's KV cache (a warmed prefix)
                      "cached_tokens": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                      # tokens the model sampled (a decode step each) and text oracd wrote itself (fast-forward)
                      "sampled_tokens": int(usage.get("sampled_tokens", usage.get("completion_tokens", 0))),
                      "forced_tokens": int(usage.get("forced_tokens", 0))},
            "raw": "prompt" in body,
        }
        if out is not None:
            result["json_output"] = {"compact": True, "fast_forward": bool(data.get("fast_forward"))}
        if prefill:
            result["prefill_included"] = True
        return result

    # ------------------------------------------------------------------ models
    async def list_models(self, ctx: CallContext, *, models_path: Optional[str] = None) -> List[Dict[str, Any]]:
        if models_path is not None and not self.store.serves(models_path):
            raise InvalidPath(f"oracd does not serve models from {models_path}; it serves "
                              f"{', '.join(str(d) for d in self.store.dirs)}",
                              {"served": [str(d) for d in self.store.dirs]})
        items = await anyio.to_thread.run_sync(self.store.list, self.supervisor.model)
        profiles = self.cfg.profiles
        for item in items:
            item["profile"] = item["name"] if item["name"] in profiles else None
        return items

    async def quantize_model(self, ctx: CallContext, *, input_model: str, output_model: str,
                             quantization_type: str = "q4_k", overwrite: bool = False) -> Dict[str, Any]:
        self._check_accepting()
        require_admin(self.cfg, ctx.peer, "quantize_model")
        if self.quantizing:
            raise Busy(f"a quantize is already running ({self.quantizing}); one at a time",
                       {"reason": "quantize_running", "running": self.quantizing})
        l = self.cfg.llama
        self.quantizing = output_model if isinstance(output_model, str) else "?"
        self.requests_in_flight += 1
        try:
            t0 = time.monotonic()

            async def progress(done: int, total: int, tensor: str) -> None:
                await ctx.progress("quantize.progress", done=done, total=total, tensor=tensor,
                                   elapsed_ms=round((time.monotonic() - t0) * 1000, 1))

            limits = QuantizeLimits(l.quantize_max_output_bytes, l.quantize_max_total_bytes, l.quantize_min_free_bytes)
            return await quantize(self.store, l.quantize_bin, input_model, output_model, quantization_type,
                                  overwrite, l.quantize_timeout, progress=progress, limits=limits,
                                  protected=self.protected_models(), env=child_env(None, l.child_env))
        finally:
            self.quantizing = None
            self.requests_in_flight -= 1

    def protected_models(self) -> Dict[str, str]:
        """Models quantize may never replace, and why: what serves now, or is to be loaded when it fails."""
        l = self.cfg.llama
        out: Dict[str, str] = {}
        for name in l.fallback_models:
            out[name] = "a fallback model"
        for name in (l.default_model, self.active_default):
            if name:
                out[name] = "the default model"
        for srv in self.extra_servers.servers.values():
            if srv.returncode is None:
                out[srv.model] = "served by an extra llama-server"
        for name in (self.supervisor.model, self.supervisor.wanted_model):
            if name:
                out[name] = "the loaded model"
        return out

    async def load_model(self, ctx: CallContext, *, model: Optional[str] = None,
                         timeout: Optional[float] = None) -> Dict[str, Any]:
        self._check_accepting()
        path = self.store.resolve(self._model_name(model))
        deadline = Deadline(timeout or self.cfg.llama.load_timeout,
                            lambda s: LoadTimeout(f"load of {path.name} timed out after {s:g} seconds"))
        await self.check_loadable(path)
        t0 = time.perf_counter()

        async def report() -> None:       # load.progress every half second until the model is ready
            while True:
                await anyio.sleep(0.5)
                await ctx.progress("load.progress", model=path.name, state=self.supervisor.state.value,
                                   elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))

        outcome: Dict[str, Any] = {}
        with deadline.scope():
            async with anyio.create_task_group() as tg:
                tg.start_soon(report)
                try:
                    outcome["child"] = await self.door.load(path.name, path)
                except OracError as exc:      # raised below, not as an exception group of the task group
                    outcome["error"] = exc
                tg.cancel_scope.cancel()
        if "error" in outcome:
            raise outcome["error"]
        child = outcome["child"]
        return {"model": child.model, "state": self.supervisor.state.value, "pid": child.pid,
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3)}

    async def unload_model(self, ctx: CallContext, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        deadline = Deadline(timeout or self.cfg.llama.stop_grace + 15,
                            lambda s: UnloadTimeout(f"unload timed out after {s:g} seconds"))
        previous = self.supervisor.model
        with deadline.scope():
            await self.door.unload()
        return {"unloaded": previous, "state": self.supervisor.state.value}

    async def prewarm(self, ctx: CallContext, *, model: Optional[str] = None, prefix: Optional[str] = None,
                      system_prompt: Optional[str] = None, timeout: Optional[float] = None,
                      persist: bool = True) -> Dict[str, Any]:
        """Put a prefix the next requests share into every slot's KV cache, now and (``persist``, the
        default) after every later load (start, swap, crash restart, oracd restart: restored from disk when it
        can be).  A persisted prewarm acts for every client: admins only when admin_uids/gids are set.

        ``prefix``: raw text, exactly what raw ``generate`` prompts will begin with; or ``system_prompt``:
        the chat system message (default: the model's profile's).  Either is capped at
        ``llama.prewarm_max_prefix_bytes``.
        """
        self._check_accepting()
        if persist:
            require_admin(self.cfg, ctx.peer, "prewarm (persist=true)")
        path = self.store.resolve(self._model_name(model))
        if prefix is not None and system_prompt is not None:
            raise InvalidParams("prefix (raw) and system_prompt (chat) are mutually exclusive", "prefix")
        cap = self.cfg.llama.prewarm_max_prefix_bytes
        for key, text in (("prefix", prefix), ("system_prompt", system_prompt)):
            if text is not None and len(text.encode("utf-8", "surrogatepass")) > cap:
                raise InvalidParams(f"{key} is longer than {cap} bytes (llama.prewarm_max_prefix_bytes)",
                                    {"reason": "prefix_too_long", "field": key, "limit_bytes": cap})
        if prefix is not None:
            if not prefix.strip():
                raise InvalidParams("prefix must not be blank", "prefix")
            target: Dict[str, Any] = {"prompt": prefix}
        else:
            prof = self.cfg.profile_for(path.name) or Profile(model=path.name)
            system = system_prompt if system_prompt is not None else prof.effective_system_prompt()
            if not system:
                raise InvalidParams("nothing to warm: give prefix or system_prompt (the model has no profile "
                                    "system prompt)", "prefix")
            target = chat_target(system, prof.think)
        deadline = Deadline(timeout or self.cfg.llama.load_timeout,
                            lambda s: LoadTimeout(f"prewarm of {path.name} timed out after {s:g} seconds"))
        await self.check_loadable(path)
        with deadline.scope():
            report = await self.door.prewarm(path.name, path, target, persist)
        return {"model": path.name, "persisted": persist,
                **report.as_dict(self.supervisor.warmer.store, self.supervisor.warmer.counts)}

    async def clear_prewarm(self, ctx: CallContext, *, model: Optional[str] = None) -> Dict[str, Any]:
        """Forget the prewarm target of ``model`` (omitted: of every model), in memory and on disk: later
        loads warm with the profile's system prompt again.  What is in the slots now stays until evicted."""
        require_admin(self.cfg, ctx.peer, "clear_prewarm")
        name = self.store.checked_name(model) if model is not None else None
        cleared = await anyio.to_thread.run_sync(self.supervisor.warmer.forget, name)
        log.info("prewarm targets cleared", models=cleared)
        return {"cleared": cleared}

    # ------------------------------------------------------------------ old start_server()
    async def start_server(self, ctx: CallContext, *, model: str, host: str = "127.0.0.1", port: int = 8080,
                           temperature: float = 0.7, top_p: float = 0.7, top_k: int = 40,
                           timeout: Optional[float] = None) -> Dict[str, Any]:
        """Start an extra llama-server for ``model`` on host:port (the warm server is untouched).

        It answers only with the ``api_key`` in the result (header ``Authorization: Bearer <key>``), unless
        ``llama.extra_servers_keyless``; at most ``llama.max_extra_servers`` run at once."""
        self._check_accepting()
        require_admin(self.cfg, ctx.peer, "start_server")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
            check_range(name, value)
        path = self.store.resolve(model)
        await self.check_loadable(path, replaces_child=False)
        return await self.extra_servers.start(path, host, port, temperature, top_p, top_k,
                                              timeout or self.cfg.llama.load_timeout)

    async def stop_server(self, ctx: CallContext, *, pid: int, force: bool = False) -> Dict[str, Any]:
        require_admin(self.cfg, ctx.peer, "stop_server")
        return await self.extra_servers.stop(pid, force)

    async def server_info(self, ctx: CallContext, *, pid: int) -> Dict[str, Any]:
        return self.extra_servers.info(pid)

    # ------------------------------------------------------------------ reload, status
    async def reload(self, ctx: CallContext) -> Dict[str, Any]:
        """Re-read model profiles (and fallback_models) from the config file (also on SIGHUP).

        The warm model stays loaded unless its load options (ctx_size, n_gpu_layers,
        rpc_workers ...) changed; then it is restarted with the new ones.  Other
        settings need a restart of oracd and are reported as ignored.
        """
        require_admin(self.cfg, ctx.peer, "reload")
        return await self.reload_config()

    async def reload_config(self) -> Dict[str, Any]:
        """``reload`` without the caller check: SIGHUP (only root or oracd's user can send it) lands here."""
        current = self.cfg
        if current.path is None:
            raise InvalidParams("oracd was not started from a config file; nothing to reload")
        try:
            new = await anyio.to_thread.run_sync(config.load, current.path)
        except config.ConfigError as exc:
            raise InvalidParams(f"config not reloaded: {exc}") from None
        applied, ignored = plan_reload(current, new)
        self.holder.swap(applied)           # every component reads the holder: one swap, all of them see it
        loaded = self.supervisor.model
        restart = load_options_changed(current, applied, loaded)
        if restart:
            self.door.request_restart("profile load options changed")
        log.info("config reloaded", profiles=len(applied.profiles), restart=restart, ignored=ignored)
        return {"profiles": sorted(applied.profiles), "restarted": restart, "ignored_sections": ignored}

    async def status(self, ctx: CallContext) -> Dict[str, Any]:
        return status_dict(self)

    async def metrics(self, ctx: CallContext) -> Dict[str, Any]:
        """Prometheus text exposition: oracd's series and llama-server's, labelled with its model."""
        body, content_type = await self.prom.render(self)
        return {"content_type": content_type, "text": body.decode("utf-8")}
