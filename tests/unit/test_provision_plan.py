"""Provisioning's pure decisions: which flavor, which cache key, what to try after a failed smoke test."""
from __future__ import annotations

import signal

import pytest

from oracd.child import exits
from oracd.provision import flavors as fl

X86_AVX512_AMX = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq",
                  "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
X86_OLD = {"sse4_2", "avx"}
CC = {"cc": "/usr/bin/gcc-12: gcc 12.2.0", "cxx": "/usr/bin/g++-12: g++ 12.2.0", "cmake": "cmake version 3.25.1"}


def key(flavor: str, arch: str = "x86_64", cpu=frozenset(X86_AVX512_AMX), compilers=CC) -> dict:
    return fl.cache_key(fl.flavors_for(arch)[flavor], arch=arch, compilers=compilers, cpu_flags=cpu)


def test_x86_default_is_the_portable_baseline_without_amx_or_avx512():
    flavor = fl.choose(None, "x86_64", X86_AVX512_AMX)
    assert flavor.name == "avx2"
    flags = set(flavor.flags)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX2=ON" in flags and "-DGGML_AVX512=OFF" in flags
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= flags
    assert not any(f.endswith("AMX_TILE=ON") or f.endswith("AMX_INT8=ON") for f in flags)


def test_avx512_opt_in_still_leaves_amx_out():
    flags = set(fl.choose("avx512", "x86_64", X86_AVX512_AMX).flags)
    assert "-DGGML_AVX512=ON" in flags and "-DGGML_AMX_INT8=OFF" in flags and "-DGGML_AVX512=OFF" not in flags


def test_aarch64_default_is_native_and_cuda_is_opt_in():
    assert fl.choose(None, "aarch64", {"fp", "asimd"}).name == "native"
    cuda = fl.choose("cuda", "aarch64", {"fp", "asimd"})
    assert "-DGGML_CUDA=ON" in cuda.flags and cuda.gpu


def test_cpu_without_avx2_gets_generic_and_cannot_ask_for_avx2():
    assert fl.choose(None, "x86_64", X86_OLD).name == "generic"
    with pytest.raises(ValueError, match="lacks: avx2, bmi2, f16c, fma"):
        fl.choose("avx2", "x86_64", X86_OLD)
    with pytest.raises(ValueError, match="unknown llama.cpp flavor 'turbo'"):
        fl.choose("turbo", "x86_64", X86_AVX512_AMX)


def test_key_changes_with_every_input_that_changes_the_binary():
    base = fl.entry_name(key("avx2"))
    assert base.startswith("0.3.36-avx2-x86_64-")
    assert fl.entry_name(key("avx512")) != base
    assert fl.entry_name(key("avx2", compilers={**CC, "cc": "/usr/bin/gcc-13: gcc 13.1"})) != base
    assert fl.entry_name(fl.cache_key(fl.flavors_for("x86_64")["avx2"], arch="x86_64", compilers=CC,
                                      cpu_flags=X86_AVX512_AMX, version="0.3.37")) != base
    assert fl.entry_name(key("generic", arch="aarch64", cpu={"fp"})) != fl.entry_name(key("generic"))


def test_portable_key_ignores_the_cpu_but_native_key_names_it():
    assert fl.entry_name(key("avx2", cpu=X86_AVX512_AMX)) == fl.entry_name(key("avx2", cpu={"avx", "avx2", "fma"}))
    assert fl.entry_name(key("native", cpu=X86_AVX512_AMX)) != fl.entry_name(key("native", cpu=X86_OLD))
    assert "amx_tile" in key("native")["cpu_flags"]


def A(flavor, built_now, ok=False, may=True):
    return fl.Attempt(flavor, built_now, ok, may)


@pytest.mark.parametrize("history, expected", [
    ((), ("native", False)),                                            # first: the requested flavor, cached if there
    ((A("native", False, ok=True),), None),                             # it passed: done
    ((A("native", True),), ("avx2", False)),                            # native crashed: the safe baseline (cached?)
    ((A("native", True), A("avx2", False)), ("avx2", True)),            # cached baseline crashed too: build it fresh
    ((A("native", True), A("avx2", True)), None),                       # a fresh baseline crashed: give up
    ((A("native", False, may=False),), None),                           # a plain error exit: no rebuild helps
])
def test_next_attempt_for_an_explicit_flavor(history, expected):
    assert fl.next_attempt("native", "avx2", history) == expected


def test_next_attempt_when_the_baseline_itself_was_cached_and_crashes():
    assert fl.next_attempt("avx2", "avx2", (A("avx2", False),)) == ("avx2", True)   # rebuild once
    assert fl.next_attempt("avx2", "avx2", (A("avx2", False), A("avx2", True))) is None
    assert fl.next_attempt("avx2", "avx2", (A("avx2", True),)) is None              # built now and crashed


def test_exits_name_the_signal():
    assert exits.describe(-signal.SIGSEGV) == "llama-server crashed (SIGSEGV)"
    assert exits.describe(-signal.SIGKILL) == "llama-server killed (SIGKILL)"
    assert exits.describe(-signal.SIGILL, "rpc-server") == "rpc-server crashed (SIGILL)"
    assert exits.describe(1) == "llama-server exited with code 1"
    assert exits.exit_info(-11) == {"returncode": -11, "signal": "SIGSEGV", "how": "crashed"}
    assert exits.exit_info(0) == {"returncode": 0, "how": "exited"}
    assert exits.describe(-200).endswith("killed (signal 200)")
