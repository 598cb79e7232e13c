"""``oracctl generate``: one reply, plain or streamed (``--stream`` prints ``generate.chunk`` text as it comes)."""
from __future__ import annotations

import sys
from typing import Any, Dict

from oracd_protocol.names import CLIENT_GRACE_S, GENERATE_CHUNK

from . import format as fmt
from .context import EXIT_OK, Ctx


def _stats(r: Dict[str, Any]) -> str:
    usage = r.get("usage") or {}
    n = int(usage.get("completion_tokens") or 0)
    elapsed = r.get("elapsed_ms")
    parts = [f"{fmt.plural(n, 'token')}, {fmt.ms(elapsed)}"]
    if isinstance(elapsed, (int, float)) and elapsed > 0 and n:
        parts.append(f"{n / (elapsed / 1000.0):.1f} tokens/s")
    parts.append(f"prompt {fmt.plural(int(usage.get('prompt_tokens') or 0), 'token')}")
    if r.get("finish_reason"):
        parts.append(f"finish {r['finish_reason']}")
    if r.get("model"):
        parts.append(str(r["model"]))
    return ", ".join(parts)


def cmd_generate(ctx: Ctx) -> int:
    a = ctx.args
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    params: Dict[str, Any] = {"prompt": prompt, "timeout": a.timeout}
    if a.model:
        params["model"] = a.model
    for key, value in (("max_tokens", a.max_tokens), ("temperature", a.temperature), ("top_p", a.top_p),
                       ("top_k", a.top_k), ("system_prompt", a.system)):
        if value is not None:
            params[key] = value
    if a.stop:
        params["stop"] = a.stop

    def show_chunk(method: str, p: Dict[str, Any]) -> None:
        if method != GENERATE_CHUNK:
            return
        text = p.get("text")
        if not isinstance(text, str) or not text:
            return
        if ctx.json:
            ctx.print_json({"text": text}, compact=True)
            ctx.out.flush()
        else:
            ctx.write(text, flush=True)

    if a.stream:
        params["stream"] = True
    on_notify = show_chunk if a.stream else None
    r = ctx.call("generate", params, timeout=a.timeout + CLIENT_GRACE_S, on_notify=on_notify)
    if ctx.json:
        ctx.print_json(r, compact=a.stream)
        return EXIT_OK
    if a.stream:
        if not ctx.out_at_line_start:
            ctx.write("\n")
    else:
        ctx.print(str(r.get("response", "")))
    ctx.out.flush()
    if not a.quiet:
        ctx.note(_stats(r))
    return EXIT_OK
