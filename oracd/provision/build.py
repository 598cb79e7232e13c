"""Build one cache entry of the llama.cpp tools from the llama-cpp-python sdist.

The caller holds the entry's lock.  Everything happens in a temporary sibling
directory (source, build tree, binaries); only a finished build with every tool
is renamed into place, with its key in ``KEY.json``.  The source and build tree
are removed afterwards: an entry is just ``bin/``, ``KEY.json`` and ``BUILT``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Dict, Mapping

from .cache import ProvisionError, Say, pip_download, tmp_sibling
from .flavors import COMMON_FLAGS, Flavor

# cmake target -> installed name (upstream names the RPC worker target ggml-rpc-server)
TARGETS: Dict[str, str] = {"llama-server": "llama-server", "llama-quantize": "llama-quantize",
                           "llama-cli": "llama-cli", "llama-completion": "llama-completion",
                           "ggml-rpc-server": "rpc-server"}


def is_complete(entry: Path) -> bool:
    return (entry / "BUILT").is_file() and (entry / "KEY.json").is_file() and all(
        os.access(entry / "bin" / t, os.X_OK) for t in TARGETS.values())


def _extract_source(sdist: Path, into: Path, say: Say) -> Path:
    say(f"extracting vendor/llama.cpp from {sdist.name}")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        try:
            tar.extractall(into, members=members, filter="tar")
        except TypeError:      # Python < 3.10.12 has no filter argument
            tar.extractall(into, members=members)
    return next(into.glob("*/vendor/llama.cpp"))


def _run(cmd: list, flavor: Flavor, step: str, quiet: bool = False) -> None:
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
    except (subprocess.CalledProcessError, OSError) as exc:
        raise ProvisionError(
            f"[provision] {step} llama.cpp ({flavor.name}) failed: {exc}. The compiler's message is above. "
            f"Setup needs cmake, a C/C++ compiler (g++ >= 9) and make; another flavor may build where this one "
            f"does not (ORACD_LLAMA_FLAVOR=generic scripts/setup), or point llama.server_bin at your own build."
        ) from None


def build_entry(entry: Path, flavor: Flavor, key: Mapping[str, object], downloads: Path, jobs: int,
                say: Say) -> None:
    """Build every tool for ``flavor`` and rename the result to ``entry`` (which must not exist)."""
    version = str(key["llama_cpp_python"])
    sdist = pip_download(f"llama-cpp-python=={version}", downloads, sdist=True, say=say)
    work = tmp_sibling(entry)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        try:
            src = _extract_source(sdist, work / "src", say)
        except (tarfile.TarError, OSError, StopIteration) as exc:
            sdist.unlink(missing_ok=True)      # a damaged download: fetched again next time
            raise ProvisionError(f"[provision] {sdist} is damaged ({exc}); removed it, run setup again") from None
        build = work / "build"
        flags = [*COMMON_FLAGS, *flavor.flags]
        say(f"configuring {flavor.name} ({flavor.summary}): cmake {' '.join(flags)}")
        _run(["cmake", "-S", str(src), "-B", str(build), *flags], flavor, "configuring", quiet=True)
        say(f"building {', '.join(TARGETS.values())} with {jobs} jobs (several minutes on 2 cores)")
        _run(["cmake", "--build", str(build), "-j", str(jobs), "--target", *TARGETS], flavor, "building")
        (work / "bin").mkdir()
        for target, name in TARGETS.items():
            shutil.copy2(build / "bin" / target, work / "bin" / name)
        shutil.rmtree(build)
        shutil.rmtree(work / "src")
        (work / "KEY.json").write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
        (work / "BUILT").write_text(f"built in {time.monotonic() - t0:.0f}s on {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        os.rename(work, entry)
        say(f"built {entry.name} in {time.monotonic() - t0:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
