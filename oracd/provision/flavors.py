"""Which llama.cpp build to make here, and the cache key that names it.  Pure: no I/O.

Why flavors: a ``-march=native`` build on an x86-64 VM that reports AMX compiles
ggml's AMX kernels, and llama-server then segfaults on its first decode.  So on
x86-64 the default is a portable baseline (AVX2/FMA/F16C/BMI2, AMX and AVX-512
off) that runs on any CPU since Haswell; ``native``, ``avx512`` and ``cuda`` are
opt-in, and whatever is built must pass the smoke test before it is used.  On
aarch64 (the Jetson) the default is a native build, as upstream recommends.

Why this key: a cached binary is only reusable where every input that changes
it is the same: the llama.cpp version, the flavor's cmake flags, the machine
architecture and the compilers.  A native build also depends on the CPU it was
built on, so its key includes the CPU's feature flags.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Tuple

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

COMMON_FLAGS: Tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_RPC=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    # llamafile's sgemm takes a prompt's matmuls from 2 rows up, a generated token's take ggml's vec_dot: the
    # same token then gets other logits in a batch than alone, which no runtime flag turns off.  Off, so a
    # batch-invariant child ([llama] batch_invariant, child/command.py) answers the same either way.  Cost
    # measured on Gemma 3's Q5_0/Q8_0 tensors: prompt processing about 30% slower; SmolLM2 (Q4_1): none.
    "-DGGML_LLAMAFILE=OFF",
)
_NO_AMX = ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")
_X86_AVX2 = ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
             "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", *_NO_AMX)


@dataclass(frozen=True)
class Flavor:
    name: str
    flags: Tuple[str, ...]          # cmake -D flags on top of COMMON_FLAGS
    needs: FrozenSet[str]           # CPU flags (/proc/cpuinfo names) the binary executes
    cpu_specific: bool              # the compiler looks at this CPU (-march=native): key it by CPU
    gpu: bool = False               # smoke-test with every layer offloaded
    summary: str = ""


_X86: Dict[str, Flavor] = {f.name: f for f in (
    Flavor("avx2", _X86_AVX2, frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}), False,
           summary="portable x86-64 baseline: AVX2/FMA/F16C/BMI2, no AVX-512, no AMX (the default)"),
    Flavor("generic", ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=OFF", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF",
                       "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF", "-DGGML_AVX512=OFF", *_NO_AMX),
           frozenset(), False, summary="any x86-64 CPU, slow: the default where AVX2 is missing"),
    Flavor("avx512", (*_X86_AVX2[:-4], "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
                      "-DGGML_AVX512_BF16=ON", *_NO_AMX),
           frozenset({"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                      "avx512vbmi", "avx512_vnni", "avx512_bf16"}), False,
           summary="opt-in: the baseline plus AVX-512 (VBMI/VNNI/BF16), still no AMX"),
    Flavor("native", ("-DGGML_NATIVE=ON",), frozenset(), True,
           summary="opt-in: -march=native, everything this CPU reports (AMX included; the smoke test decides)"),
    Flavor("cuda", (*_X86_AVX2, "-DGGML_CUDA=ON"), frozenset({"avx2", "fma", "f16c", "bmi2"}), False, gpu=True,
           summary="opt-in: the baseline CPU part plus CUDA (needs nvcc)"),
)}
_ARM: Dict[str, Flavor] = {f.name: f for f in (
    Flavor("native", ("-DGGML_NATIVE=ON",), frozenset(), True,
           summary="-mcpu=native: the aarch64 default (the Jetson builds for its own cores)"),
    Flavor("generic", ("-DGGML_NATIVE=OFF",), frozenset(), False, summary="armv8 baseline, slow"),
    Flavor("cuda", ("-DGGML_NATIVE=ON", "-DGGML_CUDA=ON"), frozenset(), True, gpu=True,
           summary="opt-in: native CPU part plus CUDA (the Jetson's GPU; needs nvcc)"),
)}


def flavors_for(arch: str) -> Dict[str, Flavor]:
    if arch in ("x86_64", "amd64", "AMD64"):
        return _X86
    if arch in ("aarch64", "arm64"):
        return _ARM
    return {"native": _ARM["native"], "generic": Flavor("generic", ("-DGGML_NATIVE=OFF",), frozenset(), False,
                                                       summary="no CPU-specific code")}


def safe_flavor(arch: str, cpu_flags: Iterable[str]) -> str:
    """The flavor to fall back to: the portable baseline if this CPU can run it, else generic."""
    table = flavors_for(arch)
    if "avx2" in table:
        return "avx2" if table["avx2"].needs <= set(cpu_flags) else "generic"
    return "native" if "native" in table and arch in ("aarch64", "arm64") else "generic"


def default_flavor(arch: str, cpu_flags: Iterable[str]) -> str:
    """x86-64: the portable baseline (never AMX); aarch64: native."""
    return safe_flavor(arch, cpu_flags)


def choose(requested: Optional[str], arch: str, cpu_flags: Iterable[str]) -> Flavor:
    """The flavor to build; a clear ValueError for an unknown one or a CPU that cannot run it."""
    table = flavors_for(arch)
    name = requested or default_flavor(arch, cpu_flags)
    if name not in table:
        raise ValueError(f"unknown llama.cpp flavor {name!r} on {arch} (known: {', '.join(sorted(table))})")
    flavor = table[name]
    missing = flavor.needs - set(cpu_flags)
    if missing:
        raise ValueError(f"flavor {name!r} needs CPU features this machine lacks: {', '.join(sorted(missing))} "
                         f"(use {safe_flavor(arch, cpu_flags)!r})")
    return flavor


def cache_key(flavor: Flavor, *, arch: str, compilers: Mapping[str, str], cpu_flags: Iterable[str],
              version: str = LLAMA_CPP_PYTHON_VERSION) -> Dict[str, object]:
    """Everything that changes the binary.  Two setups share an entry only if these are equal."""
    key: Dict[str, object] = {
        "llama_cpp_python": version,
        "flavor": flavor.name,
        "cmake_flags": list(COMMON_FLAGS + flavor.flags),
        "arch": arch,
        "compilers": dict(sorted(compilers.items())),
    }
    if flavor.cpu_specific:
        key["cpu_flags"] = sorted(set(cpu_flags))
    return key


def entry_name(key: Mapping[str, object]) -> str:
    """The cache directory name: readable prefix, then a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{key['llama_cpp_python']}-{key['flavor']}-{key['arch']}-{digest}"


@dataclass(frozen=True)
class Attempt:
    """One provisioning try: which flavor, whether it was built just now, how its smoke test went."""
    flavor: str
    built_now: bool
    ok: bool
    rebuild_may_help: bool


def next_attempt(requested: str, safe: str, history: Tuple[Attempt, ...]) -> Optional[Tuple[str, bool]]:
    """What to try next: ``(flavor, fresh)`` or None (done, or give up).

    The requested flavor is tried first (cached if present).  If it crashes or
    hangs, the safe baseline is tried: its cached entry if one exists, and a fresh
    build of it once at most.  A plain error exit is not retried: a rebuild
    would not change it, the message has to be read.
    """
    if not history:
        return requested, False
    last = history[-1]
    if last.ok or not last.rebuild_may_help:
        return None
    tried_safe = [a for a in history if a.flavor == safe]
    if any(a.built_now for a in tried_safe):
        return None                     # the safe baseline was built here and still fails: give up
    return safe, bool(tried_safe)       # a cached safe entry failed: build it fresh once
