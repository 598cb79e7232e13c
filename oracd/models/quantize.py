"""llama-quantize as a supervised child: checked type, temp file, atomic rename, no leftovers.

The output is written to a hidden ``.<name>.<random>.part`` in the models dir
and renamed over the final name only after llama-quantize exits 0, so a reader
never sees a partial model and a failure (or a cancelled request) leaves
nothing behind.  The type is checked against llama-quantize's own list.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import anyio

from ..child import exits
from ..child.command import help_text
from ..child.failures import telling_line
from ..child.process import ManagedProcess, locate
from oracd_protocol.errors import InvalidParams, ModelNotFound, OutputExists, QuantizeFailed
from ..logs import get as get_logger
from .quota import MIN_ROOM, Ledger, QuantizeLimits, free_bytes, output_limit
from .store import ModelStore

log = get_logger("oracd.quantize")
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")   # "[  12/ 272] blk.0.attn_q.weight - ..."
_TYPE_LINE = re.compile(r"^\s*\d+\s+or\s+([A-Z0-9_]+)\s*:", re.M)


@lru_cache(maxsize=4)
def allowed_types(binary: str) -> Tuple[str, ...]:
    """The quantization types this llama-quantize build accepts (parsed from its --help)."""
    try:
        text = help_text(binary)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QuantizeFailed(f"Quantization error: cannot run {binary}: {exc}") from None
    types = tuple(_TYPE_LINE.findall(text))
    if not types:
        raise QuantizeFailed(f"Quantization error: could not read the type list from {binary} --help")
    return types


def find_quantize_bin(path: Path) -> str:
    found = locate([path])
    if not found:
        raise QuantizeFailed(f"Quantization error: llama-quantize not found or not executable: {path} "
                             f"(set llama.quantize_bin in the config)")
    return found


def with_file_size_limit(cmd: List[str], max_bytes: int) -> List[str]:
    """Run ``cmd`` under RLIMIT_FSIZE (no shell): writes past the limit fail like a full disk."""
    if max_bytes <= 0:
        return cmd
    code = ("import os, resource, signal, sys; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "   # write() fails with EFBIG instead of killing
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1]))); "
            "os.execv(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", code, str(max_bytes), *cmd]


async def quantize(store: ModelStore, quantize_bin: Path, input_model: str, output_model: str,
                   quantization_type: str, overwrite: bool, timeout: float,
                   progress: Optional[Callable[[int, int, str], Awaitable[None]]] = None,
                   max_output_bytes: int = 0, *, limits: Optional[QuantizeLimits] = None,
                   protected: Optional[Dict[str, str]] = None,
                   env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run llama-quantize input -> output with the given type; returns {ok, path, size, elapsed_ms}.

    ``protected``: model name -> why it may not be replaced (the loaded model, the default ...);
    ``limits``: the disk budget (``quota.py``); ``env``: the child's environment (an allow-list).
    """
    limits = limits or QuantizeLimits(max_output_bytes=max_output_bytes)
    binary = find_quantize_bin(quantize_bin)
    try:
        src = store.resolve(input_model).path     # resolved once: llama-quantize reads what was checked
    except ModelNotFound as exc:
        raise ModelNotFound(f"Input model not found: {exc.data['path']}", exc.data) from None
    dst = store.output_path(output_model)
    why = (protected or {}).get(dst.name)
    if why is not None:
        raise OutputExists(f"{dst.name} is {why}: quantize never replaces it (choose another output_model)",
                           {"path": str(dst), "reason": why.replace(" ", "_")})
    if dst.exists() and not dst.is_file():
        raise OutputExists(f"Output model exists and is not a regular file: {dst}", {"path": str(dst)})
    if dst.exists() and not overwrite:
        raise OutputExists(f"Output model already exists: {dst} (pass overwrite=true to replace it)",
                           {"path": str(dst)})
    if dst.resolve() == src:
        raise InvalidParams("output_model must differ from input_model")
    types = await anyio.to_thread.run_sync(allowed_types, binary)
    qtype = quantization_type.strip().upper()
    if qtype not in types:
        raise InvalidParams(f"unknown quantization_type {quantization_type!r}",
                            {"allowed": [t.lower() for t in types]})
    ledger = Ledger(store.primary)
    used = await anyio.to_thread.run_sync(ledger.used, (dst.name,))
    free = await anyio.to_thread.run_sync(free_bytes, store.primary)
    limit, binding = output_limit(limits, used, free)
    if binding and binding != "llama.quantize_max_output_bytes" and limit < MIN_ROOM:
        detail = f"quantize's outputs hold {used} bytes" if binding.endswith("total_bytes") else f"{free} bytes free"
        raise QuantizeFailed(f"Quantization error: no room for another model ({detail}; {binding})",
                             {"reason": "disk_budget", "setting": binding, "used_bytes": used, "free_bytes": free})
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    cmd = with_file_size_limit([binary, str(src), str(tmp), qtype], limit)
    t0 = time.monotonic()
    log.info("quantize start", input=str(src), output=str(dst), type=qtype)

    async def on_line(_stream: str, line: str) -> None:
        m = _TENSOR_LINE.match(line)
        if m and progress is not None:
            await progress(int(m.group(1)), int(m.group(2)), m.group(3))

    proc = await ManagedProcess.spawn(cmd, on_line=on_line, merge_stderr=True, tail=20, env=env)
    try:
        with anyio.fail_after(timeout):
            rc = await proc.wait_and_drain()
        if rc != 0:
            budget = f" (the output may not exceed {limit} bytes: {binding})" if binding else ""
            raise QuantizeFailed(f"Quantization error: {exits.describe(rc, 'llama-quantize')}: "
                                 f"{telling_line(list(proc.tail))}{budget}",
                                 {**exits.exit_info(rc), "stderr_tail": list(proc.tail),
                                  **({"limit_bytes": limit, "setting": binding} if binding else {})})
        os.replace(tmp, dst)
        await anyio.to_thread.run_sync(ledger.add, dst.name)
    except TimeoutError:
        raise QuantizeFailed(f"Quantization error: timed out after {timeout:.0f}s",
                             {"stderr_tail": list(proc.tail)}) from None
    finally:
        # cancelled (client gone) or timed out: wait_and_drain() killed the group and reaped it
        tmp.unlink(missing_ok=True)
    size = dst.stat().st_size
    elapsed = (time.monotonic() - t0) * 1000
    log.info("quantize done", output=str(dst), size=size, ms=round(elapsed, 1))
    return {"ok": True, "path": str(dst), "name": dst.name, "size": size,
            "quantization_type": qtype.lower(), "elapsed_ms": round(elapsed, 3)}
