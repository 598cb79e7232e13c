"""Config loading and validation: systemd-friendly defaults, fail-fast errors that name the key."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from helpers import REPO, SMOL, toml_value
from oracd import config
from oracd.config import Config, ConfigError, LlamaConfig, ServerConfig, from_dict, load

DEV_CONFIG = REPO / "etc" / "oracd.dev.toml"
SYSTEM_CONFIG = REPO / "etc" / "oracd.toml"
BASE = Path("/srv/oracd-test-base")   # a base dir that does not exist: from_dict must not touch the disk


def write_toml(path: Path, data: Dict[str, Dict[str, Any]]) -> Path:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def expect_error(data: Dict[str, Any], key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data, BASE)
    msg = str(info.value)
    assert msg.startswith(f"{key}:"), f"error should name {key!r} first: {msg!r}"
    return info.value


def run_oracd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
    return subprocess.run([sys.executable, "-m", "oracd", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------- defaults
def test_defaults_suit_systemd():
    cfg = from_dict({}, BASE)
    assert cfg.server.socket == Path("/run/oracd/oracd.sock")
    assert cfg.server.log_dir == Path("/var/log/oracd")
    assert cfg.log_file == Path("/var/log/oracd/orac.log")
    assert cfg.server.socket_mode == 0o660
    assert cfg.server.log_backups == 2
    assert cfg.runtime_dir == Path("/run/oracd/llama")
    assert cfg.llama.models_dir == Path("/var/lib/oracd/models")
    assert cfg.models_dirs == (Path("/var/lib/oracd/models"),)
    assert cfg.llama.preload is False
    # bare program names are looked up on PATH at start
    assert cfg.llama.server_bin == Path("llama-server")
    assert cfg.llama.quantize_bin == Path("llama-quantize")
    assert cfg.path is None
    assert cfg == Config()


def test_empty_sections_give_defaults(tmp_path):
    cfg = load(write_toml(tmp_path / "oracd.toml", {"server": {}, "llama": {}}))
    assert cfg.server == ServerConfig()
    assert cfg.llama == LlamaConfig()
    assert cfg.path == (tmp_path / "oracd.toml").resolve()


def _toml_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_toml_default(v) for v in value]
    return value


@pytest.mark.parametrize("section,cls", [("server", ServerConfig), ("llama", LlamaConfig)])
def test_every_key_accepts_its_default(section, cls):
    """Each documented key can be written out explicitly with its default value."""
    table = {f.name: _toml_default(f.default) for f in dataclasses.fields(cls)
             if f.default is not dataclasses.MISSING and f.default is not None}
    assert table, cls
    cfg = from_dict({section: table}, BASE)
    assert getattr(cfg, section) == cls()


# ---------------------------------------------------------------------- unknown keys and sections
@pytest.mark.parametrize("data,key", [
    ({"llama": {"bogus": 1}}, "llama.bogus"),
    ({"server": {"bogus": "x"}}, "server.bogus"),
    ({"llama": {"ctx": 4096}}, "llama.ctx"),                   # typo of ctx_size
    ({"server": {"Socket": "/run/x.sock"}}, "server.Socket"),  # keys are case-sensitive
    ({"server": {"log_dir": "/tmp/x", "sockt": "/run/x.sock"}}, "server.sockt"),
    ({"llama": {"extra": {"a": 1}}}, "llama.extra"),           # [llama.extra] subtable
    ({"bogus": {}}, "bogus"),
    ({"Server": {}}, "Server"),
    ({"socket": "/run/x.sock"}, "socket"),                    # a server key at top level
    ({"path": "/etc/oracd.toml"}, "path"),                    # Config attribute, not a section
])
def test_unknown_key_or_section_fails_naming_it(data, key):
    err = expect_error(data, key)
    assert "unknown" in str(err)


def test_unknown_key_message_lists_known_keys():
    err = expect_error({"llama": {"ctx": 1}}, "llama.ctx")
    assert "ctx_size" in str(err)


def test_unknown_key_in_file_fails(tmp_path):
    path = tmp_path / "oracd.toml"
    path.write_text('[llama]\ndefault_model = "x.gguf"\nbogus = 3\n')
    with pytest.raises(ConfigError, match=r"^llama\.bogus: unknown key"):
        load(path)


# ---------------------------------------------------------------------- bad values
BAD_VALUES = [
    # integers
    ("llama", "ctx_size", "big"),
    ("llama", "ctx_size", -1),
    ("llama", "ctx_size", True),            # bool is not an int here
    ("llama", "ctx_size", 1.5),
    ("llama", "n_gpu_layers", -5),
    ("llama", "threads", "4"),
    ("llama", "parallel", 0),
    ("llama", "crash_loop_threshold", False),
    ("llama", "default_max_tokens", 0),
    ("server", "log_backups", 0),
    ("server", "log_backups", -1),
    ("server", "log_backups", True),
    ("server", "log_max_bytes", 100),
    ("server", "log_max_bytes", -5),
    ("server", "max_line_bytes", 10),
    ("server", "max_connections", 0),
    # booleans
    ("llama", "preload", "yes"),
    ("llama", "preload", 1),
    ("server", "log_stderr", 0),
    ("llama", "allow_remote_http", "true"),
    # floats (seconds)
    ("llama", "load_timeout", 0),
    ("llama", "load_timeout", -1.0),
    ("llama", "load_timeout", "10"),
    ("llama", "health_interval", True),
    ("server", "shutdown_grace", -1),
    # socket_mode
    ("server", "socket_mode", "rw-rw----"),
    ("server", "socket_mode", "0999"),
    ("server", "socket_mode", "1777"),       # setuid/sticky bits are out of range
    ("server", "socket_mode", ""),
    ("server", "socket_mode", "-1"),
    ("server", "socket_mode", 0o1000),
    ("server", "socket_mode", -1),
    ("server", "socket_mode", 660),          # decimal 660 > 0o777: almost certainly meant "0660"
    ("server", "socket_mode", True),
    ("server", "socket_mode", 4.5),
    # paths and programs
    ("server", "socket", 5),
    ("server", "socket", ""),
    ("server", "log_dir", ["/var/log"]),
    ("server", "runtime_dir", ""),
    ("llama", "models_dir", ""),
    ("llama", "extra_models_dirs", "/srv/models"),
    ("llama", "extra_models_dirs", [1]),
    ("llama", "extra_models_dirs", [""]),
    ("llama", "server_bin", ""),
    ("llama", "server_bin", 5),
    ("llama", "quantize_bin", ["llama-quantize"]),
    # strings
    ("llama", "extra_args", "--mlock"),
    ("llama", "extra_args", [1, 2]),
    ("llama", "default_model", 5),
    ("server", "socket_group", 0),
    ("server", "log_level", "verbose"),
    ("server", "log_level", 10),
    ("server", "event_loop", "tokio"),
    ("server", "event_loop", 1),
    ("llama", "stream_above_tokens", -1),
    ("llama", "stream_above_tokens", "many"),
]


@pytest.mark.parametrize("section,name,value", BAD_VALUES,
                         ids=[f"{s}.{n}={v!r}" for s, n, v in BAD_VALUES])
def test_bad_value_fails_naming_the_key(section, name, value):
    expect_error({section: {name: value}}, f"{section}.{name}")


@pytest.mark.parametrize("value", [["info"], {"level": "info"}])
def test_log_level_of_wrong_type_fails_naming_the_key(value):
    # an unhashable value must still give a ConfigError, not a TypeError from `in set()`
    expect_error({"server": {"log_level": value}}, "server.log_level")


@pytest.mark.parametrize("name", ["hang_timeout", "load_timeout", "health_interval"])
def test_nan_timeout_fails_naming_the_key(name):
    # TOML allows `nan`; a NaN timeout compares false with everything and silently disables the check
    expect_error({"llama": {name: float("nan")}}, f"llama.{name}")


def test_bad_value_message_shows_the_value():
    err = expect_error({"llama": {"ctx_size": "big"}}, "llama.ctx_size")
    assert "'big'" in str(err)


def test_section_that_is_not_a_table_fails():
    expect_error({"server": 5}, "server")
    expect_error({"llama": ["x"]}, "llama")


def test_preload_needs_default_model():
    expect_error({"llama": {"preload": True}}, "llama.preload")
    expect_error({"llama": {"preload": True, "default_model": ""}}, "llama.preload")
    cfg = from_dict({"llama": {"preload": True, "default_model": SMOL}}, BASE)
    assert cfg.llama.preload and cfg.llama.default_model == SMOL


def test_socket_path_too_long_fails_naming_socket():
    long_dir = "/" + "d" * 100
    # with an explicit short runtime_dir only the socket itself is too long
    expect_error({"server": {"socket": long_dir + "/oracd.sock", "runtime_dir": "/run/oracd/llama"}},
                 "server.socket")
    # runtime_dir is derived from the socket: the user only set server.socket, so that is the key to name
    expect_error({"server": {"socket": long_dir + "/oracd.sock"}}, "server.socket")


def test_runtime_dir_too_long_fails_naming_it():
    expect_error({"server": {"runtime_dir": "/" + "r" * 100}}, "server.runtime_dir")


def test_socket_path_just_under_the_limit_is_fine():
    sock = "/" + "s" * 60 + "/oracd.sock"
    cfg = from_dict({"server": {"socket": sock}}, BASE)
    assert str(cfg.server.socket) == sock


# ---------------------------------------------------------------------- good values
@pytest.mark.parametrize("value,mode", [("0660", 0o660), ("660", 0o660), ("0o600", 0o600), ("0777", 0o777),
                                        ("0", 0), (0o660, 0o660), (0o600, 0o600), (0, 0)])
def test_socket_mode_accepts_octal_strings_and_ints(value, mode):
    assert from_dict({"server": {"socket_mode": value}}, BASE).server.socket_mode == mode


def test_socket_mode_from_toml_octal_literal(tmp_path):
    path = tmp_path / "oracd.toml"
    path.write_text('[server]\nsocket_mode = 0o640\n')
    assert load(path).server.socket_mode == 0o640


def test_int_seconds_become_floats():
    cfg = from_dict({"llama": {"load_timeout": 30}, "server": {"shutdown_grace": 5}}, BASE)
    assert cfg.llama.load_timeout == 30.0 and isinstance(cfg.llama.load_timeout, float)
    assert cfg.server.shutdown_grace == 5.0 and isinstance(cfg.server.shutdown_grace, float)


def test_lists_become_tuples():
    cfg = from_dict({"llama": {"extra_args": ["--mlock", "--no-mmap"],
                               "extra_models_dirs": ["/srv/a", "/srv/b"]}}, BASE)
    assert cfg.llama.extra_args == ("--mlock", "--no-mmap")
    assert cfg.llama.extra_models_dirs == (Path("/srv/a"), Path("/srv/b"))
    assert cfg.models_dirs == (cfg.llama.models_dir, Path("/srv/a"), Path("/srv/b"))


def test_config_is_immutable():
    cfg = from_dict({}, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.socket = Path("/tmp/x")  # type: ignore[misc]


# ---------------------------------------------------------------------- path resolution
def test_relative_paths_resolve_against_config_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write_toml(conf_dir / "oracd.toml", {
        "server": {"socket": "run/oracd.sock", "log_dir": "../logs", "runtime_dir": "rt"},
        "llama": {"models_dir": "models", "extra_models_dirs": ["more", "/srv/abs-models"],
                  "server_bin": "./bin/llama-server", "quantize_bin": "../tools/llama-quantize"},
    })
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)          # relative to the file, never to the cwd
    cfg = load(Path("../conf/oracd.toml"))
    base = conf_dir.resolve()
    assert cfg.path == path.resolve()
    assert cfg.server.socket == base / "run" / "oracd.sock"
    assert cfg.server.log_dir == tmp_path.resolve() / "logs"
    assert cfg.server.runtime_dir == base / "rt"
    assert cfg.runtime_dir == base / "rt"
    assert cfg.llama.models_dir == base / "models"
    assert cfg.llama.extra_models_dirs == (base / "more", Path("/srv/abs-models"))
    assert cfg.llama.server_bin == base / "bin" / "llama-server"
    assert cfg.llama.quantize_bin == tmp_path.resolve() / "tools" / "llama-quantize"
    for p in (cfg.server.socket, cfg.server.log_dir, cfg.llama.models_dir, cfg.llama.server_bin):
        assert p.is_absolute() and ".." not in p.parts


def test_from_dict_resolves_against_base():
    cfg = from_dict({"server": {"socket": "run/x.sock"}, "llama": {"models_dir": "m"}}, BASE)
    assert cfg.server.socket == BASE / "run" / "x.sock"
    assert cfg.runtime_dir == BASE / "run" / "llama"
    assert cfg.llama.models_dir == BASE / "m"


def test_bare_binary_names_stay_bare(tmp_path):
    path = write_toml(tmp_path / "oracd.toml", {"llama": {"server_bin": "llama-server",
                                                           "quantize_bin": "my-quantize"}})
    cfg = load(path)
    assert cfg.llama.server_bin == Path("llama-server")
    assert cfg.llama.quantize_bin == Path("my-quantize")
    assert not cfg.llama.server_bin.is_absolute()


def test_absolute_paths_kept_and_home_expanded():
    cfg = from_dict({"server": {"socket": "/run/orac/o.sock", "log_dir": "~/oracd-logs"},
                     "llama": {"server_bin": "/opt/llama/bin/llama-server"}}, BASE)
    assert cfg.server.socket == Path("/run/orac/o.sock")
    assert cfg.server.log_dir == Path(os.path.expanduser("~")) / "oracd-logs"
    assert cfg.llama.server_bin == Path("/opt/llama/bin/llama-server")


# ---------------------------------------------------------------------- files
def test_missing_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml")


def test_invalid_toml_fails_naming_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nsocket = \n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value) and "invalid TOML" in str(info.value)


def test_duplicate_key_is_invalid_toml(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text('[llama]\nctx_size = 1\nctx_size = 2\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(path)


def test_non_utf8_file_fails_with_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[llama]\ndefault_model = "mod\xe8le.gguf"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file_fails_with_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_dev_config_loads():
    cfg = load(DEV_CONFIG)
    assert cfg.path == DEV_CONFIG.resolve()
    # relative paths are resolve()d, so symlinks (bin/ links into the llama.cpp cache) are followed
    assert cfg.server.socket == (REPO / "run" / "oracd.sock").resolve()
    assert cfg.server.log_dir == (REPO / "logs").resolve()
    assert cfg.llama.server_bin == (REPO / "bin" / "llama-server").resolve()
    assert cfg.llama.quantize_bin == (REPO / "bin" / "llama-quantize").resolve()
    assert cfg.llama.models_dir == (REPO / "models").resolve()
    assert cfg.llama.default_model == SMOL
    assert cfg.llama.preload is True


def test_system_config_loads():
    # etc/oracd.toml is the annotated config installed for systemd; it must always be valid
    assert SYSTEM_CONFIG.is_file(), f"{SYSTEM_CONFIG} is missing"
    cfg = load(SYSTEM_CONFIG)
    assert cfg.server.socket.is_absolute() and cfg.server.log_dir.is_absolute()


def test_system_config_documents_every_key():
    # "See etc/oracd.toml for every key, annotated": each key appears, set or commented out
    text = SYSTEM_CONFIG.read_text()
    missing = [f"{section}.{f.name}" for section, cls in (("server", ServerConfig), ("llama", LlamaConfig))
               for f in dataclasses.fields(cls)
               if not re.search(rf"^\s*#?\s*{re.escape(f.name)}\s*=", text, re.M)]
    assert not missing, f"{SYSTEM_CONFIG.name} does not mention {missing}"


def test_with_overrides_replaces_keys():
    cfg = config.with_overrides(from_dict({}, BASE), server={"log_backups": 5}, llama={"ctx_size": 64})
    assert cfg.server.log_backups == 5 and cfg.llama.ctx_size == 64
    assert cfg.server.socket == Path("/run/oracd/oracd.sock")


# ---------------------------------------------------------------------- the command line
def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nsocket = "run/oracd.sock"\nlog_dir = "logs"\n\n[llama]\nbogus = 1\n')
    res = run_oracd("--config", str(bad))
    assert res.returncode == 2, res
    assert "llama.bogus" in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]   # failed before binding or logging


def test_cli_bad_value_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[llama]\nctx_size = "big"\n')
    for args in (("--config", str(bad)), ("--check", "--config", str(bad))):
        res = run_oracd(*args)
        assert res.returncode == 2, res
        assert "llama.ctx_size" in res.stderr and "Traceback" not in res.stderr


def test_cli_missing_config_exits_2(tmp_path):
    res = run_oracd("--config", str(tmp_path / "missing.toml"))
    assert res.returncode == 2, res
    assert "not found" in res.stderr and "Traceback" not in res.stderr


def test_cli_unreadable_config_exits_2(tmp_path):
    res = run_oracd("--config", str(tmp_path))   # a directory
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr


def test_cli_check_dev_config_exits_0():
    res = run_oracd("--check", "--config", str(DEV_CONFIG))
    assert res.returncode == 0, res
    assert "OK" in res.stdout


def test_cli_check_does_not_create_anything(tmp_path):
    path = write_toml(tmp_path / "oracd.toml", {"server": {"socket": "run/oracd.sock", "log_dir": "logs",
                                                           "socket_group": ""}})
    res = run_oracd("--check", "-c", str(path))
    assert res.returncode == 0, res
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oracd.toml"]


def test_missing_socket_group_says_how_to_fix_it(tmp_path):
    """The default socket_group is "orac"; on a box without that group, start and --check say what to do."""
    conf = tmp_path / "oracd.toml"
    conf.write_text(f'[server]\nsocket = "{tmp_path}/run/oracd.sock"\nlog_dir = "{tmp_path}/logs"\n'
                    f'socket_group = "oracd-test-nogroup"\n')
    check = run_oracd("--check", "--config", str(conf))
    assert check.returncode == 2, check
    start = run_oracd("--config", str(conf))
    assert start.returncode == 1, start
    for res in (check, start):
        text = res.stderr
        assert "there is no group oracd-test-nogroup on this machine" in text, text
        assert "sudo groupadd --system oracd-test-nogroup" in text and 'set socket_group = "" in [server]' in text
        assert "Traceback" not in text
    assert not (tmp_path / "run" / "oracd.sock").exists()


def test_metrics_listen_must_be_loopback(tmp_path):
    from oracd import config
    from oracd.config import ConfigError
    with pytest.raises(ConfigError, match="loopback only"):
        config.from_dict({"server": {"metrics_listen": "0.0.0.0:9464"}}, tmp_path)
    assert config.from_dict({"server": {"metrics_listen": "[::1]:9464"}}, tmp_path).server.metrics_listen
