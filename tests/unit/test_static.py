"""Static checks: the code runs on Python 3.10 (the Jetson), and git holds no models or binaries."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from helpers import REPO

# vermin 1.9 ships no __main__, so `python -m vermin` does not work; call its entry point instead.
# --eval-annotations: rpc.py evaluates annotations at runtime (typing.get_type_hints), so they must be
# 3.10-compatible too.  --no-config-file: results must not depend on a stray vermin.ini/setup.cfg.
# The tomllib import (oracd/config/toml.py) is guarded by `if sys.version_info >= (3, 11)`, which vermin honours itself,
# so no --backport or --exclude is needed.
VERMIN_ARGS = ["--target=3.10-", "--no-tips", "--violations", "--eval-annotations", "--no-config-file"]


def vermin(*paths: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
                           *VERMIN_ARGS, *paths], cwd=str(cwd), capture_output=True, text=True, timeout=300)


def test_code_runs_on_python_310():
    res = vermin("oracd", "client")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "requires" not in res.stdout, res.stdout
    assert "Analyzing" in res.stdout and "files" in res.stdout   # it really looked at the code


PROBES = {
    "except_star": "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "tomllib_unguarded": "import tomllib\n",
    "task_group": "import asyncio\n\nasync def f():\n    async with asyncio.TaskGroup() as tg:\n        pass\n",
    "typing_self": "from typing import Self\n",
    "datetime_utc": "import datetime\nNOW = datetime.datetime.now(datetime.UTC)\n",
    "enum_strenum": "from enum import StrEnum\n",
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_vermin_invocation_catches_311_only_code(tmp_path, name):
    """The same invocation must fail on code that needs Python 3.11+ (guards against a toothless check)."""
    (tmp_path / f"{name}.py").write_text(PROBES[name])
    res = vermin(str(tmp_path), cwd=tmp_path)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "3.11" in res.stdout, res.stdout


ALLOWED = {
    # `match` is Python 3.10 syntax, so it is fine on the Jetson; so is the guarded tomllib import
    "match_statement": "def f(x):\n    match x:\n        case 1:\n            return 1\n    return 0\n",
    "tomllib_guarded": ("from __future__ import annotations\nimport sys\n"
                        "if sys.version_info >= (3, 11):\n    import tomllib\n"
                        "else:\n    import tomli as tomllib\n"),
    "pep604_with_future": "from __future__ import annotations\n\ndef f(x: int | None) -> list[int]:\n    return []\n",
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_vermin_invocation_accepts_310_code(tmp_path, name):
    (tmp_path / f"{name}.py").write_text(ALLOWED[name])
    res = vermin(str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_all_code_compiles():
    res = subprocess.run([sys.executable, "-m", "compileall", "-q", "-f", "-x", r"/\.venv/",
                          "oracd", "client"], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------- git hygiene
def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=str(REPO), capture_output=True, text=True, timeout=60)


def tracked_files() -> List[str]:
    res = git("ls-files", "-z")
    assert res.returncode == 0, res.stderr
    files = [f for f in res.stdout.split("\0") if f]
    assert files, "git ls-files returned nothing"
    return files


def test_no_models_or_binaries_tracked():
    files = tracked_files()
    assert not [f for f in files if f.lower().endswith((".gguf", ".part", ".bin", ".safetensors"))]
    assert not [f for f in files if f.startswith(("bin/", "models/"))]
    magic = []
    for f in files:
        p = REPO / f
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                head = fh.read(4)
            if head in (b"\x7fELF", b"GGUF"):
                magic.append(f)
    assert not magic, f"binaries or models tracked in git: {magic}"


def test_no_large_files_tracked():
    big = [f for f in tracked_files()
           if (REPO / f).is_file() and not (REPO / f).is_symlink() and (REPO / f).stat().st_size > 1_000_000]
    assert not big, f"files over 1 MB tracked in git: {big}"


@pytest.mark.parametrize("path", ["bin/llama-server", "bin/llama-quantize", "models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "models/anything.gguf", "somewhere/else/model.gguf", "models/x.gguf.part",
                                  "run/oracd.sock", "logs/orac.log", "logs/orac.log.1"])
def test_build_products_and_runtime_files_are_ignored(path):
    res = git("check-ignore", "-q", "--no-index", path)
    assert res.returncode == 0, f"{path} is not ignored by .gitignore"


def test_logs_placeholder_is_not_ignored():
    assert git("check-ignore", "-q", "--no-index", "logs/.gitkeep").returncode == 1


def test_daemon_does_not_load_numpy():
    """oracd reads GGUF headers with gguf's enums only; gguf/__init__ would pull in numpy (~10 MB RSS)."""
    code = ("import sys, oracd.serve, oracd.models.gguf as m; "
            "assert m.GGUFValueType.STRING == 8 and m.LlamaFileType.MOSTLY_Q4_1 == 3; "
            "print(sorted(k for k in ('numpy', 'gguf', 'pydantic') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
