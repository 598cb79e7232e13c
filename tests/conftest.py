"""Shared fixtures: llama.cpp and the model are provisioned (never skipped), real oracd processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BIN, MODELS, REPO, SMOL, Oracd, write_tiny_f32


@pytest.fixture(scope="session", autouse=True)
def provisioned() -> None:
    """Build/fetch llama.cpp and SmolLM2 if needed (seconds when cached)."""
    if not all((BIN / b).exists() for b in ("llama-server", "llama-quantize", "rpc-server")) or not (MODELS / SMOL).exists():
        subprocess.run([sys.executable, "-m", "oracd.provision"], cwd=str(REPO), check=True)


@pytest.fixture(params=["asyncio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
def oracd():
    """One real oracd + llama-server + SmolLM2 shared by a test module."""
    d = Oracd().start()
    yield d
    d.cleanup()


@pytest.fixture
def fresh_oracd():
    """A real oracd for one test (for tests that kill or reconfigure things)."""
    made = []

    def make(**kw) -> Oracd:
        d = Oracd(**kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def tiny_f32(tmp_path) -> Path:
    return write_tiny_f32(tmp_path / "tiny-f32.gguf")
