"""Facts about this machine that decide which build runs here: architecture, CPU flags, compilers."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Set

from . import flavors as fl
from .build import is_complete
from .cache import cache_root


def cpu_flags() -> Set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _first_line(cmd: List[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "missing"


def compilers() -> Dict[str, str]:
    """The compilers cmake will pick (CC/CXX, else cc/c++), by resolved path and version line."""
    found = {}
    for var, default in (("CC", "cc"), ("CXX", "c++")):
        prog = os.environ.get(var) or default
        path = shutil.which(prog)
        real = os.path.realpath(path) if path else prog
        found[var.lower()] = f"{real}: {_first_line([prog, '--version'])}"
    found["cmake"] = _first_line(["cmake", "--version"])
    return found


def machine_key(flavor: fl.Flavor, cpu: Set[str]) -> Dict[str, object]:
    return fl.cache_key(flavor, arch=platform.machine(), compilers=compilers(), cpu_flags=cpu)


def cached_tool(name: str, cache: Optional[Path] = None) -> Optional[Path]:
    """A tool from this machine's default cache entry, if it was provisioned (e.g. rpc-server)."""
    cpu = cpu_flags()
    try:
        flavor = fl.choose(os.environ.get("ORACD_LLAMA_FLAVOR") or None, platform.machine(), cpu)
    except ValueError:
        return None
    entry = (cache or cache_root()) / "llama.cpp" / fl.entry_name(machine_key(flavor, cpu))
    tool = entry / "bin" / name
    return tool if is_complete(entry) and tool.exists() else None
