"""``LlamaCppClient`` with the old ORAC interface (``orac.llama_cpp_client``), served by oracd.

Drop-in for the old ``orac.llama_cpp_client.LlamaCppClient``: same names, parameters,
defaults, return types and exceptions, but nothing is spawned in-process; every
call is a JSON-RPC request to oracd over its Unix socket (see ``transport``).
``generate()`` returns the program's own ``orac.models.PromptResponse`` (``results``).

Exceptions (old contract, mapped in ``errors``; each is *also* the daemon's error
class, with its ``code`` and ``data``, see ``exceptions.as_builtin``):

* blank prompt -> ``ValueError("Prompt cannot be empty")`` (checked before any I/O)
* missing model -> ``FileNotFoundError("Model not found: <path>")``
* generation timeout -> ``GenerationTimeout`` (an ``Exception``) whose message is
  exactly ``f"Generation timed out after {timeout} seconds"`` with the caller's value
* bad parameter values -> ``ValueError``
* quantize: missing input -> ``FileNotFoundError("Input model not found: <path>")``,
  any other daemon error -> an ``Exception`` whose message starts ``"Quantization error: "``
* start_server: missing model -> ``FileNotFoundError``, any other daemon error ->
  an ``Exception`` whose message starts ``"Failed to start llama server: "``
* ``models_path`` not served by oracd -> ``ModelsPathNotServed`` (both
  ``FileNotFoundError`` and ``ValueError``)
* no daemon -> ``OracdUnavailable`` (a ``ConnectionError`` naming the socket and
  how to start oracd; never a ``FileNotFoundError``)

Prompts: one template, never two.  The old ORAC app formats the chat template
itself (``model_configs.yaml``'s ``prompt_format.template``, ChatML for Qwen) and
passes the result as ``prompt``.  The rule: a prompt that carries a chat-template
marker (``<|im_start|>``, Llama 3's ``<|start_header_id|>``, Gemma's
``<start_of_turn>``, ``[INST]``, ``<|user|>``...) is sent as it is to llama-server's
``/completion``, as the old ``llama-cli -p`` did; a plain prompt is the user message
and the model's own chat template applies.  Such prompts go with ``raw: "auto"``
(the marker list is ``oracd_protocol.schemas.TEMPLATE_MARKERS``, shared with oracd); a
prompt without one is sent without ``raw``, as the old client sent it.  (``generate_stream`` with a
``system_prompt`` is always a chat: the system prompt needs the template.)

Usage: ``usage`` keeps exactly the old three keys (``prompt_tokens``,
``completion_tokens``, ``total_tokens``); oracd's newer ``cached_tokens`` is dropped.

Logging, as the old client did, on ORAC's logger name ``orac.llama_cpp_client``
(``app_logger``; inside the app its console and ``orac.log`` show them): the
request with its prompt at INFO ("Running generation on oracd: ... -p <prompt> ..."),
"Cleaned response: '<text>'" at INFO, "Generation error: ..." at ERROR, "Found N
models" from ``list_models``.  ``verbose=True`` additionally logs the exchange on
``logger`` (``oracd_client.compat``), as the old client's ``verbose`` did.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Any, Dict, List, Optional

from oracd_protocol.blocking import call_sync
from oracd_protocol.errors import CallTimeout, InvalidParams, InvalidPath, ModelNotFound, OracError
from oracd_protocol.names import CLIENT_GRACE_S, MODELS_PATH_ENV
from oracd_protocol.schemas import carries_template

from ..exceptions import ModelsPathNotServed, as_builtin
from ..response import PromptResponse
from ..streaming import GenerateStream
from ..transport import OracdClient
from .errors import QUANT_PREFIX, START_PREFIX, generate_error, prefixed
from .managed import ManagedServer
from .results import build_response

#: This client's own logger (callers configure it; ``verbose=True`` logs here).
logger = logging.getLogger("oracd_client.compat")
#: The old client's logger name (``get_logger(__name__)`` in ``orac/llama_cpp_client.py``): ORAC's log shows these.
#: A NullHandler, as a library's logger has: the app's handlers still get every record (propagation), and a
#: program that configured no logging gets no "Generation error" on stderr from logging's last resort.
app_logger = logging.getLogger("orac.llama_cpp_client")
if not any(isinstance(h, logging.NullHandler) for h in app_logger.handlers):
    app_logger.addHandler(logging.NullHandler())
#: The usage keys the old ``PromptResponse.usage`` had.
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")

#: The old module's constants (``MODELS_PATH`` is only the env override here: oracd owns the models dir).
MODELS_PATH = os.getenv(MODELS_PATH_ENV)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 30

MAX_TIMEOUT = 24 * 3600.0       # what oracd accepts; used for timeout=None


def _generate_params(model: str, prompt: Any, temperature: Any, top_p: Any, top_k: Any,
                     max_tokens: Any, timeout: Any) -> Dict[str, Any]:
    """The old argument checks (blank prompt first) and oracd's generate params."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Prompt cannot be empty")
    try:
        params = {"prompt": prompt, "model": model, "temperature": float(temperature), "top_p": float(top_p),
                  "top_k": int(top_k), "max_tokens": None if max_tokens is None else int(max_tokens),
                  "timeout": MAX_TIMEOUT if timeout is None else float(timeout)}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid generation parameter: {exc}") from None
    if carries_template(prompt):    # oracd's own rule (one list): only such prompts carry raw at all, so a
        params["raw"] = "auto"      # plain prompt's request is exactly what it was (see the module docstring)
    return params


def _response_from(r: Dict[str, Any], elapsed_ms: float, model: str, prompt: str, verbose: bool,
                   what: str) -> Any:
    """oracd's generate result as the caller's PromptResponse (model/prompt echo the caller's arguments)."""
    usage = r.get("usage")
    if isinstance(usage, dict):
        usage = {k: usage[k] for k in USAGE_KEYS if k in usage}
    if verbose:
        logger.info("%s: %.1f ms, finish_reason=%s usage=%s response=%r", what, elapsed_ms,
                    r.get("finish_reason"), usage, r.get("response"))
    app_logger.info("Cleaned response: %r", r["response"])
    return build_response(response=r["response"], elapsed_ms=elapsed_ms, model=model or r.get("model"),
                           prompt=r.get("prompt", prompt), finish_reason=r.get("finish_reason"),
                           usage=usage)


def _log_request(params: Dict[str, Any]) -> None:
    """The old client's INFO line naming the request, prompt included (it logged its llama-cli command)."""
    app_logger.info("Running generation on oracd: -m %s -p %s --temp %s --top-p %s --top-k %s --n-predict %s",
                    params["model"], params["prompt"], params["temperature"], params["top_p"], params["top_k"],
                    params["max_tokens"] if params["max_tokens"] is not None else 512)


class LlamaCppClient:
    """ORAC's llama.cpp client, backed by oracd (one warm llama-server shared by all callers).

    ``models_path`` (default ``$ORAC_MODELS_PATH``, else oracd's own models dir)
    must be a directory oracd serves: it is sent with ``list_models`` and checked
    once per client before the first call that names a model; if oracd does not
    serve it the call raises ``ModelsPathNotServed``, which is both a
    ``FileNotFoundError`` and a ``ValueError`` (rather than silently using
    another directory).

    Nothing happens in ``__init__``: the connection to oracd is opened by the
    first call, kept, and shared by concurrent calls (one per event loop).  No
    close is needed; ``await client.aclose()`` or ``async with LlamaCppClient()``
    release it early.  ``socket_path`` (keyword only, not in the old interface)
    overrides ``$ORACD_SOCKET``.
    """

    def __init__(self, models_path: str = None, *, socket_path: Optional[str] = None):
        self._rpc = OracdClient(socket_path)
        self._models_path: Optional[str] = None
        self._unchecked_models_path: Optional[str] = None
        self._daemon_models_path: Optional[str] = None
        self.models_path = models_path or os.environ.get(MODELS_PATH_ENV) or None  # type: ignore[assignment]

    # ------------------------------------------------------------------ configuration
    @property
    def models_path(self) -> str:
        """The models dir in use: the one given (or ``$ORAC_MODELS_PATH``), else oracd's first models dir
        (asked from oracd once, with a short blocking call)."""
        if self._models_path is not None:
            return self._models_path
        if self._daemon_models_path is None:
            st = call_sync("status", socket_path=self._rpc.socket_path, timeout=10)
            self._daemon_models_path = (st.get("models_dirs") or [None])[0]
        return self._daemon_models_path  # type: ignore[return-value]

    @models_path.setter
    def models_path(self, value: Optional[str]) -> None:
        self._models_path = os.path.abspath(os.path.expanduser(str(value))) if value else None
        self._unchecked_models_path = self._models_path

    @property
    def socket_path(self) -> str:
        return self._rpc.socket_path

    async def _check_models_path(self) -> None:
        path = self._unchecked_models_path
        if path is not None:
            await self._list(path)

    async def _list(self, path: Optional[str]) -> List[Dict[str, Any]]:
        params = {"models_path": path} if path else {}
        try:
            items = await self._rpc.call("list_models", params, timeout=120, idempotent=True)
        except InvalidPath as exc:
            served = (exc.data or {}).get("served") if isinstance(exc.data, dict) else None
            raise ModelsPathNotServed(
                f"models_path {path} is not served by oracd ({exc.message}). Unset {MODELS_PATH_ENV} / "
                f"models_path to use oracd's models, point it at a served dir, or add it to "
                f"llama.extra_models_dirs in oracd's config.", path or "", served) from None
        if path is not None and self._unchecked_models_path == path:
            self._unchecked_models_path = None
        return items

    # ------------------------------------------------------------------ old public interface
    async def list_models(self) -> List[Dict[str, Any]]:
        """GGUF models oracd serves: dicts with ``name``, ``size``, ``modified``, ``backend`` ("llama_cpp")
        and oracd's extras (``loaded``, ``path``, ``architecture``, ``quantization``...)."""
        models = await self._list(self._models_path)
        app_logger.info("Found %d models", len(models))
        return models

    async def generate(self, model: str, prompt: str, stream: bool = False, temperature: float = 0.7,
                       top_p: float = 0.7, top_k: int = 40, max_tokens: Optional[int] = None,
                       verbose: bool = False, timeout: int = 30) -> PromptResponse:
        """Generate a response to ``prompt`` with ``model`` (``.gguf`` optional) on oracd's warm server.

        ``max_tokens=None`` means oracd's default (512).  ``stream=True`` is accepted
        and returns the complete response, as the old client did; ``verbose=True`` logs the
        request and the answer.  Returns the program's ``orac.models.PromptResponse``
        (``model``/``prompt`` echo the arguments, ``elapsed_ms`` is measured here,
        ``usage`` holds oracd's token counts).
        """
        params = _generate_params(model, prompt, temperature, top_p, top_k, max_tokens, timeout)
        if self._unchecked_models_path is not None:
            await self._check_models_path()
        if verbose:
            logger.info("generate: model=%s temperature=%s top_p=%s top_k=%s max_tokens=%s timeout=%s stream=%s "
                        "prompt=%r", model, temperature, top_p, top_k, max_tokens, timeout, stream, prompt)
        _log_request(params)
        t0 = time.perf_counter()
        try:
            r = await self._rpc.call("generate", params, timeout=params["timeout"] + CLIENT_GRACE_S)
        except (OracError, CallTimeout) as exc:
            err = generate_error(exc, timeout)
            app_logger.error("Generation error: %s", err)
            raise err from None
        return _response_from(r, (time.perf_counter() - t0) * 1000.0, model, prompt, verbose, "generate")

    def generate_stream(self, model: str, prompt: str, temperature: float = 0.7, top_p: float = 0.7,
                        top_k: int = 40, max_tokens: Optional[int] = None, verbose: bool = False,
                        timeout: int = 30, system_prompt: Optional[str] = None) -> GenerateStream:
        """Stream a generation: ``async for text in client.generate_stream(model, prompt): ...``.

        Same parameters as ``generate()`` (minus ``stream``), plus ``system_prompt``.
        Yields the pieces of text as llama-server produces them (oracd's
        ``generate.chunk`` notifications; raw text, so a model's ``<think>`` block is
        included, while ``generate()`` strips it).  After the loop, ``stream.result``
        is oracd's result and ``stream.response`` the ``PromptResponse``.  Errors are
        raised from the loop, as ``generate()`` raises them (a blank prompt at once).

        Each stream has a connection of its own; leaving early (``break``,
        ``aclose()``, ``async with``, cancellation) closes it, and oracd then aborts
        the generation and frees the llama-server slot.
        """
        params = _generate_params(model, prompt, temperature, top_p, top_k, max_tokens, timeout)
        params["stream"] = True
        if system_prompt is not None:
            params["system_prompt"] = str(system_prompt)
            if "raw" in params:
                params["raw"] = False      # a system prompt needs the model's chat template
        _log_request(params)
        if verbose:
            logger.info("generate_stream: model=%s temperature=%s top_p=%s top_k=%s max_tokens=%s timeout=%s "
                        "prompt=%r", model, temperature, top_p, top_k, max_tokens, timeout, prompt)

        def map_error(exc: BaseException) -> BaseException:
            err = generate_error(exc, timeout)
            app_logger.error("Generation error: %s", err)
            return err

        def make_response(r: Dict[str, Any], elapsed_ms: float) -> Any:
            return _response_from(r, elapsed_ms, model, prompt, verbose, "generate_stream")

        before = self._check_models_path if self._unchecked_models_path is not None else None
        return GenerateStream(self._rpc, params, params["timeout"] + CLIENT_GRACE_S, before=before,
                              map_error=map_error, make_response=make_response)

    async def start_server(self, model: str, host: str = "127.0.0.1", port: int = 8080,
                           temperature: float = 0.7, top_p: float = 0.7,
                           top_k: int = 40) -> subprocess.Popen:
        """Have oracd start (and supervise) a separate llama-server for ``model`` on ``host:port``.

        Returns a ``ManagedServer`` (Popen's interface) once the server answers
        ``/health``.  oracd only binds loopback hosts unless its config allows
        more.  The warm server behind ``generate()`` is not touched.  The server
        wants the handle's ``api_key`` (``Authorization: Bearer``; ``handle.headers``)
        unless oracd's operator turned keys off (``llama.extra_servers_keyless``).
        """
        if self._unchecked_models_path is not None:
            await self._check_models_path()
        try:
            params = {"model": model, "host": host, "port": int(port), "temperature": float(temperature),
                      "top_p": float(top_p), "top_k": int(top_k)}
        except (TypeError, ValueError) as exc:
            raise Exception(f"{START_PREFIX}invalid parameter: {exc}") from None
        try:
            info = await self._rpc.call("start_server", params)
        except (ModelNotFound, InvalidPath) as exc:
            raise as_builtin(exc, FileNotFoundError) from None
        except OracError as exc:
            raise prefixed(exc, START_PREFIX) from None
        logger.info("oracd started llama-server pid %s for %s on %s:%s", info.get("pid"), model, host, port)
        return ManagedServer(info, self._rpc.socket_path)  # type: ignore[return-value]

    async def quantize_model(self, input_model: str, output_model: str, quantization_type: str = "q4_k") -> bool:
        """Quantize ``input_model`` into ``output_model`` (both in oracd's models dir) and return True.

        Overwrite decision: the old client ran llama-quantize, which silently
        replaced an existing output file, so this compat client passes
        ``overwrite=True`` and keeps that behaviour.  oracd still writes to a
        temporary file and renames it into place only on success, so a failed
        run never destroys the previous output.  (Call oracd's ``quantize_model``
        without ``overwrite`` to get its refusal, ``OutputExists``.)
        """
        if self._unchecked_models_path is not None:
            await self._check_models_path()
        params = {"input_model": input_model, "output_model": output_model,
                  "quantization_type": quantization_type, "overwrite": True}
        try:
            result = await self._rpc.call("quantize_model", params)
        except ModelNotFound as exc:
            raise as_builtin(exc, FileNotFoundError) from None
        except OracError as exc:
            raise prefixed(exc, QUANT_PREFIX) from None
        logger.info("quantized %s -> %s (%s)", input_model, (result or {}).get("path"), quantization_type)
        return bool((result or {}).get("ok", True))

    # ------------------------------------------------------------------ the old private helpers
    async def _ensure_server_running(self, model: Optional[str] = None, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Connect to oracd and return its ``status``; with ``model``, also make it the loaded model."""
        st = await self._rpc.call("status", timeout=30, idempotent=True)
        if model:
            name = model if model.endswith(".gguf") else model + ".gguf"
            child = st.get("child") or {}
            if child.get("model") != name or child.get("state") != "ready":
                await self._start_internal_server(model)
                st = await self._rpc.call("status", timeout=30, idempotent=True)
        return st

    async def _start_internal_server(self, model: Optional[str] = None, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Load ``model`` (default: oracd's default model) into the warm llama-server."""
        try:
            return await self._rpc.call("load_model", {"model": model}, idempotent=True)
        except (ModelNotFound, InvalidPath) as exc:
            raise as_builtin(exc, FileNotFoundError) from None
        except InvalidParams as exc:
            raise as_builtin(exc, ValueError) from None

    async def _stop_internal_server(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Unload the warm model (oracd keeps running; the next generate loads again)."""
        return await self._rpc.call("unload_model", {}, idempotent=True)

    # ------------------------------------------------------------------ lifetime
    async def aclose(self) -> None:
        """Close this client's connection(s) to oracd now; the client stays usable (it reconnects)."""
        await self._rpc.aclose()

    async def __aenter__(self) -> "LlamaCppClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<LlamaCppClient oracd={self._rpc.socket_path} models_path={self._models_path or '(oracd)'}>"
