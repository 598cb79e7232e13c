"""Shared fixtures, and the three layers: ``unit`` (pure, no processes that need llama.cpp), ``fake``
(a real oracd with a scripted llama-server), ``real`` (real llama-server and SmolLM2, provisioned first by
``real/conftest.py``).  Each test gets its layer's marker from its directory: ``pytest -m unit``."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Oracd, write_tiny_f32

LAYERS = ("unit", "fake", "real")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


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
