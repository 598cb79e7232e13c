"""``oracctl load``, ``unload``, ``quantize`` and ``prewarm``: model operations, with progress on stderr.

Progress comes from oracd's notifications about the call (``load.progress``,
``quantize.progress``); ``--json`` prints only the result.
"""
from __future__ import annotations

import sys
from typing import Any, Dict

from oracd_protocol.names import CLIENT_GRACE_S, LOAD_PROGRESS, QUANTIZE_PROGRESS

from . import format as fmt
from .context import EXIT_OK, FOREVER, Ctx


def cmd_load(ctx: Ctx) -> int:
    a = ctx.args
    params: Dict[str, Any] = {}
    if a.model:
        params["model"] = a.model
    if a.timeout:
        params["timeout"] = a.timeout
    prog = fmt.Progress("load", ctx.err)
    seen = {"state": None, "printed_at": -1e9}

    def on_notify(method: str, p: Dict[str, Any]) -> None:
        if method != LOAD_PROGRESS or ctx.json:
            return
        elapsed = float(p.get("elapsed_ms") or 0) / 1000.0
        state = p.get("state")
        text = f"{p.get('model')}: {state}, {fmt.duration(elapsed)}"
        if prog.tty:
            prog.status(text + " ...")
        elif state != seen["state"] or elapsed - seen["printed_at"] >= 5:
            prog.status(text)
            seen["state"], seen["printed_at"] = state, elapsed

    if prog.tty and not ctx.json:
        prog.status(f"{a.model or 'the default model'} ...")
    try:
        r = ctx.call("load_model", params, timeout=(a.timeout or FOREVER) + CLIENT_GRACE_S, on_notify=on_notify)
    finally:
        prog.clear()
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    ctx.print(f"loaded {r.get('model')} in {fmt.ms(r.get('elapsed_ms'))} "
              f"(llama-server pid {r.get('pid')}, {r.get('state')})")
    return EXIT_OK


def cmd_unload(ctx: Ctx) -> int:
    params = {"timeout": ctx.args.timeout} if ctx.args.timeout else {}
    r = ctx.call("unload_model", params, timeout=(ctx.args.timeout or 600) + CLIENT_GRACE_S)
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    if r.get("unloaded"):
        ctx.print(f"unloaded {r['unloaded']} (llama-server {r.get('state')})")
    else:
        ctx.print(f"no model was loaded (llama-server {r.get('state')})")
    return EXIT_OK


def cmd_quantize(ctx: Ctx) -> int:
    a = ctx.args
    params: Dict[str, Any] = {"input_model": a.input, "output_model": a.output, "overwrite": bool(a.overwrite)}
    if a.type:
        params["quantization_type"] = a.type
    prog = fmt.Progress("quantize", ctx.err)

    def on_notify(method: str, p: Dict[str, Any]) -> None:
        if method != QUANTIZE_PROGRESS or ctx.json:
            return
        try:
            done, total = int(p.get("done")), int(p.get("total"))
        except (TypeError, ValueError):
            return
        prog.update(done, total, float(p.get("elapsed_ms") or 0) / 1000.0, str(p.get("tensor") or ""))

    try:
        r = ctx.call("quantize_model", params, timeout=FOREVER, on_notify=on_notify)
    finally:
        prog.end()
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    qtype = str(r.get("quantization_type") or a.type or "").upper()
    ctx.print(f"quantized {a.input} -> {r.get('name')} ({qtype}, {fmt.size(r.get('size'))}) "
              f"in {fmt.ms(r.get('elapsed_ms'))}")
    ctx.print(f"  {r.get('path')}")
    return EXIT_OK


def cmd_prewarm(ctx: Ctx) -> int:
    """``prewarm [MODEL] [--prefix T | --system T]``, or ``prewarm [MODEL] --clear``."""
    a = ctx.args
    if a.clear:
        r = ctx.call("clear_prewarm", {"model": a.model} if a.model else {}, timeout=30)
        if ctx.json:
            ctx.print_json(r)
        elif r.get("cleared"):
            ctx.print(f"cleared the prewarm target of {', '.join(r['cleared'])}")
        else:
            ctx.print(f"no prewarm target was set{' for ' + a.model if a.model else ''}")
        return EXIT_OK
    params: Dict[str, Any] = {"persist": a.persist}
    if a.model:
        params["model"] = a.model
    if a.prefix is not None:
        params["prefix"] = sys.stdin.read() if a.prefix == "-" else a.prefix
    if a.system is not None:
        params["system_prompt"] = a.system
    r = ctx.call("prewarm", params, timeout=600 + CLIENT_GRACE_S)
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    kept = "kept for later loads" if r.get("persisted") else "not kept"
    ctx.print(f"warmed {r.get('model')} ({r.get('how', 'done')}; {kept})")
    return EXIT_OK
