"""An installed (non-editable) oracd has everything it needs: subpackages and the eval corpus.

scripts/install builds a regular wheel into /opt/oracd; an editable checkout hides
missing package data because the files are still next to the code.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import REPO


def test_wheel_ships_subpackages_and_the_eval_corpus(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                    "-w", str(wheels), str(REPO)], check=True, timeout=600, capture_output=True)
    (wheel,) = wheels.glob("oracd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "oracd_client/cli/data/commands.jsonl" in names
    assert {"oracd/provision/__main__.py", "oracd/provision/flavors.py"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True, timeout=600, capture_output=True)
    # run from outside the checkout with only the installed copy of oracd on the path
    code = ("import json, oracd_client.cli.eval as e; items = e.load_corpus(e.DEFAULT_CORPUS); "
            "print(json.dumps([str(e.DEFAULT_CORPUS), len(items)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path, n = json.loads(out.stdout)
    assert Path(path).is_relative_to(site) and n == 75
