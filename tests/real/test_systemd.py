"""systemd integration that runs anywhere: unit verification, directive reasons, socket activation."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import REPO, Oracd

UNITS = REPO / "systemd"
UNIT_FILES = ("oracd.service", "oracd.socket", "oracd-rpc-worker.service")


def test_units_verify(tmp_path):
    """systemd-analyze verify, with ExecStart pointing at this checkout's oracd."""
    oracd_bin = Path(sys.executable).parent / "oracd"
    assert oracd_bin.exists()
    for name in UNIT_FILES:
        text = (UNITS / name).read_text().replace("/opt/oracd/bin/oracd", str(oracd_bin))
        (tmp_path / name).write_text(text)
    assert (Path(sys.executable).parent / "oracd-rpc-worker").exists()
    out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNIT_FILES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_every_directive_has_a_reason():
    """Each directive (or a small group of related ones) sits under a comment saying why."""
    for name in UNIT_FILES:
        lines = (UNITS / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^[A-Za-z]+=", line):
                j = i - 1
                while j >= 0 and re.match(r"^[A-Za-z]+=", lines[j]) and i - j < 3:
                    j -= 1
                assert j >= 0 and lines[j].startswith("#"), f"{name}: {line!r} has no reason comment above it"


def test_service_has_the_required_directives():
    text = (UNITS / "oracd.service").read_text()
    for d in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "RestartSec=",
              "StartLimitBurst=", "User=orac", "Group=orac", "RuntimeDirectory=oracd", "LogsDirectory=oracd",
              "StateDirectory=oracd", "CacheDirectory=oracd", "ConfigurationDirectory=oracd", "KillMode=mixed", "TimeoutStopSec=",
              "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
              "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "RestrictAddressFamilies=",
              "SupplementaryGroups=video render"):
        assert d in text, d
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))
    from oracd.config import ServerConfig, LlamaConfig
    assert stop > ServerConfig().shutdown_grace + LlamaConfig().stop_grace


def test_socket_activation_uses_inherited_socket():
    """oracd honours LISTEN_FDS/LISTEN_PID: systemd-socket-activate binds, oracd serves on it."""
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate missing: scripts/setup --test installs systemd"
    o = Oracd()
    o.socket.parent.mkdir(parents=True, exist_ok=True)
    try:
        o.start(wrapper=[activate, "-l", str(o.socket)])
        st = o.call("status")
        assert st["child"]["state"] == "ready"
        assert st["pid"] == o.proc.pid                 # the activated process itself serves
        assert not (o.socket.parent / "oracd.sock.lock").exists()   # no own bind: no lock taken
        r = o.call("generate", prompt="Hi", max_tokens=2, temperature=0)
        assert r["usage"]["completion_tokens"] == 2
        o.proc.send_signal(signal.SIGTERM)
        assert o.proc.wait(60) == 0
        assert o.socket.exists()                       # the socket belongs to systemd: left in place
    finally:
        o.cleanup()
