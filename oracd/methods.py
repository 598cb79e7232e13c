"""The JSON-RPC methods oracd serves: generate, list_models, quantize_model, load/unload, status.

Parameter names and defaults follow the old ``LlamaCppClient`` so the compat
client passes its arguments straight through.  Each method validates its input
and raises the named errors from ``errors.py``; the transport is in ``rpc.py``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp
import anyio
import psutil

from . import __version__, config
from .config import Config
from .errors import (GenerationFailed, GenerationTimeout, InvalidParams, InvalidPath, ModelLoadFailed,
                     ShuttingDown)
from .llama_http import LlamaHTTPError
from .rpc_workers import worker_lost
from .logs import get as get_logger
from .models import ModelStore
from .profiles import Profile, ProfileError, resolve_grammar, resolve_schema
from .quantize import quantize
from .rpc import CallContext, Method, rpc_method
from .http_servers import ExtraServers
from .supervisor import Supervisor, rss_of

log = get_logger("oracd.methods")
_THINK = re.compile(r"<think>.*?(</think>\s*|$)", re.S)
MAX_TIMEOUT = 24 * 3600.0


def strip_think(text: str) -> str:
    """Drop <think>...</think> reasoning blocks (an unterminated one runs to the end)."""
    return _THINK.sub("", text).strip() if "<think>" in text else text


class App:
    """Everything the methods share: config, supervisor, model store, counters."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = ModelStore(cfg.models_dirs, cfg.llama.confine_model_links)
        self.supervisor = Supervisor(cfg)
        self.extra_servers = ExtraServers(cfg)
        self.started = time.time()
        self.connections = 0
        self.requests_in_flight = 0
        self.generations = 0
        self.accepting = True
        self.dispatcher_stats: Any = None   # set by server: the Dispatcher (served/errors)
        self._self_proc = psutil.Process()
        self._log_file = str(cfg.log_file)
        self.active_default: str = cfg.llama.default_model    # a fallback model after a failed preload
        self.fallback: Optional[Dict[str, Any]] = None

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown()

    def methods(self) -> Dict[str, Method]:
        return {name: rpc_method(getattr(self, name)) for name in
                ("generate", "list_models", "quantize_model", "load_model", "unload_model", "status",
                 "start_server", "stop_server", "server_info", "reload")}

    # ------------------------------------------------------------------ generate
    async def generate(self, ctx: CallContext, *, prompt: str, model: Optional[str] = None,
                       temperature: Optional[float] = None, top_p: Optional[float] = None,
                       top_k: Optional[int] = None, max_tokens: Optional[int] = None, timeout: float = 30,
                       system_prompt: Optional[str] = None, stop: Optional[List[str]] = None,
                       grammar: Optional[str] = None, json_schema: Optional[Any] = None,
                       stream: bool = False) -> Dict[str, Any]:
        """Chat completion with the model's template.

        Omitted (or null) parameters come from the model's profile, then from the
        defaults (temperature 0.7, top_p 0.7, top_k 40, max_tokens 512).
        ``grammar`` may be GBNF or "json"; ``json_schema`` a schema or "command".
        ``stream=true`` also sends each piece of text as a ``generate.chunk``
        notification {id, text} before the final result.
        """
        t0 = time.perf_counter()
        self._check_accepting()
        if not prompt.strip():
            raise InvalidParams("Prompt cannot be empty", "prompt: must not be blank")
        name = model or self.active_default
        if not name:
            raise InvalidParams("model is required (no llama.default_model is configured)", "model")
        path = self.store.resolve(name)
        prof = self.cfg.profile_for(path.name) or Profile(model=path.name)
        temperature = _pick(temperature, prof.temperature, 0.7)
        top_p = _pick(top_p, prof.top_p, 0.7)
        top_k = _pick(top_k, prof.top_k, 40)
        max_tokens = _pick(max_tokens, prof.max_tokens, self.cfg.llama.default_max_tokens)
        _check_range("temperature", temperature, 0, 10)
        _check_range("top_p", top_p, 0, 1)
        _check_range("top_k", top_k, 0, 100_000)
        _check_range("timeout", timeout, 0.001, MAX_TIMEOUT)
        _check_range("max_tokens", max_tokens, 1, 1_000_000)
        if grammar is not None and json_schema is not None:
            raise InvalidParams("grammar and json_schema are mutually exclusive", "grammar")
        try:
            if grammar is not None:
                grammar = resolve_grammar(grammar, self.store.primary, "grammar")
            elif json_schema is not None:
                json_schema = resolve_schema(json_schema, self.store.primary, "json_schema")
            elif prof.grammar or prof.json_schema:
                grammar, json_schema = prof.grammar, prof.json_schema
        except ProfileError as exc:
            raise InvalidParams(str(exc)) from None
        self._check_loadable(path)
        messages = []
        system_prompt = system_prompt if system_prompt is not None else prof.effective_system_prompt()
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": prompt})
        body: Dict[str, Any] = {"messages": messages, "temperature": temperature, "top_p": top_p,
                                "top_k": top_k, "max_tokens": max_tokens, "cache_prompt": True}
        stop = stop if stop is not None else (list(prof.stop) if prof.stop else None)
        if stop:
            body["stop"] = stop
        if grammar is not None:
            body["grammar"] = grammar
        if json_schema is not None:
            body["json_schema"] = json_schema
        if not prof.think:
            body["chat_template_kwargs"] = {"enable_thinking": False}
        deadline = time.monotonic() + timeout
        self.requests_in_flight += 1
        try:
            with anyio.fail_after(timeout):
                on_delta = (lambda text: ctx.progress("generate.chunk", text=text)) if stream else None
                data = await self._complete(path, body, deadline, on_delta)
        except TimeoutError:
            raise GenerationTimeout(f"Generation timed out after {timeout:g} seconds",
                                    {"timeout": timeout}) from None
        finally:
            self.requests_in_flight -= 1
        self.generations += 1
        text = strip_think(data["content"])
        usage = data["usage"]
        return {
            "response": text,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
            "model": model or name,
            "prompt": prompt,
            "finish_reason": data["finish_reason"],
            "usage": {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }

    async def _complete(self, path: Path, body: Dict[str, Any], deadline: float,
                        on_delta: Any = None) -> Dict[str, Any]:
        """POST the chat completion; if llama-server died under us, retry once on the restarted one.

        Short generations (max_tokens <= llama.stream_above_tokens) are fetched in one
        response: no per-token wake-ups, the fastest path.  Longer ones, and stream=true,
        are streamed, because llama-server stops a streamed generation the moment its
        connection closes (timeout, client gone); a cancelled one-response generation is
        only dropped once llama-server's result queue has been quiet for a second, so
        under steady traffic it can run to its max_tokens.

        A generation has no side effects, so one transparent retry after a crash
        is safe; a second failure is reported as GenerationFailed.
        """
        for attempt in (1, 2):
            async with self.supervisor.use(path.name, path, deadline) as child:
                try:
                    if on_delta is None and body["max_tokens"] <= self.cfg.llama.stream_above_tokens:
                        return await child.http.chat(body)
                    return await child.http.chat_stream(body, on_delta)
                except LlamaHTTPError as exc:
                    if exc.status == 400:
                        raise InvalidParams(f"llama-server rejected the request: {exc.message}") from None
                    raise GenerationFailed(f"llama-server error {exc.status}: {exc.message}") from None
                except (aiohttp.ClientError, OSError) as exc:
                    failure = f"lost connection to llama-server ({type(exc).__name__})"
            if attempt == 2:
                raise GenerationFailed(f"{failure}, twice; giving up", {"retryable": True})
            with anyio.move_on_after(self.cfg.llama.health_timeout):
                await child.exited.wait()     # let the supervisor see the exit before we ask again
            if child.rpc_workers and (child.killed_for == "rpc_worker_lost" or worker_lost(child.tail)):
                # not retried: the next llama-server needs the workers again (or falls back to local)
                raise GenerationFailed(
                    "an RPC worker was lost during the generation; llama-server aborted and is being "
                    "restarted" + (" (without the workers if they stay down: rpc_fallback_local)"
                                   if self.cfg.llama.rpc_fallback_local else ""),
                    {"reason": "rpc_worker_lost", "workers": list(child.rpc_workers), "retryable": True})
            log.warning("generation failed, retrying once after restart", error=failure, pid=child.proc.pid)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_loadable(self, path: Any) -> None:
        """Refuse a non-GGUF/corrupt file before it can evict the model that is serving."""
        if path.name == self.supervisor.model:
            return
        meta = self.store.metadata(path)
        if not meta.get("valid"):
            raise ModelLoadFailed(f"{path.name} is not a loadable GGUF model: {meta.get('error')}",
                                  {"path": str(path), "reason": "not_gguf"})

    # ------------------------------------------------------------------ models
    async def list_models(self, ctx: CallContext, *, models_path: Optional[str] = None) -> List[Dict[str, Any]]:
        if models_path is not None and not self.store.serves(models_path):
            raise InvalidPath(f"oracd does not serve models from {models_path}; it serves "
                              f"{', '.join(str(d) for d in self.store.dirs)}",
                              {"served": [str(d) for d in self.store.dirs]})
        loaded = self.supervisor.model
        items = await anyio.to_thread.run_sync(self.store.list, loaded)
        for item in items:
            item["profile"] = item["name"] if item["name"] in self.cfg.profiles else None
        return items

    async def quantize_model(self, ctx: CallContext, *, input_model: str, output_model: str,
                             quantization_type: str = "q4_k", overwrite: bool = False) -> Dict[str, Any]:
        self._check_accepting()
        self.requests_in_flight += 1
        try:
            t0 = time.monotonic()

            async def progress(done: int, total: int, tensor: str) -> None:
                await ctx.progress("quantize.progress", done=done, total=total, tensor=tensor,
                                   elapsed_ms=round((time.monotonic() - t0) * 1000, 1))

            return await quantize(self.store, self.cfg.llama.quantize_bin, input_model, output_model,
                                  quantization_type, overwrite, self.cfg.llama.quantize_timeout,
                                  progress=progress, max_output_bytes=self.cfg.llama.quantize_max_output_bytes)
        finally:
            self.requests_in_flight -= 1

    async def load_model(self, ctx: CallContext, *, model: Optional[str] = None,
                         timeout: Optional[float] = None) -> Dict[str, Any]:
        self._check_accepting()
        name = model or self.active_default
        if not name:
            raise InvalidParams("model is required (no llama.default_model is configured)", "model")
        timeout = timeout or self.cfg.llama.load_timeout
        _check_range("timeout", timeout, 0.001, MAX_TIMEOUT)
        path = self.store.resolve(name)
        self._check_loadable(path)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        seq = self.supervisor.failure_seq
        try:
            with anyio.fail_after(timeout):
                while True:       # load.progress every half second until the model is ready
                    with anyio.move_on_after(0.5):
                        child = await self.supervisor.load(path.name, path, deadline, seq)
                        break
                    await ctx.progress("load.progress", model=path.name, state=self.supervisor.state.value,
                                       elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))
        except TimeoutError:
            raise GenerationTimeout(f"load of {path.name} timed out after {timeout:g} seconds") from None
        return {"model": child.model, "state": self.supervisor.state.value, "pid": child.proc.pid,
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3)}

    async def unload_model(self, ctx: CallContext, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        timeout = timeout or self.cfg.llama.stop_grace + 15
        _check_range("timeout", timeout, 0.001, MAX_TIMEOUT)
        previous = self.supervisor.model
        try:
            with anyio.fail_after(timeout):
                await self.supervisor.unload(time.monotonic() + timeout)
        except TimeoutError:
            raise GenerationTimeout(f"unload timed out after {timeout:g} seconds") from None
        return {"unloaded": previous, "state": self.supervisor.state.value}

    # ------------------------------------------------------------------ old start_server()
    async def start_server(self, ctx: CallContext, *, model: str, host: str = "127.0.0.1", port: int = 8080,
                           temperature: float = 0.7, top_p: float = 0.7, top_k: int = 40,
                           timeout: Optional[float] = None) -> Dict[str, Any]:
        """Start an extra llama-server for ``model`` on host:port (the warm server is untouched)."""
        self._check_accepting()
        _check_range("temperature", temperature, 0, 10)
        _check_range("top_p", top_p, 0, 1)
        _check_range("top_k", top_k, 0, 100_000)
        path = self.store.resolve(model)
        self._check_loadable(path)
        return await self.extra_servers.start(path, host, port, temperature, top_p, top_k,
                                              timeout or self.cfg.llama.load_timeout)

    async def stop_server(self, ctx: CallContext, *, pid: int, force: bool = False) -> Dict[str, Any]:
        return await self.extra_servers.stop(pid, force)

    async def server_info(self, ctx: CallContext, *, pid: int) -> Dict[str, Any]:
        return self.extra_servers.info(pid)

    async def reload(self, ctx: CallContext) -> Dict[str, Any]:
        """Re-read model profiles (and fallback_models) from the config file (also on SIGHUP).

        The warm model stays loaded unless its load options (ctx_size, n_gpu_layers,
        ...) changed; then it is restarted with the new ones.  Other settings need
        a restart of oracd and are reported as ignored.
        """
        if self.cfg.path is None:
            raise InvalidParams("oracd was not started from a config file; nothing to reload")
        try:
            new = await anyio.to_thread.run_sync(config.load, self.cfg.path)
        except config.ConfigError as exc:
            raise InvalidParams(f"config not reloaded: {exc}") from None
        ignored = [k for k in ("server",) if getattr(new, k) != getattr(self.cfg, k)]
        llama_new = dataclasses.replace(new.llama, fallback_models=self.cfg.llama.fallback_models)
        if llama_new != self.cfg.llama:
            ignored.append("llama")
        loaded = self.supervisor.model
        old_opts = (self.cfg.profile_for(loaded) or Profile(model="")).load_options()
        new_opts = (new.profile_for(loaded) or Profile(model="")).load_options()
        self.cfg = dataclasses.replace(self.cfg, profiles=new.profiles,
                                       llama=dataclasses.replace(self.cfg.llama,
                                                                 fallback_models=new.llama.fallback_models))
        self.supervisor.cfg = self.cfg
        restart = bool(loaded) and old_opts != new_opts
        if restart:
            self.supervisor.request_restart("profile load options changed")
        log.info("config reloaded", profiles=len(new.profiles), restart=restart, ignored=ignored)
        return {"profiles": sorted(new.profiles), "restarted": restart,
                "ignored_sections": ignored}

    async def status(self, ctx: CallContext) -> Dict[str, Any]:
        return self.status_dict()

    def status_dict(self) -> Dict[str, Any]:
        d = self.dispatcher_stats
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "rss_bytes": rss_of(self._self_proc),
            "child": self.supervisor.status(),
            "requests": {"served": d.served if d else 0, "errors": d.errors if d else 0,
                         "in_flight": self.requests_in_flight, "generations": self.generations},
            "connections": self.connections,
            "http_servers": [s.info() for s in self.extra_servers.servers.values() if s.returncode is None],
            "socket": str(self.cfg.server.socket),
            "log_file": self._log_file,
            "models_dirs": [str(p) for p in self.cfg.models_dirs],
            "default_model": self.cfg.llama.default_model or None,
            "active_default_model": self.active_default or None,
            "fallback": self.fallback,
            "profiles": sorted(self.cfg.profiles),
            "config": str(self.cfg.path) if self.cfg.path else None,
        }


def _pick(sent: Any, profile: Any, default: Any) -> Any:
    """What a request sends wins; then the model's profile; then the built-in default."""
    if sent is not None:
        return sent
    return profile if profile is not None else default


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise InvalidParams(f"{name} must be between {lo:g} and {hi:g}", f"{name}: got {value!r}")
