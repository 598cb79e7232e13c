"""``generate``: merge the request with the model's profile, then ask llama-server, retrying once after a crash.

Two prompt formats.  ``chat`` (the default): the prompt is the user message and
llama-server applies the model's chat template (``/v1/chat/completions``).
``raw``: the prompt goes to ``/completion`` as it is, with the caller's own
template.  ``raw = "auto"`` sends a prompt raw when it already carries chat-template
markers (``oracd_protocol.schemas.TEMPLATE_MARKERS``): an app that formats ChatML itself is not wrapped twice.
A ``prefill`` is text the answer must begin with: the assistant message llama-server
continues (chat), or text appended to the prompt (raw).  Either way ``response``
includes it (``prefill_included`` says so).

Merging, per parameter: what the request sends wins, then the model's profile,
then the built-in default (``build_body``, pure).  How the answer is fetched
depends on its length (``fetch``): short generations in one response (no
per-token wake-ups of oracd: the fastest path), long ones and ``stream=true``
streamed, because llama-server stops a streamed generation the moment its
connection closes, while a cancelled one-response generation is dropped only
after its result queue has been quiet for a second.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import aiohttp
import anyio

from ..child import exits
from ..child.door import ChildDoor
from ..child.failures import worker_lost
from ..child.http import LlamaHTTPError
from ..config import Config, Profile
from ..config.sampling import bounds
from .constraints import check_texts, request_constraint
from oracd_protocol.errors import GenerationFailed, InvalidParams
from ..logs import get as get_logger
from oracd_protocol.schemas import COMMAND_SCHEMA, carries_template
from .jsongrammar import try_compile


log = get_logger("oracd.generate")
_THINK = re.compile(r"<think>.*?(</think>\s*|$)", re.S)

OnDelta = Optional[Callable[[str], Awaitable[None]]]


def strip_think(text: str) -> str:
    """Drop <think>...</think> reasoning blocks (an unterminated one runs to the end)."""
    return _THINK.sub("", text).strip() if "<think>" in text else text


def pick(sent: Any, profile: Any, default: Any) -> Any:
    """What a request sends wins; then the model's profile; then the built-in default."""
    if sent is not None:
        return sent
    return profile if profile is not None else default


def check_range(name: str, value: float) -> None:
    """``value`` within the sampling table's range for ``name`` (``config/sampling.py``)."""
    lo, hi = bounds(name)
    if not lo <= value <= hi:
        raise InvalidParams(f"{name} must be between {lo:g} and {hi:g}", f"{name}: got {value!r}")


@dataclass
class Sent:
    """What the request itself sent (None: not sent)."""
    prompt: str
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_tokens: Optional[int] = None
    system_prompt: Optional[str] = None
    stop: Optional[List[str]] = None
    grammar: Optional[str] = None
    json_schema: Optional[Any] = None
    raw: Optional[Any] = None            # True, False, "auto" (None: the profile's prompt_format)
    prefill: Optional[str] = None
    compact_json: Optional[bool] = None  # None: the profile's; else on for the built-in "command" schema
    fast_forward: Optional[bool] = None  # None: the profile's; else, for "command", is the child batch-invariant


@dataclass(frozen=True)
class JsonOutput:
    """A json_schema answer oracd constrains itself: the schema, and whether to fast-forward it."""
    schema: Dict[str, Any]
    fast_forward: Optional[bool]        # None: the default, decided by the child that answers (``use_fast_forward``)

    def use_fast_forward(self, batch_invariant: Optional[bool]) -> bool:
        """Fast-forward, as set, or by default where the child answering was started batch-invariant
        (``Config.batch_invariant_for``, ``child/command.py``): there it gives compact sampling's object
        (measured: docs/operations.md, "Compact output and fast-forward"); elsewhere llama.cpp's numerics
        for a batch of forced tokens move near ties (71-84% of the corpus was the same)."""
        return self.fast_forward if self.fast_forward is not None else bool(batch_invariant)


def json_output(sent: Sent, prof: Profile, schema: Optional[Dict[str, Any]]) -> Optional[JsonOutput]:
    """Does this schema answer go compact (oracd's own grammar), and fast-forwarded (None: for the built-in
    ``command`` schema when neither request nor profile says, the child decides: ``use_fast_forward``)?
    None: as it was (json_schema to llama-server).  Pure: the grammar is ``jsongrammar.compile_compact``'s."""
    if schema is None:
        return None
    builtin = schema == COMMAND_SCHEMA
    ff = pick(sent.fast_forward, prof.fast_forward, None if builtin else False)
    if not pick(sent.compact_json, prof.compact_json, builtin) and not ff:
        return None
    # choice: with a prefill or stop strings the answer is not the schema's object alone: no fast-forward
    stop = sent.stop if sent.stop is not None else prof.stop
    return JsonOutput(schema, ff if not sent.prefill and not stop else False)


def is_raw(sent: Sent, prof: Profile) -> bool:
    """Does this prompt go to /completion as it is?"""
    raw = sent.raw if sent.raw is not None else prof.prompt_format == "raw"
    if raw == "auto":
        return carries_template(sent.prompt)
    if not isinstance(raw, bool):
        raise InvalidParams('raw must be true, false or "auto"', f"raw: got {raw!r}")
    return raw


def build_body(sent: Sent, prof: Profile, cfg: Config) -> Dict[str, Any]:
    """The body for llama-server (``build_request`` without the JSON output)."""
    return build_request(sent, prof, cfg)[0]


def build_request(sent: Sent, prof: Profile, cfg: Config) -> Tuple[Dict[str, Any], Optional[JsonOutput]]:
    """The body for llama-server (chat messages, or a raw ``prompt`` for /completion): request > profile >
    default; and, for a json_schema oracd compiles itself, how (``json_output``).  Raises InvalidParams."""
    temperature = pick(sent.temperature, prof.temperature, 0.7)
    top_p = pick(sent.top_p, prof.top_p, 0.7)
    top_k = pick(sent.top_k, prof.top_k, 40)
    max_tokens = pick(sent.max_tokens, prof.max_tokens, cfg.llama.default_max_tokens)
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                        ("max_tokens", max_tokens)):
        check_range(name, value)
    if sent.prefill is not None and not sent.prefill:
        raise InvalidParams("prefill must not be empty (leave it out instead)", "prefill")
    # a request sends a built-in name or the constraint inline; files are a profile setting (constraints.py)
    check_texts((("prompt", sent.prompt), ("system_prompt", sent.system_prompt), ("prefill", sent.prefill),
                 ("stop", sent.stop)))
    grammar, json_schema = request_constraint(sent.grammar, sent.json_schema, cfg.server.max_grammar_bytes)
    if grammar is None and json_schema is None and (prof.grammar or prof.json_schema):
        grammar, json_schema = prof.grammar, prof.json_schema
    body: Dict[str, Any] = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "cache_prompt": True}
    if is_raw(sent, prof):
        if sent.system_prompt is not None:
            raise InvalidParams("system_prompt does not apply to a raw prompt: it carries its own template",
                                "system_prompt")
        body.update(prompt=sent.prompt + (sent.prefill or ""), n_predict=max_tokens)
    else:
        messages = []
        system = sent.system_prompt if sent.system_prompt is not None else prof.effective_system_prompt()
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": sent.prompt})
        if sent.prefill:
            messages.append({"role": "assistant", "content": sent.prefill})
        body.update(messages=messages, max_tokens=max_tokens)
    stop = sent.stop if sent.stop is not None else (list(prof.stop) if prof.stop else None)
    if stop:
        body["stop"] = stop
    out = json_output(sent, prof, json_schema)
    compact = try_compile(json_schema) if out is not None else None
    if compact is None:
        out = None                      # outside the compact subset: llama-server converts the schema itself
    else:
        grammar, json_schema = compact, None
    if grammar is not None:
        body["grammar"] = grammar
    if json_schema is not None:
        body["json_schema"] = json_schema
    if not prof.think:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    return body, out


async def _ask(http: Any, body: Dict[str, Any], cfg: Config, on_delta: OnDelta) -> Dict[str, Any]:
    """One request to llama-server: chat or raw, in one response or streamed (see the module docstring)."""
    raw = "prompt" in body
    n = body["n_predict"] if raw else body["max_tokens"]
    if on_delta is None and n <= cfg.llama.stream_above_tokens:
        return await (http.completion(body) if raw else http.chat(body))
    return await (http.completion_stream(body, on_delta) if raw else http.chat_stream(body, on_delta))


# given the child (``child.http``: its LlamaHTTP) and fetch's chunk relay (None: not streamed), ask
# llama-server: the HTTP APIs' full message lists and tool calls, or fast-forward's several requests
Ask = Callable[[Any, OnDelta], Awaitable[Any]]


async def fetch(door: ChildDoor, path: Path, body: Dict[str, Any], cfg: Config,
                on_delta: OnDelta = None, ask: Optional[Ask] = None) -> Any:
    """POST the chat completion; if llama-server died under us, retry once on the restarted one.

    A generation has no side effects, so one transparent retry after a crash, or
    after the 5xx answer that showed the child is wedged (``child/wedge.py``), is
    safe; a second failure is GenerationFailed.  Not retried: a generation cut
    off by a lost RPC worker (the next llama-server needs the workers again).
    Not retried either: a stream that has already sent text to its client (the retry
    would send the answer again from its start).  The caller's deadline bounds all of it.
    ``ask`` replaces the one request with ``body`` (``_ask``) with the caller's own: the HTTP APIs'
    (full message lists, tool calls, their own streaming) or fast-forward's several requests; it gets
    the relay for its chunks, and is retried the same way.
    """
    streamed = 0

    async def relay(text: str) -> None:
        nonlocal streamed
        streamed += 1
        await on_delta(text)          # type: ignore[misc]

    for attempt in (1, 2):
        async with door.use(path.name, path) as child:
            try:
                relayed = relay if on_delta is not None else None
                data = await (ask(child, relayed) if ask is not None else _ask(child.http, body, cfg, relayed))
                door.generation_result(child, True)
                return data
            except LlamaHTTPError as exc:
                if exc.status == 400:
                    raise InvalidParams(f"llama-server rejected the request: {exc.message}") from None
                if exc.status < 500 or not door.generation_result(child, False):
                    raise GenerationFailed(f"llama-server error {exc.status}: {exc.message}") from None
                failure = f"llama-server is wedged (error {exc.status}: {exc.message}); it is being restarted"
            except (aiohttp.ClientError, OSError) as exc:
                # a killed child drops its connections a moment before it is a zombie: give the exit that
                # moment, so a crash is never counted as a wedge (which would mislabel the restart)
                with anyio.move_on_after(0.5):
                    await child.exited.wait()
                door.generation_result(child, False)
                failure = f"lost connection to llama-server ({type(exc).__name__})"
        with anyio.move_on_after(cfg.llama.health_timeout + cfg.llama.stop_grace):
            await child.exited.wait()     # let the supervisor see the exit (or kill it: wedged) before we ask again
        if child.returncode is not None:  # name what happened to it: "llama-server killed (SIGKILL)"
            failure = f"{failure}: {exits.describe(child.returncode)}"
        if streamed:
            raise GenerationFailed(f"{failure}, after {streamed} chunks of the answer were streamed; not retried "
                                   "(a retry would repeat them)",
                                   {"retryable": True, "reason": "stream_interrupted", "chunks_sent": streamed,
                                    **exits.exit_info(child.returncode)})
        if attempt == 2:
            raise GenerationFailed(f"{failure}, twice; giving up",
                                   {"retryable": True, "reason": child.killed_for or "crash",
                                    **exits.exit_info(child.returncode)})
        if child.rpc_workers and (child.killed_for == "rpc_worker_lost" or worker_lost(child.tail)):
            raise GenerationFailed(
                "an RPC worker was lost during the generation; llama-server aborted and is being "
                "restarted" + (" (without the workers if they stay down: rpc_fallback_local)"
                               if cfg.llama.rpc_fallback_local else ""),
                {"reason": "rpc_worker_lost", "workers": list(child.rpc_workers), "retryable": True})
        log.warning("generation failed, retrying once after restart", error=failure, pid=child.pid)
    raise AssertionError("unreachable")  # pragma: no cover
