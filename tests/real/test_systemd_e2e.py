"""oracd under a real systemd: scripts/install, start, STATUS, group-only socket, crash recovery, stop, watchdog.

A minimal Debian/Ubuntu root (built once and cached by scripts/systemd-testroot) is booted with
systemd-nspawn: systemd is PID 1 of its own PID namespace, on a throwaway overlay of the cached root
(upper dir in this test's temp dir), inside its own cgroup, on the host network.  Never on the host's
own file system: a systemd booted there starts the machine's units and its tmpfiles empties /tmp.

Bound read-only into the machine: this checkout (/src), the llama.cpp bin dir (/opt/llama.cpp/bin),
the model (/srv/oracd-models) and wheels of oracd's dependencies (/wheels: scripts/install runs offline).
Commands run inside with ``nsenter -t <its PID 1> -a``; clients run as ``alice`` (group orac) and
``mallory`` (not) via setpriv.  Teardown: poweroff, SIGKILL of its PID 1 if that is not enough, the
cgroups and nspawn's /run/systemd/nspawn leftovers removed, the temp dir removed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from helpers import BIN, MODELS, REPO, SMOL

TESTROOT_SCRIPT = REPO / "scripts" / "systemd-testroot"
SOCK = "/run/oracd/oracd.sock"
READY_STATUS = f'Status: "ready: model {SMOL}, 0 requests in flight"'
PATH_IN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Copied from /src before installing: pip builds a local project in place, and /src is read-only.
SRC_EXCLUDES = [".venv", ".git", "bin", "models", "run", "logs", ".pytest_cache", "build", "*.egg-info",
                "__pycache__"]


def _skip_unless_possible() -> None:
    """Skip only outside CI where systemd cannot be booted; in CI (CI=true) the same reasons fail."""
    give_up = pytest.fail if os.environ.get("CI") else pytest.skip
    if os.geteuid() != 0:
        give_up("systemd end-to-end test needs root (debootstrap, mount, systemd-nspawn)")
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            give_up(f"systemd end-to-end test needs {tool} (util-linux)")
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        give_up(f"new mount/PID namespaces are not permitted here: {probe.stderr.strip()}")


def _own_cgroup_dirs() -> List[Path]:
    """This process's cgroup in the v2 tree and in the v1 name=systemd tree (where nspawn puts the machine)."""
    mounts: Dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt = left.split()[4]
            fstype, _src, opts = right.split()[:3]
            if fstype == "cgroup2":
                mounts.setdefault("v2", mnt)
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                mounts.setdefault("systemd", mnt)
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            key = "v2" if hid == "0" else ("systemd" if ctrls == "name=systemd" else None)
            if key in mounts:
                d = Path(mounts[key] + path)
                if d.is_dir():
                    dirs.append(d)
    return dirs


def _children(pid: int) -> List[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(p.name))
    return kids


class Machine:
    """A throwaway systemd machine booted from the cached root."""

    def __init__(self, root: Path, wheels: Path):
        self.root = root
        self.wheels = wheels
        self.work = Path(tempfile.mkdtemp(prefix="oracd-e2e-"))
        self.name = "oracd-e2e-" + uuid.uuid4().hex[:8]
        self.console = self.work / "console.log"
        self.proc: Optional[subprocess.Popen] = None
        self.init_pid: Optional[int] = None
        self.cgroups: List[Path] = []
        self.nspawn_run = Path("/run/systemd/nspawn")
        self._run_dirs_before = {p for p in (self.nspawn_run, self.nspawn_run / "propagate",
                                             self.nspawn_run / "locks") if p.exists()}

    # ---------------------------------------------------------------- boot and teardown
    def boot(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        for d in ("upper", "work", "merged"):
            (self.work / d).mkdir()
        for parent in _own_cgroup_dirs():
            try:
                (parent / self.name).mkdir()
                self.cgroups.append(parent / self.name)
            except OSError:
                pass        # best effort: nspawn then makes its cgroups under ours
        model = (MODELS / SMOL).resolve()
        llama_bin = (BIN / "llama-server").resolve().parent
        nspawn = ["systemd-nspawn", "--quiet", "--boot", "--directory", str(self.work / "merged"),
                  f"--machine={self.name}", "--register=no", "--keep-unit", "--link-journal=no",
                  "--console=read-only",
                  f"--bind-ro={REPO}:/src", f"--bind-ro={llama_bin}:/opt/llama.cpp/bin",
                  f"--bind-ro={model}:/srv/oracd-models/{SMOL}", f"--bind-ro={self.wheels}:/wheels"]
        # The overlay exists only in this private mount namespace: it goes away with nspawn.
        # Where overlayfs is unavailable, a full copy of the root is the throwaway instead.
        launcher = ('mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/merged" '
                    '|| cp -a --reflink=auto "$1/." "$2/merged/"; shift 2; exec "$@"')
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-euc", launcher, "sh",
               str(self.root), str(self.work), *nspawn]
        cgroup_procs = [str(c / "cgroup.procs") for c in self.cgroups]

        def into_cgroups() -> None:     # in the child, before exec: nspawn then makes its cgroups in ours
            for p in cgroup_procs:
                try:
                    fd = os.open(p, os.O_WRONLY)
                    try:
                        os.write(fd, b"0\n")
                    finally:
                        os.close(fd)
                except OSError:
                    pass

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "PIP_"))}
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=into_cgroups)
        deadline = time.monotonic() + timeout
        while self.init_pid is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no systemd in the machine after {timeout}s:\n{self.console_tail()}")
            for kid in _children(self.proc.pid):
                try:
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        self.init_pid = kid
                except OSError:
                    pass
            time.sleep(0.1)
        while True:
            # systemd's bus socket appears a moment after PID 1 does (later on a loaded box): until it is
            # there, `is-system-running --wait` fails at once instead of waiting, so ask again
            left = max(5.0, deadline - time.monotonic())
            out = self.sh(f"timeout {int(left)} systemctl is-system-running --wait", check=False, timeout=left + 10)
            state = out.stdout.strip()
            if state or "Failed to connect to bus" not in out.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            raise RuntimeError(f"machine not up: {state!r} {out.stderr}\n{self.console_tail()}")
        if state == "degraded":
            print(self.sh("systemctl --failed --no-pager", check=False).stdout)
        return time.monotonic() - t0

    def console_tail(self, n: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-n:])

    def teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # nspawn: power the machine off
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                if self.init_pid is not None:
                    try:
                        os.kill(self.init_pid, signal.SIGKILL)   # ends the whole PID namespace
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(30)
        for cg in self.cgroups:
            self._remove_cgroup(cg)
        prop = self.nspawn_run / "propagate" / self.name
        for d in (prop, self.nspawn_run / "propagate", self.nspawn_run / "locks", self.nspawn_run):
            if d == prop or d not in self._run_dirs_before:
                try:
                    d.rmdir()
                except OSError:
                    pass
        if str(self.work) not in Path("/proc/self/mountinfo").read_text():
            shutil.rmtree(self.work, ignore_errors=True)

    @staticmethod
    def _remove_cgroup(cg: Path) -> None:
        if not cg.exists():
            return
        for _ in range(50):
            procs = []
            for procs_file in cg.rglob("cgroup.procs"):
                try:
                    procs += [int(p) for p in procs_file.read_text().split()]
                except OSError:
                    pass
            if not procs:
                break
            for p in procs:                               # only the machine's processes live here
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            cg.rmdir()
        except OSError:
            pass

    # ---------------------------------------------------------------- inside the machine
    def sh(self, script: str, user: Optional[str] = None, input: Optional[str] = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell script in the machine (all its namespaces, a clean environment), as root or a user."""
        assert self.init_pid is not None
        cmd = ["nsenter", "-t", str(self.init_pid), "-a",
               "env", "-i", f"PATH={PATH_IN}", "LANG=C.UTF-8", f"HOME={'/root' if user is None else '/home/' + user}"]
        if user is not None:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        cmd += ["/bin/sh", "-c", script]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"`{script}` exited {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
                                 f"\n{self.diag()}")
        return out

    def rpc(self, method: str, user: str = "alice", timeout: float = 120, **params: Any) -> Dict[str, Any]:
        """One JSON-RPC call over /run/oracd/oracd.sock with socat, as ``user``."""
        req: Dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params:
            req["params"] = params
        out = self.sh(f"socat -t {int(timeout)} - UNIX-CONNECT:{SOCK}", user=user, input=json.dumps(req) + "\n",
                      timeout=timeout + 10)
        resp = json.loads(out.stdout)
        assert "error" not in resp, f"{method}: {resp['error']}"
        return resp["result"]

    def show(self, *props: str) -> Dict[str, str]:
        out = self.sh("systemctl show oracd " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def diag(self) -> str:
        if self.init_pid is None:
            return self.console_tail()
        parts = []
        for script in ("systemctl status oracd --no-pager -l -n 0", "journalctl -u oracd --no-pager -n 60 -o cat"):
            try:
                r = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={PATH_IN}",
                                    "/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
                parts.append(f"$ {script}\n{r.stdout}{r.stderr}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                parts.append(f"$ {script}: {exc}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- oracd helpers
    def start(self) -> Dict[str, str]:
        """(Re)start oracd fresh and wait for active: start is Type=notify, so it returns at READY=1."""
        self.sh("systemctl reset-failed oracd; timeout 240 systemctl restart oracd", timeout=250)
        return self.wait_active()

    def wait_active(self, timeout: float = 120, not_pid: str = "") -> Dict[str, str]:
        deadline = time.monotonic() + timeout
        st: Dict[str, str] = {}
        while time.monotonic() < deadline:
            st = self.show("ActiveState", "SubState", "MainPID", "NRestarts")
            if st.get("ActiveState") == "active" and st.get("MainPID") not in ("0", not_pid, None):
                return st
            time.sleep(0.25)
        raise AssertionError(f"oracd not active after {timeout}s: {st}\n{self.diag()}")

    def wait_child(self, cond, timeout: float = 60) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        child: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            child = self.rpc("status")["child"]
            if cond(child):
                return child
            time.sleep(0.25)
        raise AssertionError(f"child never reached the expected state; last: {child}\n{self.diag()}")

    def llama_servers(self) -> List[str]:
        return self.sh("pgrep -a -x llama-server", check=False).stdout.splitlines()


@pytest.fixture(scope="module")
def machine():
    _skip_unless_possible()
    t0 = time.monotonic()
    built = subprocess.run([str(TESTROOT_SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert built.returncode == 0, f"scripts/systemd-testroot failed:\n{built.stderr}\n{built.stdout}"
    paths = dict(line.split("=", 1) for line in built.stdout.splitlines() if "=" in line)
    root, wheels = Path(paths["ROOT"]), Path(paths["WHEELS"])
    print(f"\n[e2e] root {root} ready in {time.monotonic() - t0:.1f}s")
    m = Machine(root, wheels)
    try:
        print(f"[e2e] booted {m.name} in {m.boot():.1f}s")
        yield m
    finally:
        m.teardown()
        assert not m.work.exists(), f"temp dir {m.work} left behind"


@pytest.fixture(scope="module")
def installed(machine: Machine) -> Machine:
    """scripts/install run as root inside the machine, from a copy of this checkout, offline."""
    m = machine
    t0 = time.monotonic()
    excludes = " ".join(f"--exclude={shlex.quote('./' + e if '*' not in e else e)}" for e in SRC_EXCLUDES)
    m.sh(f"mkdir -p /usr/local/src/oracd && tar -C /src {excludes} -cf - . | tar -C /usr/local/src/oracd -xf -")
    out = m.sh("PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels /usr/local/src/oracd/scripts/install", timeout=600)
    assert "config OK: /etc/oracd/oracd.toml" in out.stdout + out.stderr, out.stdout + out.stderr
    print(f"[e2e] scripts/install took {time.monotonic() - t0:.1f}s")
    # What an admin does next (install's own "next steps"): binaries, a models dir, the default model.
    conf = m.sh("cat /etc/oracd/oracd.toml").stdout
    assert re.search(r'^socket_group = "orac"$', conf, re.M), "install did not set socket_group"
    for key, value in {"server_bin": '"/opt/llama.cpp/bin/llama-server"',
                       "quantize_bin": '"/opt/llama.cpp/bin/llama-quantize"',
                       "extra_models_dirs": '["/srv/oracd-models"]',
                       "default_model": json.dumps(SMOL), "preload": "true"}.items():
        conf, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", conf, count=1, flags=re.M)
        assert n == 1, f"{key} not in the installed oracd.toml"
    # a profile with a system prompt: warm-up saves its KV cache under the unit's CacheDirectory
    conf += f'\n[profiles."{SMOL}"]\nsystem_prompt = "You turn spoken home commands into JSON. Be brief."\n'
    m.sh("cat > /etc/oracd/oracd.toml && /opt/oracd/bin/oracd --config /etc/oracd/oracd.toml --check", input=conf)
    # alice may use oracd (group orac), mallory may not.
    m.sh("useradd --create-home --groups orac alice && useradd --create-home mallory")
    m.sh("systemctl enable oracd")      # as the README says; an enabled unit also stays loaded for `show`
    return m


def test_install_start_status_and_rpc_as_orac_member(installed: Machine):
    m = installed
    t0 = time.monotonic()
    st = m.start()
    print(f"[e2e] systemctl start oracd -> active in {time.monotonic() - t0:.1f}s (MainPID {st['MainPID']})")
    assert m.sh("systemctl is-active oracd").stdout.strip() == "active"
    status = m.sh("systemctl status oracd --no-pager -l -n 0", check=False).stdout
    assert READY_STATUS in status, status
    assert "Active: active (running)" in status, status
    # The socket: orac:orac 0660 in the 0750 runtime dir.
    assert m.sh(f"stat -c '%U:%G %a' {SOCK} /run/oracd").stdout.split("\n")[:2] == ["orac:orac 660", "orac:orac 750"]

    res = m.rpc("status")
    assert res["pid"] == int(st["MainPID"])
    assert res["child"]["state"] == "ready" and res["child"]["model"] == SMOL, res["child"]
    assert res["child"]["restarts"] == 0
    # warm-up saved the prefilled system prompt into the unit's private CacheDirectory (ProtectSystem=strict)
    warm = res["child"]["warm"]
    assert warm["how"] in ("prefilled", "restored") and warm["cache_dir"] == "/var/cache/oracd/kv", warm
    assert m.sh("stat -c '%U %a' /var/cache/oracd").stdout.strip() == "orac 700"
    assert m.sh("ls /var/cache/oracd/kv").stdout.count(".kv") == 1
    gen = m.rpc("generate", prompt="Turn on the kitchen lights", max_tokens=8, temperature=0)
    assert isinstance(gen["response"], str) and gen["model"] == SMOL
    assert 0 < gen["usage"]["completion_tokens"] <= 8
    # oracd saw alice's uid on the socket (SO_PEERCRED), not root's.
    alice_uid = int(m.sh("id -u alice").stdout)
    log = [json.loads(x) for x in m.sh("cat /var/log/oracd/orac.log").stdout.splitlines() if x.startswith("{")]
    assert any(e.get("event") == "request" and e.get("method") == "generate" and e.get("peer_uid") == alice_uid
               and e.get("outcome") == "ok" for e in log)

    denied = m.sh(f"socat -t 5 - UNIX-CONNECT:{SOCK}", user="mallory", check=False,
                  input='{"jsonrpc":"2.0","id":1,"method":"status"}\n')
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


def test_allowed_gids_sees_supplementary_groups_under_the_unit(installed: Machine):
    """The unit's ProtectProc=invisible hides /proc/<pid>/status of other users from oracd, so supplementary
    groups must come from SO_PEERGROUPS: alice is in orac only as a supplementary group (issue 21)."""
    m = installed
    orac_gid = int(m.sh("getent group orac | cut -d: -f3").stdout)
    assert orac_gid != int(m.sh("id -g alice").stdout) and str(orac_gid) in m.sh("id -G alice").stdout.split()
    conf = m.sh("cat /etc/oracd/oracd.toml").stdout
    limited, n = re.subn(r"^allowed_gids = .*$", f"allowed_gids = [{orac_gid}]", conf, count=1, flags=re.M)
    assert n == 1
    try:
        m.sh("cat > /etc/oracd/oracd.toml", input=limited)
        m.start()
        assert m.rpc("status")["child"]["state"] in ("ready", "loading", "starting")
        logged = m.sh("grep -c 'connection refused' /var/log/oracd/orac.log || true").stdout.strip()
        assert logged == "0", m.sh("tail -5 /var/log/oracd/orac.log").stdout
    finally:
        m.sh("cat > /etc/oracd/oracd.toml", input=conf)
        m.start()


def test_llama_server_sigkill_is_recovered(installed: Machine):
    m = installed
    st = m.start()
    child = m.wait_child(lambda c: c["state"] == "ready")
    assert child["restarts"] == 0
    m.sh(f"kill -KILL {child['pid']}")
    t0 = time.monotonic()
    after = m.wait_child(lambda c: c["state"] == "ready" and c["restarts"] == 1, timeout=90)
    print(f"[e2e] llama-server SIGKILL -> ready again in {time.monotonic() - t0:.1f}s")
    assert after["pid"] != child["pid"] and after["model"] == SMOL
    assert after["warm"]["how"] == "restored", after["warm"]        # from /var/cache/oracd/kv, verified
    gen = m.rpc("generate", prompt="Say hi", max_tokens=4, temperature=0)
    assert gen["usage"]["completion_tokens"] > 0
    # oracd itself never went down: same MainPID, no systemd restart.
    now = m.show("ActiveState", "MainPID", "NRestarts")
    assert (now["ActiveState"], now["MainPID"], now["NRestarts"]) == ("active", st["MainPID"], st["NRestarts"])
    assert len(m.llama_servers()) == 1, m.llama_servers()


def test_stop_is_clean(installed: Machine):
    m = installed
    if m.sh("systemctl is-active oracd", check=False).stdout.strip() != "active":
        m.start()
    assert m.sh(f"test -S {SOCK}", check=False).returncode == 0
    assert m.llama_servers()
    t0 = time.monotonic()
    m.sh("timeout 90 systemctl stop oracd", timeout=100)
    print(f"[e2e] systemctl stop oracd took {time.monotonic() - t0:.1f}s")
    st = m.show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "MainPID")
    assert st["ActiveState"] == "inactive" and st["Result"] == "success", st
    assert st["ExecMainCode"] == "1" and st["ExecMainStatus"] == "0", st     # CLD_EXITED with status 0
    assert m.sh(f"test -e {SOCK}", check=False).returncode == 1, "socket file left behind"
    assert m.llama_servers() == []
    journal = m.sh("journalctl -u oracd --no-pager -o cat -n 30").stdout
    assert "oracd.service: Deactivated successfully." in journal, journal
    assert "exit_code=0" in [ln for ln in journal.splitlines() if "oracd stopped" in ln][-1], journal


def test_watchdog_restarts_a_sigstopped_oracd(installed: Machine):
    m = installed
    dropin = "/etc/systemd/system/oracd.service.d/50-e2e-watchdog.conf"
    m.sh(f"mkdir -p {os.path.dirname(dropin)} && printf '[Service]\\nWatchdogSec=4\\n' > {dropin} "
         "&& systemctl daemon-reload")
    old_pid = ""
    try:
        st = m.start()
        assert m.show("WatchdogUSec")["WatchdogUSec"] == "4s"
        old_pid, old_restarts = st["MainPID"], int(st["NRestarts"])
        m.sh(f"kill -STOP {old_pid}")
        t0 = time.monotonic()
        new = m.wait_active(timeout=120, not_pid=old_pid)
        print(f"[e2e] SIGSTOP -> watchdog restart -> active again in {time.monotonic() - t0:.1f}s "
              f"(MainPID {old_pid} -> {new['MainPID']}, NRestarts {old_restarts} -> {new['NRestarts']})")
        assert int(new["NRestarts"]) > old_restarts, new
        assert m.sh(f"test -d /proc/{old_pid}", check=False).returncode != 0, "the stopped oracd is still there"
        journal = m.sh("journalctl -u oracd --no-pager -o cat").stdout
        assert "oracd.service: Watchdog timeout (limit 4s)!" in journal, journal[-3000:]
        assert "Failed with result 'watchdog'" in journal
        res = m.rpc("status")
        assert res["pid"] == int(new["MainPID"]) and res["child"]["state"] == "ready", res
        assert len(m.llama_servers()) == 1, m.llama_servers()      # KillMode=mixed took the old one
    finally:
        if old_pid:
            m.sh(f"kill -CONT {old_pid} 2>/dev/null || true", check=False)
        m.sh(f"rm -f {dropin}; systemctl daemon-reload; timeout 90 systemctl stop oracd", check=False, timeout=100)


def test_rpc_worker_unit_serves_and_stops(installed: Machine):
    """The worker-box path of README "Several machines": env file, enable --now, a real HELLO, clean stop."""
    m = installed
    m.sh("cat > /etc/oracd/rpc-worker.env", input="ORACD_RPC_HOST=127.0.0.1\nORACD_RPC_PORT=50052\n"
         "ORACD_RPC_SERVER=/opt/llama.cpp/bin/rpc-server\nORACD_RPC_ARGS=--threads 1 --cache\n")
    m.sh("systemctl start oracd-rpc-worker")
    probe = ("/opt/oracd/bin/python -c \"import time; from oracd.workers.hello import hello\n"
             "for _ in range(100):\n    c = hello('127.0.0.1:50052', 1)\n    if c.answers: break\n"
             "    time.sleep(0.1)\nprint(c.answers, c.version)\"")
    assert m.sh(probe).stdout.split() == ["True", "7.0.0"]
    show = m.sh("systemctl show oracd-rpc-worker -p ActiveState -p User -p MainPID").stdout
    assert "ActiveState=active" in show and "User=orac" in show, show
    assert m.sh("stat -c %U /var/cache/oracd-rpc").stdout.strip() == "orac"
    m.sh("systemctl stop oracd-rpc-worker")
    show = m.sh("systemctl show oracd-rpc-worker -p ActiveState -p Result").stdout
    assert "ActiveState=inactive" in show and "Result=success" in show, show
    assert m.sh(probe, check=False).stdout.split()[:1] == ["False"]

