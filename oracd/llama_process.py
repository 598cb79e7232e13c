"""The llama-server OS process: command line, private endpoint, pidfile, group kill, orphans.

The state machine lives in ``supervisor.py``; this module only knows how to
build the command, where llama-server listens (a Unix socket in oracd's private
0700 runtime dir when the binary supports ``--host path.sock``, otherwise
127.0.0.1 on a free port with a random ``--api-key``), and how to find and stop
a llama-server left behind by an oracd that was SIGKILLed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Optional, Sequence

import psutil

from .config import Config
from .errors import ModelLoadFailed
from .llama_http import LlamaEndpoint

PIDFILE = "llama-server.pid"
SOCKNAME = "llama-server.sock"


def which(path: Path) -> Optional[str]:
    """The configured binary if executable; bare names are looked up on PATH."""
    p = str(path)
    return shutil.which(p) if "/" not in p else (p if os.access(p, os.X_OK) else None)


def find_binary(path: Path) -> str:
    found = which(path)
    if not found:
        raise ModelLoadFailed(f"llama-server binary not found or not executable: {path} "
                              f"(set llama.server_bin in the config)", {"reason": "no_binary"})
    return found


@lru_cache(maxsize=8)
def supports_unix_socket(binary: str) -> bool:
    """Does this llama-server accept ``--host path.sock``?  (Read once from its --help.)"""
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ".sock" in (out.stdout + out.stderr)


def prepare_runtime_dir(cfg: Config) -> Path:
    """Create the private runtime dir (0700) that holds llama-server's socket and pidfile."""
    d = cfg.runtime_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_endpoint(cfg: Config, binary: str) -> LlamaEndpoint:
    if supports_unix_socket(binary):
        path = cfg.runtime_dir / SOCKNAME
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return LlamaEndpoint(unix_path=str(path))
    return LlamaEndpoint(port=free_port(), api_key=secrets.token_urlsafe(24))


def build_command(cfg: Config, binary: str, model_path: Path, endpoint: LlamaEndpoint,
                  rpc_workers: Sequence[str] = ()) -> List[str]:
    """The llama-server command line for one model: [llama] options, overridden by its profile's.

    ``rpc_workers`` (chosen by the supervisor: the configured ones, or none in a
    local fallback) become ``--rpc``, placed before anything that names devices.
    With workers, n_gpu_layers 0 means "all layers": RPC workers are offload
    devices, and -ngl 0 would leave them idle.
    """
    l = cfg.llama
    prof = cfg.profile_for(model_path.name)

    def opt(name: str) -> Any:
        return cfg.option_for(model_path.name, name)

    ngl = opt("n_gpu_layers")
    if rpc_workers and ngl == 0:
        ngl = 999
    cmd = [binary, "-m", str(model_path), "--alias", model_path.name]
    if rpc_workers:
        cmd += ["--rpc", ",".join(rpc_workers)]
        if opt("tensor_split"):
            cmd += ["-ts", ",".join(f"{v:g}" for v in opt("tensor_split"))]
    cmd += ["-c", str(opt("ctx_size")), "-np", str(l.parallel), "-ngl", str(ngl),
            "--no-webui", "--log-colors", "off"]
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
    cmd += list(opt("extra_args"))
    return cmd


def child_env(endpoint: LlamaEndpoint) -> dict:
    """The child's environment: the API key goes by env var, never on the command line (ps shows argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))}
    env["GGML_NO_BACKTRACE"] = "1"   # an abort (e.g. a lost RPC worker) must not fork gdb into our logs
    if endpoint.api_key:
        env["LLAMA_API_KEY"] = endpoint.api_key
    return env


def write_pidfile(cfg: Config, pid: int) -> None:
    path = cfg.runtime_dir / PIDFILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def remove_pidfile(cfg: Config) -> None:
    try:
        (cfg.runtime_dir / PIDFILE).unlink()
    except FileNotFoundError:
        pass


def signal_group(pid: int, sig: int) -> None:
    """Signal the child's whole process group (it was started in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap_orphan(cfg: Config, binary_name: str, grace: float) -> Optional[int]:
    """Stop a llama-server left by a previous oracd (pidfile + matching command line).

    Returns the pid stopped, or None.  A pid that was reused by an unrelated
    process is left alone: we only kill it if its command line names our binary
    and our runtime dir.
    """
    path = cfg.runtime_dir / PIDFILE
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    stopped = None
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        joined = " ".join(cmdline)
        ours = bool(cmdline) and Path(cmdline[0]).name == binary_name and (
            str(cfg.runtime_dir) in joined or str(cfg.llama.models_dir) in joined)
        if ours:
            signal_group(pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except psutil.TimeoutExpired:
                signal_group(pid, signal.SIGKILL)
                proc.wait(5)
            stopped = pid
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    path.unlink(missing_ok=True)
    return stopped

