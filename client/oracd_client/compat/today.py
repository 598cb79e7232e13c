"""``LlamaCppClient`` with today's ORAC interface (ORAC HEAD's ``orac/llama_cpp_client.py``), served by oracd.

Inside the ORAC app, ``orac/llama_cpp_client.py`` becomes::

    from oracd_client.compat.today import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT,  # noqa: F401
                                           JSON_SYSTEM_PROMPT, MODELS_PATH, LlamaCppClient, ServerState, logger)
    from orac.models import PromptResponse  # noqa: F401

Same constructor, methods, parameters, defaults and return shapes as today's
ORAC client; what changes is underneath:

* **No per-model servers.**  oracd keeps one llama-server warm for everyone;
  ``_ensure_server_running`` makes the model the loaded one (``load_model``) and
  returns a ``ServerState`` describing oracd's server.  Nothing is spawned here.
* **Grammars go per request.**  ``grammar_file`` is read on each call (cached by
  ``grammar_files``: one ``stat`` while the file is unchanged) and its text is sent
  as the request's ``grammar``; a rewritten file applies to the next request, on
  the same llama-server.  ``json_mode`` without a file sends oracd's built-in
  ``"json"`` grammar.  A grammar change never restarts anything.
* **The prompt is ORAC's, raw.**  ``generate`` formats the prompt exactly as
  ORAC does (``model_configs.yaml``'s ``prompt_format.template``, JSON system
  prompt, sampling rules: ``today_prompts``) and sends it with ``raw: true``, so
  llama-server's ``/completion`` gets the very text ORAC posted, with no second
  chat template around it.  The answer is cleaned up as ORAC does.
* **Warm-up that survives restarts.**  ``prewarm_kv_cache`` registers, with oracd's
  ``prewarm``, the prefix ORAC's command prompts share (model template, system
  slot, the service's instruction and grammar hint, up to ``"User: "``): oracd keeps
  it in every slot and restores it after every load, crash restart and oracd
  restart.  ``generate`` learns the prefix from the prompts it really sends and
  re-registers it when it changes (a new instruction, a new grammar), in the
  background after the answer; ``today_warm`` keeps it beside the model config so
  an app restart warms the right prefix at once.
* **``stop_all_servers_sync``** meets its purpose (no stale prompt state after a
  grammar regeneration) without stopping anything: the prefix is rebuilt with the
  new grammar's hint and re-warmed (the next command hits the cache); it returns
  the number of models whose state was reset, where ORAC's returned the number of
  servers it killed (the same count for the same calls).

Logging goes to ``orac.llama_cpp_client``, ORAC's own logger name, with ORAC's
messages ("Sending to LLM: ...", "LLM raw response: ...", "Generation error: ...").
Errors: blank prompt -> ``ValueError("Prompt cannot be empty")``; missing model ->
``FileNotFoundError("Model not found: ...")``; timeout -> an ``Exception`` saying
``"Generation timed out after N seconds"`` (ORAC's service maps "timed out" to 504);
oracd down -> ``OracdUnavailable`` (a ``ConnectionError``).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from oracd_protocol.blocking import call_sync
from oracd_protocol.errors import CallTimeout, InvalidParams, InvalidPath, ModelNotFound, OracError
from oracd_protocol.names import CLIENT_GRACE_S, MODELS_PATH_ENV

from ..exceptions import as_builtin
from ..transport import OracdClient
from .errors import START_PREFIX, generate_error, prefixed
from .grammar_files import GrammarFiles
from .today_prompts import (JSON_SYSTEM_PROMPT, clean_response, format_prompt, generate_params, grammar_hint,
                            model_config, predicted_prefix, sampling, stable_prefix, system_slot, template_head,
                            template_of)
from .today_response import TodayPromptResponse, build_today_response
from .today_warm import WarmRecord, WarmState, default_state_path

#: ORAC's logger name for this module (inside the app its console and log show these lines).
logger = logging.getLogger("orac.llama_cpp_client")

MODELS_PATH = os.getenv(MODELS_PATH_ENV)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 30
MAX_TIMEOUT = 24 * 3600.0
#: A learned prefix is re-registered at most this often per model (two topics taking turns must not thrash).
RELEARN_INTERVAL_S = 5.0
#: Bound on oracd's ``status`` for the synchronous ``get_health_status``.
HEALTH_TIMEOUT_S = 5.0
PromptResponse = TodayPromptResponse


@dataclass
class ServerState:
    """oracd's warm llama-server as ``_ensure_server_running`` sees it (the fields of ORAC's ``ServerState``).

    ``process`` and ``session`` are None: oracd owns the process and the connection.
    ``pid``/``endpoint``/``state`` are oracd's child, ``pre_warmed`` whether this client
    registered a warm prefix for the model.
    """
    model: str
    pid: Optional[int] = None
    endpoint: Optional[str] = None
    state: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    process: Any = None
    session: Any = None
    last_used: float = 0.0
    grammar_file: Optional[str] = None
    pre_warmed: bool = False
    consecutive_failures: int = 0
    last_health_check: Optional[float] = None
    restart_count: int = 0


@dataclass
class _Context:
    """How the last generation for a model was asked (what its next prompt will look like)."""
    json_mode: bool = False           # ORAC's GenerationRequest default: its service passes the request's value
    system_prompt: Optional[str] = None
    grammar_file: Optional[str] = None


def _gguf(model: str) -> str:
    return model if model.endswith(".gguf") else model + ".gguf"


def _read_yaml(path: str) -> Any:
    import yaml      # PyYAML: ORAC's own dependency (and gguf's, so installed with oracd)
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _load_model_configs(config_path: str) -> Dict[str, Any]:
    """ORAC's ``orac.config.load_model_configs()`` inside the app, else the YAML at ``config_path``, else {}."""
    try:
        load = getattr(importlib.import_module("orac.config"), "load_model_configs", None)
    except Exception:
        load = None
    if callable(load):
        try:
            return load() or {}
        except Exception as exc:
            logger.warning("load_model_configs() failed (%s); reading %s", exc, config_path)
    try:
        return _read_yaml(config_path) or {}
    except FileNotFoundError:
        return {}
    except Exception as exc:
        logger.warning("Could not read model configuration %s: %s", config_path, exc)
        return {}


class LlamaCppClient:
    """Today's ORAC ``LlamaCppClient``, backed by oracd (see the module docstring).

    ``model_path`` is kept as an attribute (ORAC's models dir); the models are
    oracd's.  ``config_path`` is ``model_configs.yaml``; inside the app the model
    configurations come from ``orac.config.load_model_configs()`` as in ORAC.
    Keyword-only extras: ``socket_path`` (default ``$ORACD_SOCKET`` ...) and
    ``state_path`` (where learned warm prefixes are kept; ``today_warm``).
    Nothing is opened in ``__init__``, and no event loop is needed.
    """

    #: Model configurations, loaded once per process as ORAC does.
    _model_configs: Optional[Dict[str, Any]] = None
    _grammars: Optional[Dict[str, Dict[str, Any]]] = None
    _system_prompts: Dict[str, str] = {"json": JSON_SYSTEM_PROMPT}

    def __init__(self, model_path: str, config_path: str = "data/model_configs.yaml", *,
                 socket_path: Optional[str] = None, state_path: Optional[str] = None):
        self.model_path = model_path
        self.config_path = config_path
        self.model = None
        if LlamaCppClient._model_configs is None:
            LlamaCppClient._model_configs = _load_model_configs(config_path)
        self.model_configs: Dict[str, Any] = LlamaCppClient._model_configs
        self.config = self.model_configs
        logger.info("Initializing LlamaCppClient with models path: %s", self.model_path)
        self._rpc = OracdClient(socket_path)
        self.grammar_files = GrammarFiles()
        self._servers: Dict[str, ServerState] = {}
        self._contexts: Dict[str, _Context] = {}
        self._warm = WarmState(state_path if state_path is not None else default_state_path(config_path))
        self._warming: Dict[str, "asyncio.Task[bool]"] = {}
        self._learned_at: Dict[str, float] = {}
        self._health_check_timeout = HEALTH_TIMEOUT_S
        self._max_consecutive_failures = 2
        self._total_restart_count = 0
        logger.info("LlamaCppClient initialized successfully")

    @property
    def socket_path(self) -> str:
        return self._rpc.socket_path

    # ------------------------------------------------------------------ generation
    async def generate(self, prompt: str, model: str, temperature: float = 0.7, top_p: float = 0.7,
                       top_k: int = 40, max_tokens: Optional[int] = None, verbose: bool = False,
                       timeout: int = 30, system_prompt: Optional[str] = None, json_mode: bool = True,
                       stream: bool = False, grammar_file: str = None) -> Any:
        """Generate a response from ``model`` (ORAC's parameters and rules; the formatted prompt goes raw).

        ``grammar_file``: a GBNF file, read now and sent with this request (a missing
        file is no grammar file, as in ORAC).  ``json_mode`` without a grammar file:
        oracd's built-in JSON grammar.  ``verbose`` and ``stream`` are accepted and
        ignored, as in ORAC.  Returns the app's ``orac.models.PromptResponse`` inside
        ORAC (``TodayPromptResponse`` standalone) with ``usage`` from oracd, whose
        ``cached_tokens`` says how much of the prompt came from the KV cache.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("Prompt cannot be empty")
        loop = asyncio.get_running_loop()
        start_time = loop.time()
        try:
            cfg = model_config(self.model_configs, model)
            template = template_of(cfg)
            system = system_slot(cfg, json_mode, system_prompt)
            formatted = format_prompt(template, system, prompt)
            recommended = cfg.get("recommended_settings") or {}
            grammar_mode = bool(grammar_file or json_mode)
            temperature, top_p, top_k = sampling(temperature, top_p, top_k, grammar_mode, recommended)
            if grammar_mode:
                logger.info("Grammar mode - using: temp=%s, top_p=%s, top_k=%s", temperature, top_p, top_k)
            max_tokens = max_tokens or recommended.get("max_tokens", 512)
            grammar_text = self.grammar_files.read(grammar_file) if grammar_file else None
            if grammar_text is not None and not grammar_text.strip():
                grammar_text = None
            server = self._servers.get(model)
            if server is None:
                server = await self._ensure_server_running(model, temperature, top_p, top_k, json_mode, grammar_file)
            server.last_used = loop.time()
            self._contexts[model] = _Context(json_mode, system_prompt, grammar_file)
            await self._settled(model)

            params = generate_params(formatted, model, temperature, top_p, top_k, max_tokens,
                                     MAX_TIMEOUT if timeout is None else timeout, json_mode, grammar_text)
            logger.info("Sending to LLM: ...%s", formatted[-200:])
            try:
                r = await self._rpc.call("generate", params, timeout=params["timeout"] + CLIENT_GRACE_S)
            except (OracError, CallTimeout) as exc:
                raise generate_error(exc, timeout) from None
            raw_text = (r.get("response") or "").strip()
            if not raw_text:
                logger.warning("Empty content in server response (finish_reason=%s)", r.get("finish_reason"))
            logger.info("LLM raw response: %s%s", raw_text[:200], "..." if len(raw_text) > 200 else "")
            text = clean_response(raw_text, json_mode)
            if json_mode and text != raw_text:
                logger.warning("Invalid JSON response from model; returning %s", text[:200])
            self._learn(model, formatted, template, system, prompt, json_mode, system_prompt, grammar_file,
                        grammar_text)
            return build_today_response(
                text=text, model=model, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                json_mode=json_mode, system_prompt=system, prompt=prompt, generated_at=start_time,
                response_time=loop.time() - start_time, finish_reason=r.get("finish_reason"), usage=r.get("usage"))
        except Exception as e:
            logger.error("Generation error: %s", e)
            raise

    # ------------------------------------------------------------------ the model in oracd
    async def _ensure_server_running(self, model: str, temperature: float = 0.7, top_p: float = 0.7,
                                     top_k: int = 40, json_mode: bool = True,
                                     grammar_file: str = None) -> ServerState:
        """Make ``model`` the model oracd's llama-server has loaded and ready; return its ``ServerState``.

        Sampling values and ``json_mode`` go with each request in oracd, and the
        grammar file is read per request, so none of them restarts anything.
        ``grammar_file`` is remembered: ``prewarm_kv_cache`` builds the warm prefix
        with its hint.
        """
        st = await self._rpc.call("status", timeout=30, idempotent=True)
        child = st.get("child") or {}
        if child.get("model") != _gguf(model) or child.get("state") != "ready":
            try:
                await self._rpc.call("load_model", {"model": model}, idempotent=True)
            except (ModelNotFound, InvalidPath) as exc:
                raise as_builtin(exc, FileNotFoundError) from None
            except InvalidParams as exc:
                raise as_builtin(exc, ValueError) from None
            except OracError as exc:
                raise prefixed(exc, START_PREFIX) from None
            st = await self._rpc.call("status", timeout=30, idempotent=True)
            child = st.get("child") or {}
            logger.info("Server ready for model %s (oracd's llama-server pid %s)", model, child.get("pid"))
        server = self._server_state(model, child)
        server.grammar_file = grammar_file
        self._servers[model] = server
        ctx = self._contexts.get(model)
        if ctx is None:
            self._contexts[model] = _Context(grammar_file=grammar_file)
        elif grammar_file is not None:
            ctx.grammar_file = grammar_file
        return server

    def _server_state(self, model: str, child: Dict[str, Any]) -> ServerState:
        endpoint = child.get("endpoint")
        host, port = None, None
        if isinstance(endpoint, str) and not endpoint.startswith("unix:"):     # "host:port" (a TCP child)
            hostport = endpoint.split("://", 1)[-1].split("/", 1)[0]
            host, _, p = hostport.rpartition(":")
            port = int(p) if p.isdigit() else None
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = time.monotonic()
        return ServerState(model=model, pid=child.get("pid"), endpoint=endpoint, state=child.get("state"),
                           host=host, port=port, last_used=now, pre_warmed=self._warm.get(model) is not None,
                           consecutive_failures=int(child.get("consecutive_failures") or 0),
                           restart_count=int(child.get("restarts") or 0))

    async def list_models(self) -> List[Dict[str, Any]]:
        """The GGUF models oracd serves: ``name``, ``size``, ``modified``, ``backend`` ("llama_cpp") and
        oracd's extras (``loaded``, ``path``, ``architecture``...)."""
        items = await self._rpc.call("list_models", {}, timeout=120, idempotent=True)
        models = [{"name": i["name"], "size": i["size"], "modified": i["modified"], "backend": "llama_cpp",
                   **{k: v for k, v in i.items() if k not in ("name", "size", "modified", "backend")}}
                  for i in items]
        logger.info("Found %d models", len(models))
        return models

    async def load_model(self, name: str) -> Dict[str, Any]:
        """Load ``name`` in oracd; ORAC's ``ModelLoadResponse`` fields: ``{status, message, error,
        elapsed_seconds}`` (status "success" or "error"; oracd unreachable raises)."""
        t0 = time.monotonic()
        try:
            info = await self._rpc.call("load_model", {"model": name}, idempotent=True)
        except OracError as exc:
            logger.error("Error loading model %s: %s", name, exc.message)
            return {"status": "error", "message": f"Failed to load model {name}", "error": exc.message,
                    "elapsed_seconds": round(time.monotonic() - t0, 3)}
        elapsed = round(time.monotonic() - t0, 3)
        self._servers[name] = self._server_state(name, {"pid": info.get("pid"), "state": info.get("state")})
        logger.info("Model %s loaded in %.2fs", name, elapsed)
        return {"status": "success", "message": f"Model {name} loaded (llama-server pid {info.get('pid')})",
                "error": None, "elapsed_seconds": elapsed}

    async def unload_model(self, name: str) -> Dict[str, Any]:
        """Unload ``name`` if it is oracd's loaded model; ORAC's ``ModelUnloadResponse`` fields:
        ``{status, message, error}``.  Another model loaded: nothing is touched."""
        try:
            child = (await self._rpc.call("status", timeout=30, idempotent=True)).get("child") or {}
            if child.get("model") != _gguf(name) or child.get("state") in ("stopped", "shutdown"):
                return {"status": "success", "message": f"Model {name} is not loaded", "error": None}
            await self._rpc.call("unload_model", {}, idempotent=True)
        except OracError as exc:
            logger.error("Error unloading model %s: %s", name, exc.message)
            return {"status": "error", "message": f"Failed to unload model {name}", "error": exc.message}
        self._servers.pop(name, None)
        logger.info("Model %s unloaded", name)
        return {"status": "success", "message": f"Model {name} unloaded", "error": None}

    # ------------------------------------------------------------------ warm prefixes
    async def prewarm_kv_cache(self, model: str, system_prompt: str = "") -> bool:
        """Warm the prefix the next command's prompt will start with, in every slot (oracd's ``prewarm``).

        The prefix: the model template up to the user slot (with the system slot
        ``generate`` fills), then ORAC's command instruction, the grammar hint and
        ``"\\n\\nUser: "``.  The instruction is ``system_prompt`` when given; else
        the one learned from the prompts sent (kept across app restarts; see
        ``today_warm``), with the hint of the grammar file as it is now; else ORAC's
        default, "/no_think Match input to JSON.".  The model is made ready first if
        needed.  oracd keeps the prefix warm after every later load, crash restart
        and oracd restart.  Returns True once warmed.
        """
        if model not in self._servers:
            await self._ensure_server_running(model)
        rec = self._prefix_record(model, system_prompt)
        logger.info("Pre-warming KV cache for model %s...", model)
        t0 = time.monotonic()
        ok = await self._register(model, rec, self._remember(model, rec))
        if ok:
            logger.info("KV cache pre-warmed for %s in %.3fs", model, time.monotonic() - t0)
        return ok

    def _prefix_record(self, model: str, system_prompt: str = "") -> WarmRecord:
        """What ``prewarm_kv_cache`` warms (see there)."""
        ctx = self._contexts.get(model) or _Context()
        cfg = model_config(self.model_configs, model)
        template = template_of(cfg)
        text = self.grammar_files.read(ctx.grammar_file) if ctx.grammar_file else None
        if not system_prompt:
            rec = self._warm.get(model)
            if rec is not None and rec.prefix.startswith(
                    template_head(template, system_slot(cfg, rec.json_mode, rec.system_prompt))):
                if ctx.grammar_file and text is not None:
                    return rec.with_grammar(ctx.grammar_file, text)
                if rec.grammar_file:
                    return rec.with_grammar(rec.grammar_file, self.grammar_files.read(rec.grammar_file))
                return rec
        system = system_slot(cfg, ctx.json_mode, ctx.system_prompt)
        prefix = predicted_prefix(template, system, system_prompt or None, text)
        hint = grammar_hint(text) if text is not None else None
        return WarmRecord(prefix, ctx.json_mode, ctx.system_prompt, ctx.grammar_file, hint)

    def _remember(self, model: str, rec: WarmRecord) -> Optional[WarmRecord]:
        """Make ``rec`` the model's warm record at once (a grammar regeneration arriving before oracd has
        warmed it rebuilds from it); returns the one it replaces."""
        previous = self._warm.get(model)
        if rec.prefix.strip():
            self._warm.set(model, rec)
        return previous

    async def _register(self, model: str, rec: WarmRecord, previous: Optional[WarmRecord]) -> bool:
        """Have oracd warm ``rec.prefix`` for ``model`` (now and after every load); if that fails, the
        record ``_remember`` replaced is put back."""
        if not rec.prefix.strip():
            logger.warning("Cannot pre-warm cache for %s: the prompt has no shared prefix", model)
            return False
        try:
            await self._rpc.call("prewarm", {"model": model, "prefix": rec.prefix}, idempotent=True)
        except (OracError, OSError) as exc:       # OSError: oracd unreachable, connection lost, no answer in time
            logger.warning("Failed to pre-warm cache: %s", exc)
            if self._warm.get(model) == rec:
                self._warm.set(model, previous)
            return False
        server = self._servers.get(model)
        if server is not None:
            server.pre_warmed = True
        return True

    def _learn(self, model: str, formatted: str, template: str, system: str, prompt: str, json_mode: bool,
               system_prompt: Optional[str], grammar_file: Optional[str], grammar_text: Optional[str]) -> None:
        """After an answer: if the prompt did not start with the warm prefix, warm the one it has, in the
        background (the next generate for this model waits for it)."""
        rec = self._warm.get(model)
        if rec is not None and formatted.startswith(rec.prefix):
            return
        now = time.monotonic()
        if now - self._learned_at.get(model, -RELEARN_INTERVAL_S) < RELEARN_INTERVAL_S:
            return
        prefix = stable_prefix(template, system, prompt)
        if not prefix.strip() or (rec is not None and rec.prefix == prefix):
            return
        hint = grammar_hint(grammar_text) if grammar_text is not None else None
        new = WarmRecord(prefix, json_mode, system_prompt, grammar_file, hint if hint and hint in prefix else None)
        self._learned_at[model] = now
        self._start_warming(model, new)

    def _start_warming(self, model: str, rec: WarmRecord) -> None:
        old = self._warming.get(model)
        if old is not None and not old.done():
            old.cancel()
        previous = self._remember(model, rec)
        self._warming[model] = asyncio.get_running_loop().create_task(self._register(model, rec, previous))

    async def _settled(self, model: str) -> None:
        """Wait for a prewarm of ``model`` started in the background on this loop (never raises)."""
        task = self._warming.get(model)
        if task is None:
            return
        if task.done():
            self._warming.pop(model, None)
            return
        if task.get_loop() is not asyncio.get_running_loop():
            return
        try:
            await asyncio.shield(task)
        except Exception:
            pass
        self._warming.pop(model, None)

    # ------------------------------------------------------------------ ORAC's synchronous hooks
    def stop_all_servers_sync(self, reason: str = "") -> int:
        """After a grammar regeneration: drop stale prompt state, stop nothing.  Returns an ``int`` as ORAC's did.

        ORAC killed every llama-server so that the next command started from a
        fresh one.  With oracd the grammar is read per request, so the next
        command already uses the new file on the same llama-server; what is
        stale is the warm prefix, whose grammar hint lists the old devices and
        locations.  Each registered prefix is rebuilt with the new hint and
        warmed again: in the background when called on a running event loop,
        else before returning.  Returns the number of models this client had
        made ready (ORAC: the number of servers stopped; the same count for the
        same calls); they are checked again on their next generation.
        """
        models = list(self._servers)
        self._servers.clear()
        stale: List[Tuple[str, WarmRecord]] = []
        for model, rec in self._warm.items():
            if not rec.grammar_file:
                continue
            self.grammar_files.forget(rec.grammar_file)
            new = rec.with_grammar(rec.grammar_file, self.grammar_files.read(rec.grammar_file))
            if new != rec:
                stale.append((model, new))
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for model, rec in stale:
            if loop is not None:
                self._start_warming(model, rec)
            else:
                try:
                    call_sync("prewarm", {"model": model, "prefix": rec.prefix}, socket_path=self.socket_path,
                              timeout=120)
                    self._warm.set(model, rec)
                    server = self._servers.get(model)
                    if server is not None:
                        server.pre_warmed = True
                except (OracError, OSError) as exc:
                    logger.warning("Failed to pre-warm cache after %s: %s", reason or "a reset", exc)
        if models or stale:
            logger.info("Reset prompt state of %d model(s) without stopping llama-server (%d warm prefix(es) "
                        "rebuilt); reason: %s", len(models), len(stale), reason or "unspecified")
        return len(models)

    def get_health_status(self) -> Dict[str, Any]:
        """ORAC's health dict, from oracd's ``status``: ``status`` (healthy / degraded / unhealthy / no_servers),
        ``total_restart_count``, ``max_consecutive_failures``, ``servers`` (one entry: oracd's llama-server).

        Synchronous, as ORAC's: one short blocking call to oracd (bounded by
        ``HEALTH_TIMEOUT_S``).  oracd unreachable: status "unhealthy" with ``error``.
        """
        try:
            st = call_sync("status", socket_path=self.socket_path, timeout=self._health_check_timeout)
        except (OracError, OSError) as exc:
            return {"status": "unhealthy", "total_restart_count": self._total_restart_count,
                    "max_consecutive_failures": self._max_consecutive_failures, "servers": [], "error": str(exc)}
        child = st.get("child") or {}
        state = child.get("state")
        failures = int(child.get("consecutive_failures") or 0)
        restarts = int(child.get("restarts") or 0)
        self._total_restart_count = restarts
        if state in (None, "stopped", "shutdown") or not child.get("model"):
            return {"status": "no_servers", "total_restart_count": restarts,
                    "max_consecutive_failures": self._max_consecutive_failures, "servers": []}
        if state == "failed" or failures >= self._max_consecutive_failures:
            overall = "unhealthy"
        elif state == "backoff" or failures > 0:
            overall = "degraded"
        else:
            overall = "healthy"
        name = child.get("model")
        mine = self._servers.get(name) or self._servers.get(str(name)[:-5])
        server = self._server_state(name, child)
        entry = {"model": name, "port": server.port,
                 "process_running": state in ("ready", "starting", "stopping") and child.get("pid") is not None,
                 "consecutive_failures": failures, "restart_count": restarts,
                 "last_health_check": time.monotonic(), "last_used": mine.last_used if mine else None,
                 "pid": child.get("pid"), "state": state, "endpoint": child.get("endpoint"),
                 "warm": (child.get("warm") or {}).get("how")}
        return {"status": overall, "total_restart_count": restarts,
                "max_consecutive_failures": self._max_consecutive_failures, "servers": [entry]}

    # ------------------------------------------------------------------ the rest of ORAC's interface
    async def start_server(self, model: str, host: str = "127.0.0.1", port: int = 8080, temperature: float = 0.7,
                           top_p: float = 0.7, top_k: int = 40) -> Any:
        """An extra llama-server on ``host:port`` that oracd runs (a Popen-like ``ManagedServer``), as the old shim."""
        return await self._legacy().start_server(model, host, port, temperature, top_p, top_k)

    async def quantize_model(self, input_model: str, output_model: str, quantization_type: str = "q4_k") -> bool:
        """Quantize in oracd's models dir (overwrites, as ORAC's did), as the old shim."""
        return await self._legacy().quantize_model(input_model, output_model, quantization_type)

    def _legacy(self) -> Any:
        from .legacy import LlamaCppClient as Legacy
        c = Legacy(socket_path=self.socket_path)
        c.models_path = None      # oracd's own models dir: ORAC's model_path is not sent
        return c

    def get_grammar(self, grammar_name: str) -> str:
        """A grammar from ``data/grammars.yaml`` (ORAC's file; read on first use)."""
        return self.get_grammar_info(grammar_name)["grammar"]

    def get_grammar_info(self, grammar_name: str) -> Dict[str, Any]:
        if LlamaCppClient._grammars is None:
            path = "data/grammars.yaml"
            if not os.path.exists(path):
                raise FileNotFoundError(f"Grammar configuration file not found at {path}")
            LlamaCppClient._grammars = (_read_yaml(path) or {}).get("grammars") or {}
        if grammar_name not in LlamaCppClient._grammars:
            raise ValueError(f"Grammar '{grammar_name}' not found in configuration")
        return LlamaCppClient._grammars[grammar_name]

    async def cleanup(self) -> None:
        """Close this client's connection to oracd.  Nothing is stopped: the model stays loaded and warm."""
        for task in list(self._warming.values()):
            if not task.done():
                task.cancel()
        self._warming.clear()
        await self._rpc.aclose()

    async def aclose(self) -> None:
        await self.cleanup()

    def __repr__(self) -> str:
        return f"<LlamaCppClient (today's ORAC) oracd={self.socket_path} models={len(self._servers)} ready>"


__all__ = ["LlamaCppClient", "ServerState", "PromptResponse", "TodayPromptResponse", "JSON_SYSTEM_PROMPT",
           "MODELS_PATH", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_TIMEOUT", "logger"]
