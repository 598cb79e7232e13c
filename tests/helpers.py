"""Test helpers: a real oracd process with a throwaway config, socket RPC calls, tiny GGUF files."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from oracd.workers.hello import hello
from oracd_protocol.blocking import BlockingClient
from oracd_protocol.errors import OracError

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"
MODELS = REPO / "models"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"     # a second real architecture (sliding-window attention): setup --test


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, server: Dict[str, Any], llama: Dict[str, Any],
                 http: Optional[Dict[str, Any]] = None) -> Path:
    lines = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in server.items()]
    lines += ["", "[llama]"] + [f"{k} = {toml_value(v)}" for k, v in llama.items()]
    if http:
        lines += ["", "[http]"] + [f"{k} = {toml_value(v)}" for k, v in http.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def link_model(models_dir: Path, name: str = SMOL) -> Path:
    """Hard-link (or copy) the provisioned model into a test's own models dir."""
    src = MODELS / name
    assert src.exists(), f"{src} missing: run `python -m oracd.provision` first"
    dst = models_dir / name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def write_tiny_f32(path: Path, n_embd: int = 64, n_layer: int = 1, n_vocab: int = 64, n_ff: int = 128) -> Path:
    """A tiny llama-architecture F32 GGUF (about 200 kB) for fast quantize tests."""
    import gguf
    n_head = 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_block_count(n_layer)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    rand("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    rand("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for n in ("q", "k", "v", "output"):
            rand(f"blk.{i}.attn_{n}.weight", n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        rand(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        rand(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_unknown_architecture(path: Path) -> Path:
    """A well-formed GGUF (header and all its tensor data) of an architecture llama.cpp does not know:
    it passes every check oracd makes cheaply, and fails inside llama-server."""
    import gguf
    w = gguf.GGUFWriter(str(path), "nonexistent")
    w.add_name("unknown-arch")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


STAND_IN = REPO / "tests" / "fake" / "llama_server.py"


def stand_in_script(state: Path, fault: str, *options: str) -> Path:
    """An executable ``llama-server`` in ``state`` that runs the scripted stand-in in mode ``fault`` (with its
    extra ``options``: ``--gated``, ``--crash-after N``); ``state`` is also the stand-in's ``--state`` dir."""
    wrapper = state / "llama-server"
    extra = "".join(f" {o}" for o in options)
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {STAND_IN} --fault {fault}{extra} --state {state} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def gone(pid: int, timeout: float = 15) -> bool:
    """True once ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def log_events(o: "Oracd", event: str) -> List[Dict[str, Any]]:
    """The JSON records in oracd's orac.log whose ``event`` is ``event``."""
    out = []
    for line in o.log_file.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == event:
            out.append(rec)
    return out


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    """Poll ``pred()`` until it returns something truthy (returned); fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


#: oracd's errors as the tests see them: the shared table's classes (``.code``, ``.message``, ``.data``).
RPCError = OracError


class Conn(BlockingClient):
    """The protocol's blocking client with params as keywords: ``c.call("generate", prompt="hi")``.

    ``recv()``/``recv_line()``/``send_raw()`` for raw protocol tests; ``.sock`` is the socket.
    """

    def request(self, method: str, **params: Any) -> Dict[str, Any]:    # type: ignore[override]
        return super().request(method, params or None)

    def call(self, method: str, **params: Any) -> Any:                  # type: ignore[override]
        return super().call(method, params or None)


class Oracd:
    """A real oracd process (python -m oracd) on a throwaway config in a short temp dir."""

    def __init__(self, root: Optional[Path] = None, server: Optional[Dict[str, Any]] = None,
                 llama: Optional[Dict[str, Any]] = None, models: List[str] = (SMOL,),
                 env: Optional[Dict[str, str]] = None, bootstrap: str = "", nofile: Any = None,
                 http: Optional[Dict[str, Any]] = None):
        """``bootstrap``: Python run in the oracd process before oracd's main (a fault test's monkeypatch:
        nothing test-only lives in the daemon).  ``nofile``: RLIMIT_NOFILE for oracd, soft and hard (an int)
        or ``(soft, hard)``.  ``http``: an ``[http]`` section (the HTTP APIs)."""
        # short path: Unix socket paths must stay under ~104 bytes
        self.root = root or Path(tempfile.mkdtemp(prefix="oracd-t-", dir="/tmp"))
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(exist_ok=True)
        for m in models:
            if not (self.models_dir / m).exists():
                link_model(self.models_dir, m)
        self.socket = self.root / "run" / "oracd.sock"
        self.log_dir = self.root / "logs"
        srv = {"socket": str(self.socket), "log_dir": str(self.log_dir), "shutdown_grace": 10, "socket_group": ""}
        srv.update(server or {})
        lla = {"server_bin": str(BIN / "llama-server"), "quantize_bin": str(BIN / "llama-quantize"),
               "models_dir": str(self.models_dir), "default_model": SMOL, "preload": True,
               "kv_cache_dir": str(self.root / "kv"),
               "ctx_size": 1024, "parallel": 2, "health_interval": 0.5, "hang_timeout": 6,
               # one thread: ggml's spinning thread pool slows to a crawl when the 2 cores are shared
               "threads": 1,
               "restart_backoff_initial": 0.2}
        lla.update(llama or {})
        self.config = write_config(self.root / "oracd.toml", srv, lla, http)
        # the first [http] listen address as a base URL (tests of the HTTP APIs)
        first = (http or {}).get("listen", [None])[0]
        self.http_url = f"http://{first}" if first and not first.startswith("unix:") else None
        self.env = dict(os.environ, **(env or {}))
        self.bootstrap = bootstrap
        self.nofile = nofile
        self.proc: Optional[subprocess.Popen] = None
        self.stderr_path = self.root / "stderr.log"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "orac.log"

    def start(self, wait: bool = True, timeout: float = 90, wrapper: List[str] = ()) -> "Oracd":
        """Run oracd (optionally under a wrapper command such as systemd-socket-activate)."""
        self._stderr = open(self.stderr_path, "ab")
        if self.bootstrap:
            code = f"{self.bootstrap}\nimport sys\nfrom oracd.__main__ import main\nsys.exit(main(sys.argv[1:]))"
            argv = [sys.executable, "-c", code, "--config", str(self.config)]
        else:
            argv = [sys.executable, "-m", "oracd", "--config", str(self.config)]
        limit = self.nofile

        def preexec() -> None:
            if limit is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, limit if isinstance(limit, tuple) else (limit, limit))

        self.proc = subprocess.Popen([*wrapper, *argv], cwd=str(REPO), env=self.env, stdout=self._stderr,
                                     stderr=self._stderr, preexec_fn=preexec if limit is not None else None)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"oracd exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            try:
                with Conn(self.socket, timeout=5) as c:
                    c.call("status")
                    return
            except OSError:              # not listening yet (OracdUnavailable), or closed on us (ConnectionLost)
                time.sleep(0.05)
        raise TimeoutError(f"oracd not ready after {timeout}s:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def conn(self, timeout: float = 60) -> Conn:
        return Conn(self.socket, timeout)

    def call(self, method: str, **params: Any) -> Any:
        with self.conn() as c:
            return c.call(method, **params)

    def request(self, method: str, **params: Any) -> Any:
        with self.conn() as c:
            return c.request(method, **params)

    def child_pid(self) -> Optional[int]:
        return self.call("status")["child"]["pid"]

    def crash_restart(self, timeout: float = 120) -> Dict[str, Any]:
        """SIGKILL llama-server and return the restarted one's status once it is ready (a crash restart)."""
        pid = self.call("status")["child"]["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> Optional[Dict[str, Any]]:
            st = self.call("status")["child"]
            return st if st["state"] == "ready" and st["pid"] not in (pid, None) else None
        return wait_for(restarted, timeout, "the restarted llama-server to be ready")

    def wait_child_state(self, state: str, timeout: float = 60) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.call("status")["child"]
            if st["state"] == state:
                return st
            time.sleep(0.05)
        raise TimeoutError(f"child never reached {state!r}; last status {st}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._stderr.close()
        return rc

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Oracd":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def mount_tmpfs(directory: Path, size: str = "64k") -> None:
    """A small tmpfs on ``directory`` (a disk that fills up); pytest.skip, loudly, only where mounting is
    impossible (not root, no CAP_SYS_ADMIN): detected by trying.  Unmount with ``umount_tmpfs``."""
    import pytest
    directory.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
                         capture_output=True, text=True)
    if res.returncode != 0:      # in CI (root, CI=true) a fault test never skips: it fails, naming why
        give_up = pytest.fail if os.environ.get("CI") else pytest.skip
        give_up(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); "
                "this fault test needs root (CI runs as root)")


def umount_tmpfs(directory: Path) -> None:
    """Lazy unmount: oracd (or its log file) may still hold it open."""
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system under ``directory`` to the last byte; the filler file, to delete to free it."""
    filler = directory / "filler"
    with open(filler, "ab", buffering=0) as fh:
        while True:
            try:
                fh.write(b"\0" * 4096)
            except OSError:
                break
        while True:
            try:
                fh.write(b"\0")
            except OSError:
                break
    return filler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcWorker:
    """One real rpc-server on 127.0.0.1, in its own process group."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "rpc-server"), "-H", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not hello(self.address, 1).answers:
            assert self.proc.poll() is None, f"rpc-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "rpc-server never answered HELLO"
            time.sleep(0.05)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGCONT)
            self.kill(signal.SIGKILL)
