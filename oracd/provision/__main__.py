"""Provision the llama.cpp tools and the embedded default model, and prove they run here.

Why: nothing prebuilt can be downloaded, but the PyPI source distribution of
llama-cpp-python vendors upstream llama.cpp.  We build only the tools oracd needs
(llama-server, llama-quantize, llama-cli, llama-completion, rpc-server) into a
cache entry outside the repo, keyed by everything that changes the binary
(``flavors.py``), and smoke-test llama-server on every run (``smoke.py``): a
cache can outlive the machine that filled it.  A crash at the smoke test drops
the entry and rebuilds once with the safe baseline; if that crashes too, setup
fails with a message that says what to do.

Usage: python -m oracd.provision [--flavor F] [--cache DIR] [--models-dir DIR] [--bin-dir DIR] [-j N] [--test-models]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Set, Tuple

from . import flavors as fl
from .build import TARGETS, build_entry, is_complete
from .cache import ProvisionError, cache_root, locked, place_file, place_link, read_json, remove_stale_tmp
from .machine import cpu_flags, machine_key
from .models import DEFAULT_MODEL, SECOND_MODEL, fetch_default_model, fetch_second_model
from .smoke import Verdict, smoke_test

LLAMA_CPP_PYTHON_VERSION = fl.LLAMA_CPP_PYTHON_VERSION
REPO_ROOT = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    print(f"[provision] {msg}", flush=True)


# ---------------------------------------------------------------------- steps
def prune_legacy(llama_root: Path) -> None:
    """Entries from before keyed caching (``llama.cpp/<version>``, built -march=native) are never reused."""
    if not llama_root.is_dir():
        return
    for d in llama_root.iterdir():
        if d.is_dir() and (d / "BUILT").exists() and not (d / "KEY.json").exists():
            say(f"removing {d}: an unkeyed cache entry from an older setup (never reused)")
            shutil.rmtree(d, ignore_errors=True)


def try_flavor(cache: Path, flavor: fl.Flavor, cpu: Set[str], model: Path, fresh: bool, jobs: int
               ) -> Tuple[Path, bool, Verdict]:
    """Under the entry's lock: reuse (or build) the entry, smoke-test it, drop it if it fails."""
    key = machine_key(flavor, cpu)
    root = cache / "llama.cpp"
    entry = root / fl.entry_name(key)
    with locked(root / f"{entry.name}.lock", say, entry.name):
        remove_stale_tmp(entry)
        if fresh or (entry.exists() and (not is_complete(entry) or read_json(entry / "KEY.json") != key)):
            shutil.rmtree(entry, ignore_errors=True)
        built_now = not entry.exists()
        if built_now:
            build_entry(entry, flavor, key, cache / "downloads", jobs, say)
        else:
            say(f"llama.cpp {entry.name}: cached")
        verdict = smoke_test(entry / "bin" / "llama-server", model, gpu=flavor.gpu)
        if verdict.ok:
            say(f"smoke test passed in {verdict.seconds:.1f}s: {entry.name} {verdict.detail}")
        else:
            say(f"smoke test FAILED ({entry.name}, {'built now' if built_now else 'cached'}): {verdict.detail}")
            for line in verdict.tail[-6:]:
                say(f"  | {line}")
            say(f"dropping cache entry {entry}")
            shutil.rmtree(entry, ignore_errors=True)
    return entry, built_now, verdict


def provision_tools(cache: Path, requested: Optional[str], model: Path, jobs: int) -> Path:
    """The bin dir of a cache entry whose llama-server passed the smoke test here."""
    arch, cpu = platform.machine(), cpu_flags()
    try:
        first = fl.choose(requested, arch, cpu)
    except ValueError as exc:
        raise ProvisionError(f"[provision] {exc}") from None
    safe = fl.safe_flavor(arch, cpu)
    table = fl.flavors_for(arch)
    prune_legacy(cache / "llama.cpp")
    history: Tuple[fl.Attempt, ...] = ()
    verdicts: List[Tuple[str, Verdict]] = []
    while True:
        step = fl.next_attempt(first.name, safe, history)
        if step is None:
            break
        name, fresh = step
        if history:
            say(f"retrying with the safe baseline {name!r}" + (" (fresh build)" if fresh else ""))
        try:
            entry, built_now, verdict = try_flavor(cache, table[name], cpu, model, fresh, jobs)
        except ProvisionError as exc:
            if not verdicts:
                raise
            # the retry's build failed: report it together with the crashes that led to it
            verdicts.append((f"{name} (fresh build)", Verdict(False, "build_failed", str(exc.code).removeprefix("[provision] "))))
            break
        if verdict.ok:
            return entry / "bin"
        history += (fl.Attempt(name, built_now, False, verdict.kind in ("crashed", "killed", "hung", "bad_answer")),)
        verdicts.append((name, verdict))
    raise ProvisionError(failure_message(verdicts, safe))


def failure_message(verdicts: List[Tuple[str, Verdict]], safe: str) -> str:
    lines = ["[provision] llama-server does not run on this machine:"]
    for name, v in verdicts:
        lines.append(f"  - {name}: {v.detail}")
    last = verdicts[-1][1]
    if last.tail:
        lines.append("  its last output:")
        lines += [f"    | {t}" for t in last.tail[-8:]]
    lines += [
        "What you can do:",
        f"  - check the CPU: `grep -o -w 'avx2\\|fma\\|f16c\\|bmi2' /proc/cpuinfo | sort -u` (the {safe!r} build needs them);",
        "  - try the slowest, most portable build: `ORACD_LLAMA_FLAVOR=generic scripts/setup`;",
        "  - or build llama.cpp yourself and point llama.server_bin / llama.quantize_bin in the config at it.",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oracd.provision", description=__doc__.splitlines()[0])
    ap.add_argument("--flavor", default=os.environ.get("ORACD_LLAMA_FLAVOR") or None,
                    help="llama.cpp build: avx2 (x86-64 default), native (aarch64 default), avx512, cuda, generic "
                         "(default: $ORACD_LLAMA_FLAVOR, else this machine's default)")
    ap.add_argument("--cache", type=Path, default=cache_root(), help="cache dir (default: %(default)s)")
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models",
                    help="where to place the default model (default: %(default)s)")
    ap.add_argument("--bin-dir", type=Path, default=REPO_ROOT / "bin",
                    help="where to link the binaries (default: %(default)s)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--test-models", action="store_true",
                    help=f"also fetch the test suite's second architecture, {SECOND_MODEL} (about 250 MB)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    model = fetch_default_model(args.cache, say)
    extra = [fetch_second_model(args.cache, say)] if args.test_models else []
    t_model = time.monotonic()
    bins = provision_tools(args.cache, args.flavor, model, args.jobs)
    for name in TARGETS.values():
        place_link(bins / name, args.bin_dir / name)
    for m in [model] + extra:
        place_file(m, args.models_dir / m.name)
    say(f"binaries: {args.bin_dir} -> {bins}")
    say(f"models:   {args.models_dir}")
    say(f"done in {time.monotonic() - t0:.1f}s (models {t_model - t0:.1f}s, tools and smoke test "
        f"{time.monotonic() - t_model:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
