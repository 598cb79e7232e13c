"""How llama-server is started: its binary, command line, private endpoint and environment.

Where it listens: a Unix socket in oracd's private 0700 runtime dir when the
binary supports ``--host path.sock``, otherwise 127.0.0.1 on a free port with a
random API key passed by environment (``ps`` shows argv, not the environment).
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import anyio

from ..config import Config
from oracd_protocol.errors import ModelLoadFailed
from .http import LlamaEndpoint
from .process import locate

SOCKNAME = "llama-server.sock"


def find_binary(path: Path) -> str:
    found = locate([path])
    if not found:
        raise ModelLoadFailed(f"llama-server binary not found or not executable: {path} "
                              f"(set llama.server_bin in the config)", {"reason": "no_binary"})
    return found



HELP_TIMEOUT = 30.0      # seconds: a first --help on a Jetson pays for CUDA init


def help_text(binary: str) -> str:
    """What a llama.cpp tool prints for ``--help`` (stdout and stderr), run with the children's environment:
    what a build supports is read from there.  Blocking (a process run): call it from a worker thread.
    Raises OSError or subprocess.TimeoutExpired when the tool cannot be run."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=HELP_TIMEOUT, env=child_env())
    return out.stdout + out.stderr


@lru_cache(maxsize=8)
def _help_once(binary: str) -> str:
    try:
        return help_text(binary)
    except (OSError, subprocess.TimeoutExpired):
        return ""


@lru_cache(maxsize=8)
def supports_unix_socket(binary: str) -> bool:
    """Does this llama-server accept ``--host path.sock``?  (Read once from its --help.)

    Blocking (a process run): call it from a worker thread (``make_endpoint`` does), never on the loop.
    """
    return ".sock" in _help_once(binary)


#: What makes a CPU llama-server batch-invariant: a token's logits do not depend on how many tokens were
#: evaluated with it (a prompt in one batch, or token by token as they are sampled).  On by default, the
#: CPU kernels are not: flash attention splits the KV cache across threads for one token but tiles a batch;
#: the repacked Q4_K/Q4_0 weights and the tiled K-quant matmul take another kernel from 4 or 8 rows up; and
#: llamafile's sgemm (from 2 rows) is compiled out of oracd's own builds (provision/flavors.py).  Measured
#: (docs/operations.md, "Batch-invariant answers"): without these, fast-forward and compact sampling, or one
#: request asked twice with other prompts cached in between, part on near ties for 15-25% of commands.
BATCH_INVARIANT_ARGS = ("--flash-attn", "off", "--no-repack")
BATCH_INVARIANT_ENV = {"GGML_CPU_TILED_MM": "0"}


def batch_invariant_args(cfg: Config, binary: str, model: str) -> Optional[Sequence[str]]:
    """The flags to add for a batch-invariant child, () when not wanted, None when wanted but this build lacks
    them (older than ``--no-repack`` / ``--flash-attn on|off|auto``: passing them would fail the start).
    Blocking (--help, once per binary): call it from a worker thread."""
    if not cfg.batch_invariant_for(model):
        return ()
    text = _help_once(binary)
    return BATCH_INVARIANT_ARGS if "--no-repack" in text and "on|off|auto" in text else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def make_endpoint(cfg: Config, binary: str) -> LlamaEndpoint:
    """Where the warm server will listen.  The --help probe runs in a thread: on a Jetson a first
    llama-server --help takes seconds (CUDA init), and the event loop answers status meanwhile."""
    if await anyio.to_thread.run_sync(supports_unix_socket, binary):
        path = cfg.runtime_dir / SOCKNAME
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return LlamaEndpoint(unix_path=str(path))
    return LlamaEndpoint(port=free_port(), api_key=secrets.token_urlsafe(24))


def build_command(cfg: Config, binary: str, model_path: Path, endpoint: LlamaEndpoint,
                  rpc_workers: Sequence[str] = (), slot_save_path: Optional[Path] = None,
                  ctx_size: Optional[int] = None, swa_full: bool = False, *,
                  name: Optional[str] = None, invariant: Sequence[str] = ()) -> List[str]:
    """The llama-server command line for one model: [llama] options, overridden by its profile's.

    ``model_path`` is the resolved file (``ModelFile.path``: no link left to follow, see store.py);
    ``name`` is the model's name in the models dir (--alias, profile): a link's own name, not its target's.

    ``rpc_workers`` (chosen by the supervisor: the configured ones, or none in a
    local fallback) become ``--rpc``, placed before anything that names devices.
    With workers, n_gpu_layers 0 means "all layers": RPC workers are offload
    devices, and -ngl 0 would leave them idle.  ``ctx_size`` (from ``fit_ctx``)
    replaces the configured context.  ``swa_full`` (from ``swa.plan``): sliding-window layers keep the
    whole context, so a restored slot holds.  ``invariant`` (``batch_invariant_args``): flags for a
    batch-invariant child, before ``extra_args`` (which may override them).
    """
    l = cfg.llama
    model = name or model_path.name
    prof = cfg.profile_for(model)

    def opt(key: str) -> Any:
        return cfg.option_for(model, key)

    ngl = opt("n_gpu_layers")
    if rpc_workers and ngl == 0:
        ngl = 999
    cmd = [binary, "-m", str(model_path), "--alias", model]
    if rpc_workers:
        cmd += ["--rpc", ",".join(rpc_workers)]
        if opt("tensor_split"):
            cmd += ["-ts", ",".join(f"{v:g}" for v in opt("tensor_split"))]
    cmd += ["-c", str(opt("ctx_size") if ctx_size is None else ctx_size), "-np", str(l.parallel), "-ngl", str(ngl),
            "--cache-ram", str(opt("cache_ram_mb")), "--metrics", "--no-webui", "--log-colors", "off"]
    if endpoint.unix_path:
        cmd += ["--host", endpoint.unix_path]
    else:
        cmd += ["--host", "127.0.0.1", "--port", str(endpoint.port)]
    if opt("threads"):
        cmd += ["-t", str(opt("threads"))]
    if opt("batch_size"):
        cmd += ["-b", str(opt("batch_size"))]
    if opt("ubatch_size"):
        cmd += ["-ub", str(opt("ubatch_size"))]
    template = prof.chat_template if prof is not None else None
    if template:
        cmd += ["--chat-template-file", template] if "/" in template else ["--chat-template", template]
    if slot_save_path is not None:
        cmd += ["--slot-save-path", str(slot_save_path)]
    cmd += list(invariant)
    extra = list(opt("extra_args"))
    if swa_full and "--swa-full" not in extra:
        cmd.append("--swa-full")
    return cmd + extra


#: what a child inherits from oracd's environment, by exact name ...
ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
#: ... and by prefix: locale, GPU runtimes (CUDA, Jetson, ROCm, Vulkan, SYCL) and thread pools
ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "GGML_", "HIP_", "ROCR_", "HSA_", "VK_", "OMP_", "GOMP_", "KMP_",
                "OPENBLAS_", "MKL_", "SYCL_", "ONEAPI_", "ZE_")


def env_allowed(name: str, extra: Sequence[str] = ()) -> bool:
    """Is ``name`` passed on to a child?  ``extra`` (``llama.child_env``): more names, ``PREFIX_*`` for prefixes."""
    if name in ENV_NAMES or name.startswith(ENV_PREFIXES):
        return True
    return any(name == e or (e.endswith("*") and name.startswith(e[:-1])) for e in extra)


def child_env(endpoint: Optional[LlamaEndpoint] = None, extra: Sequence[str] = (),
              batch_invariant: bool = False) -> Dict[str, str]:
    """The environment of every child (warm and extra llama-servers, llama-quantize, --help probes).

    An allow-list, not oracd's whole environment: a secret in the unit's environment (a token for some
    other part of the box) must not reach a process that serves HTTP.  LLAMA_ARG_* never passes (it would
    override our command line), nor any API key but the one we set.  The API key goes by env var, never on
    the command line (ps shows argv).  ``batch_invariant``: the warm child's ``BATCH_INVARIANT_ENV`` too.
    """
    env = {k: v for k, v in os.environ.items() if env_allowed(k, extra)
           and not k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
    if batch_invariant:
        env.update(BATCH_INVARIANT_ENV)
    env["GGML_NO_BACKTRACE"] = "1"   # an abort (e.g. a lost RPC worker) must not fork gdb into our logs
    if endpoint is not None and endpoint.api_key:
        env["LLAMA_API_KEY"] = endpoint.api_key
    return env
