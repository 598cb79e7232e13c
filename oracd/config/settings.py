"""oracd's configuration: one immutable object built once from TOML at startup.

Why fail fast: a daemon that starts with a typo in its config runs for months
doing the wrong thing.  Unknown keys and bad values raise ``ConfigError`` naming
the key (``llama.ctx_size: expected an integer >= 0, got 'big'``).  Relative
paths are resolved against the config file's directory, so a dev config can
point inside the checkout and a system config at absolute paths.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .profiles import Profile, ProfileError, load_profiles_file, parse_profiles
from .toml import tomllib
from .values import address_is_local, http_address, listen_address, rpc_workers as check_rpc_workers
from .values import auto_or_bool, tensor_split as check_tensor_split


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    socket: Path = Path("/run/oracd/oracd.sock")
    socket_mode: int = 0o660
    socket_group: str = "orac"        # the socket's group (members may connect); "" = oracd's own group
    runtime_dir: Optional[Path] = None  # private dir for llama-server's socket + pidfile; default <socket dir>/llama
    log_dir: Path = Path("/var/log/oracd")
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 2
    log_level: str = "info"
    log_stderr: bool = True
    max_line_bytes: int = 1024 * 1024
    max_connections: int = 256
    max_pending_per_connection: int = 64   # requests in flight on one connection before we stop reading it
    max_batch_items: int = 32         # items of one JSON-RPC batch dispatched; the rest get -32005 batch_too_large
    max_connections_per_uid: int = 64  # connections one uid may hold open (the rest get -32005)
    max_grammar_bytes: int = 65536    # an inline grammar / json_schema in a request, at most this many bytes
    request_log_rate: float = 20.0    # request log lines per second per peer, sustained (the rest are counted)
    request_log_burst: int = 200      # ... and in a burst
    idle_timeout: float = 300.0       # close a connection with nothing in flight and no complete line this long
    send_timeout: float = 30.0        # a client that does not read its answers this long is dropped
    allowed_uids: Tuple[int, ...] = ()  # if either list is set, only these peers may talk to oracd
    allowed_gids: Tuple[int, ...] = ()  # (primary or supplementary group of the peer process)
    admin_uids: Tuple[int, ...] = ()    # if either list is set, only these peers may change state for everyone:
    admin_gids: Tuple[int, ...] = ()    # quantize_model, reload, start/stop_server, persisted prewarm, clear_prewarm
    shutdown_grace: float = 30.0      # seconds in-flight requests get to finish on SIGTERM
    event_loop: str = "auto"          # auto (uvloop if installed) | uvloop | asyncio
    metrics_listen: str = ""          # "127.0.0.1:9464": Prometheus /metrics over HTTP, loopback only ("" = off)


@dataclass(frozen=True)
class LlamaConfig:
    server_bin: Path = Path("llama-server")
    quantize_bin: Path = Path("llama-quantize")
    models_dir: Path = Path("/var/lib/oracd/models")
    extra_models_dirs: Tuple[Path, ...] = ()
    confine_model_links: bool = False  # true: refuse model files that are symlinks leading outside the models dirs
    default_model: str = ""
    preload: bool = False
    ctx_size: int = 2048
    n_gpu_layers: int = 0
    parallel: int = 2
    threads: int = 0                  # 0 = let llama-server decide
    batch_size: int = 0               # 0 = llama-server default
    ubatch_size: int = 0
    extra_args: Tuple[str, ...] = ()
    default_max_tokens: int = 512
    stream_above_tokens: int = 512    # generations asking for more tokens are streamed from llama-server
    rpc_workers: Tuple[str, ...] = ()      # "host:port" of llama.cpp rpc-server workers (llama-server --rpc)
    tensor_split: Tuple[float, ...] = ()   # llama-server -ts: share of the model per device, in device order
    rpc_fallback_local: bool = False       # a worker down at load: load without the workers instead of failing
    fallback_models: Tuple[str, ...] = ()  # tried in order when default_model cannot be loaded
    profiles_file: Optional[Path] = None   # extra [profiles."x.gguf"] tables (e.g. etc/models.toml)
    warmup: bool = True                    # prefill every slot with the profile's system prompt after a load
    warm_restore: bool = True              # restore that prefill from disk (verified) instead, when possible
    swa_full: Any = "auto"                 # sliding-window models: --swa-full so restore holds ("auto": if it fits)
    batch_invariant: Any = "auto"          # a CPU child whose answers do not depend on batching ("auto": no GPU)
    kv_cache_dir: Path = Path("/var/cache/oracd/kv")   # saved slot KV caches (the unit's CacheDirectory)
    kv_cache_max_mb: int = 1024            # bound on that dir; least recently used entries go first
    cache_ram_mb: int = 256                # llama-server --cache-ram: its host prompt cache (its default is 8192)
    memory_check: bool = True              # refuse a load that cannot fit, before stopping the warm model
    memory_margin_mb: int = 256            # headroom the check leaves for everything else on the box
    fit_ctx: bool = False                  # a model that does not fit at ctx_size: the largest context that does
    cgroup_dir: Optional[Path] = None      # cgroup v2 dir for memory.max/.current/.events (default: our own)
    wedge_threshold: int = 3               # this many 5xx answers in a row on generations: restart the child
    wedge_window: float = 120.0            # ... within this many seconds (a slow trickle of errors is not a wedge)
    return_to_default_after: float = 0.0   # idle seconds on another model before the default is loaded back (0: off)
    allow_remote_http: bool = False   # start_server() may bind non-loopback hosts
    max_extra_servers: int = 2        # start_server(): extra llama-servers running at once (each holds a model)
    extra_servers_keyless: bool = False   # true: extra llama-servers without an API key (anyone on the host may use them)
    child_env: Tuple[str, ...] = ()   # more environment variables children inherit ("NAME" or "PREFIX_*")
    quantize_max_output_bytes: int = 0    # RLIMIT_FSIZE for llama-quantize (0 = unlimited): a disk guard
    quantize_max_total_bytes: int = 16 * 2 ** 30   # all of quantize's outputs in the models dir together (0 = no cap)
    quantize_min_free_bytes: int = 2 * 2 ** 30     # quantize never leaves the models dir's filesystem below this
    prewarm_max_prefix_bytes: int = 64 * 1024      # prewarm's prefix / system prompt, UTF-8 bytes
    # timeouts (seconds)
    load_timeout: float = 120.0
    health_interval: float = 2.0
    health_timeout: float = 5.0
    hang_timeout: float = 15.0
    stop_grace: float = 10.0
    swap_drain_timeout: float = 60.0
    quantize_timeout: float = 3600.0
    # restart backoff after a crash (seconds)
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0
    restart_backoff_reset: float = 60.0   # healthy this long -> backoff starts over
    crash_loop_threshold: int = 3         # consecutive failures before requests fail fast


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP front door (Ollama's and OpenAI's APIs, ``oracd/http/``); off while ``listen`` is empty."""
    listen: Tuple[str, ...] = ()      # "127.0.0.1:11434", "[::1]:11434", "unix:/run/oracd/http.sock"
    api_key: str = ""                 # required as "Authorization: Bearer <key>" when set
    api_key_file: Optional[Path] = None   # the key from a file (systemd LoadCredential=); wins over api_key
    max_body_bytes: int = 4 * 1024 * 1024  # a larger request body gets 413
    max_requests: int = 256           # requests served at once (like server.max_connections); more get 503
    read_timeout: float = 30.0        # a request's headers and body must arrive within this (slow clients)
    idle_timeout: float = 75.0        # an idle kept-alive connection is closed after this
    request_timeout: float = 300.0    # one generation's deadline (HTTP clients send none of their own)
    apply_num_ctx: bool = False       # Ollama's num_ctx may restart the model with a larger context (opt-in)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    path: Optional[Path] = None
    profiles: Dict[str, Profile] = field(default_factory=dict)   # model file name -> profile

    def profile_for(self, model: Optional[str]) -> Optional[Profile]:
        return self.profiles.get(model) if model else None

    def alias_target(self, name: str) -> Optional[str]:
        """The model file a profile's alias names (None: not an alias)."""
        for model, prof in self.profiles.items():
            if name in prof.aliases:
                return model
        return None

    def option_for(self, model: Optional[str], name: str) -> Any:
        """A load option for ``model``: its profile's value if set (even to []), else [llama]'s."""
        prof = self.profile_for(model)
        v = getattr(prof, name, None) if prof is not None else None
        return v if v is not None else getattr(self.llama, name)

    def batch_invariant_for(self, model: Optional[str]) -> bool:
        """``[llama] batch_invariant`` for ``model``'s child: true / false as set; "auto" is on for a CPU-only
        child (no GPU layers, no RPC workers): on a GPU, batch sizes pick other kernels that no flag turns
        off, so the flags (``child/command.py``) would cost speed and buy nothing.  It is also fast-forward's
        default for the built-in ``command`` schema (``api/generate.py``)."""
        v = self.llama.batch_invariant
        if isinstance(v, bool):
            return v
        return self.option_for(model, "n_gpu_layers") == 0 and not self.option_for(model, "rpc_workers")

    @property
    def runtime_dir(self) -> Path:
        return self.server.runtime_dir or self.server.socket.parent / "llama"

    @property
    def models_dirs(self) -> Tuple[Path, ...]:
        return (self.llama.models_dir, *self.llama.extra_models_dirs)

    @property
    def log_file(self) -> Path:
        return self.server.log_dir / "orac.log"


_SECTIONS = {"server": ServerConfig, "llama": LlamaConfig, "http": HttpConfig}
_PATH_KEYS = {"socket", "runtime_dir", "log_dir", "models_dir", "extra_models_dirs", "profiles_file", "kv_cache_dir",
              "cgroup_dir", "api_key_file"}
_ZERO_IS_OFF = {"return_to_default_after"}     # seconds where 0 means "off"
_BIN_KEYS = {"server_bin", "quantize_bin"}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def _fail(key: str, msg: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: {msg}, got {value!r}")


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_bin(base: Path, value: str) -> Path:
    # a bare name ("llama-server") is looked up on PATH at start; a path is config-relative
    return Path(value) if "/" not in value else _resolve(base, value)


def _coerce(section: str, name: str, ftype: Any, value: Any, base: Path) -> Any:
    key = f"{section}.{name}"
    if name in _BIN_KEYS:
        if not isinstance(value, str) or not value:
            raise _fail(key, "expected a non-empty path or program name", value)
        return _resolve_bin(base, value)
    if name in _PATH_KEYS:
        if name == "extra_models_dirs":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise _fail(key, "expected a list of paths", value)
            return tuple(_resolve(base, v) for v in value)
        if not isinstance(value, str) or not value:
            raise _fail(key, "expected a non-empty path", value)
        return _resolve(base, value)
    if name == "socket_mode":
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise _fail(key, "expected an octal mode like \"0660\"", value) from None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
            raise _fail(key, "expected an octal mode like \"0660\"", value)
        return value
    if name in ("allowed_uids", "allowed_gids", "admin_uids", "admin_gids"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value):
            raise _fail(key, "expected a list of integer ids", value)
        return tuple(value)
    if name == "fallback_models":
        if not isinstance(value, list) or not all(isinstance(v, str) and v and "/" not in v for v in value):
            raise _fail(key, "expected a list of model file names", value)
        return tuple(v if v.endswith(".gguf") else v + ".gguf" for v in value)
    if name == "child_env":
        if not isinstance(value, list) or not all(isinstance(v, str) and _ENV_NAME.fullmatch(v) for v in value):
            raise _fail(key, "expected a list of environment variable names (NAME, or PREFIX_* for a prefix)", value)
        if any(v.startswith(("LLAMA_ARG_", "LLAMA_API_KEY")) for v in value):
            raise _fail(key, "LLAMA_ARG_* and LLAMA_API_KEY are oracd's to set, not inherited", value)
        return tuple(value)
    if name == "extra_args":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(key, "expected a list of strings", value)
        return tuple(value)
    if name in ("rpc_workers", "tensor_split"):
        try:
            return (check_rpc_workers if name == "rpc_workers" else check_tensor_split)(key, value)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if name in ("swa_full", "batch_invariant"):
        try:
            return auto_or_bool(key, value)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if key == "http.listen":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(key, 'expected a list of "host:port" or "unix:/path" strings', value)
        try:
            addrs = [http_address(v) for v in value]
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if len(set(addrs)) != len(addrs):
            raise _fail(key, "lists an address twice", value)
        return tuple(value)
    if name == "event_loop":
        if value not in ("auto", "uvloop", "asyncio"):
            raise _fail(key, "expected one of ['asyncio', 'auto', 'uvloop']", value)
        return value
    if name == "log_level":
        if not isinstance(value, str) or value not in _LOG_LEVELS:
            raise _fail(key, f"expected one of {sorted(_LOG_LEVELS)}", value)
        return value
    return _coerce_typed(key, ftype, value)


def _coerce_typed(key: str, ftype: Any, value: Any) -> Any:
    """Keys without a rule of their own: by their field type (seconds are > 0, counts >= 0)."""
    if ftype in (bool, "bool"):
        if not isinstance(value, bool):
            raise _fail(key, "expected true or false", value)
        return value
    if ftype in (int, "int"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(key, "expected an integer >= 0", value)
        return value
    if ftype in (float, "float"):
        zero_ok = key.split(".")[-1] in _ZERO_IS_OFF
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value < 0 \
                or (value == 0 and not zero_ok):
            raise _fail(key, "expected a number >= 0 (seconds; 0 = off)" if zero_ok else
                        "expected a number > 0 (seconds)", value)
        return float(value)
    if ftype in (str, "str"):
        if not isinstance(value, str):
            raise _fail(key, "expected a string", value)
        return value
    raise _fail(key, "unsupported value", value)  # pragma: no cover


def _build_section(section: str, cls: Any, table: Any, base: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: expected a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for name, value in table.items():
        if name not in fields:
            raise ConfigError(f"{section}.{name}: unknown key (known: {', '.join(sorted(fields))})")
        kwargs[name] = _coerce(section, name, fields[name].type, value, base)
    return cls(**kwargs)


def from_dict(data: Dict[str, Any], base: Path) -> Config:
    """Build a Config from parsed TOML; relative paths resolve against ``base``."""
    sections: Dict[str, Any] = {}
    for name, table in data.items():
        if name == "profiles":
            continue
        if name not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted([*_SECTIONS, 'profiles']))})")
        sections[name] = _build_section(name, _SECTIONS[name], table, base)
    cfg = Config(**sections)
    try:
        profiles = load_profiles_file(cfg.llama.profiles_file) if cfg.llama.profiles_file else {}
        profiles.update(parse_profiles(data.get("profiles", {}), base))
    except ProfileError as exc:
        raise ConfigError(str(exc)) from None
    cfg = dataclasses.replace(cfg, profiles=profiles)
    _check(cfg)
    return cfg


# (key, minimum): integer settings whose type check (>= 0) is not enough
_MINIMUMS = (("server.log_backups", 1), ("server.log_max_bytes", 1024), ("server.max_line_bytes", 1024),
             ("server.max_pending_per_connection", 1), ("server.max_connections", 1),
             ("server.max_batch_items", 1), ("server.max_connections_per_uid", 1), ("server.max_grammar_bytes", 1024),
             ("server.request_log_burst", 1), ("llama.wedge_threshold", 1),
             ("llama.parallel", 1), ("llama.default_max_tokens", 1), ("http.max_body_bytes", 1024),
             ("http.max_requests", 1))


def _check(cfg: Config) -> None:
    s, l = cfg.server, cfg.llama
    for key, lowest in _MINIMUMS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < lowest:
            raise _fail(key, f"expected an integer >= {lowest}" if lowest == 1 else f"expected at least {lowest}",
                        value)
    if s.metrics_listen:
        try:
            listen_address(s.metrics_listen)
        except ValueError as exc:
            raise ConfigError(f"server.metrics_listen: {exc}") from None
    _check_http(cfg)
    _check_aliases(cfg)
    if l.default_model and not l.default_model.endswith(".gguf"):
        raise _fail("llama.default_model", "expected a model file name ending in .gguf", l.default_model)
    if l.preload and not l.default_model:
        raise ConfigError("llama.preload: preload = true needs llama.default_model")
    if len(str(s.socket)) > 104:
        raise _fail("server.socket", "path too long for a Unix socket (max ~104 bytes)", str(s.socket))
    if len(str(cfg.runtime_dir / "llama-server.sock")) > 100:
        if s.runtime_dir is None:   # derived from the socket: name the key the user actually set
            raise _fail("server.socket", "directory too deep: llama-server's socket goes in <socket dir>/llama "
                        "and would exceed ~100 bytes; use a shorter path or set server.runtime_dir",
                        str(s.socket))
        raise _fail("server.runtime_dir", "path too long for a Unix socket (max ~100 bytes)", str(cfg.runtime_dir))


def _check_aliases(cfg: Config) -> None:
    """An alias names one model, and never shadows another profile's model file name or stem."""
    owner: Dict[str, str] = {}
    files = {m for m in cfg.profiles} | {m[:-5] for m in cfg.profiles}
    for model, prof in cfg.profiles.items():
        for alias in prof.aliases:
            if alias in owner or alias in files:
                raise ConfigError(f'profiles."{model}".aliases: {alias!r} already names '
                                  f"{owner.get(alias) or 'a model file'}")
            owner[alias] = model


def _check_http(cfg: Config) -> None:
    """An HTTP listener off loopback must require a key: a LAN must not get a free, unauthenticated model."""
    h = cfg.http
    if h.api_key_file is not None and h.api_key:
        raise ConfigError("http.api_key_file: set api_key or api_key_file, not both")
    if h.api_key and (len(h.api_key) < 8 or h.api_key != h.api_key.strip()):
        raise _fail("http.api_key", "expected at least 8 characters without surrounding spaces", "<hidden>")
    if not (h.api_key or h.api_key_file):
        remote = [a for a in h.listen if not address_is_local(http_address(a))]
        if remote:
            raise ConfigError(f"http.listen: {', '.join(remote)} is not a loopback address, and no api_key or "
                              f"api_key_file is set; refusing to serve models to the network without a key "
                              f"(set [http] api_key_file, or listen on 127.0.0.1 / a unix: socket)")


def load(path: Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:          # a directory, no permission, I/O error
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    cfg = from_dict(data, path.resolve().parent)
    return dataclasses.replace(cfg, path=path.resolve())


def with_overrides(cfg: Config, **sections: Dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys replaced (tests and tools); values are already typed."""
    new = {name: dataclasses.replace(getattr(cfg, name), **vals) for name, vals in sections.items()}
    return dataclasses.replace(cfg, **new)
