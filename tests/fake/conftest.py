"""The fake layer: a real oracd whose llama-server and llama-quantize are scripted stand-ins (``llama_server.py``,
``llama_quantize.py``).  No llama.cpp and no models: these tests run on a fresh clone before provisioning."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import helpers
from helpers import stand_in_script, write_tiny_f32

HERE = Path(__file__).resolve().parent
FAKE = HERE / "llama_server.py"


@pytest.fixture(autouse=True)
def stand_in_bin(tmp_path_factory, monkeypatch) -> Path:
    """helpers.BIN for this layer: ``llama-server`` (the stand-in, healthy) and ``llama-quantize`` wrappers."""
    d = tmp_path_factory.mktemp("bin")
    for name, script, args in (("llama-server", FAKE, "--fault healthy"), ("llama-quantize", HERE / "llama_quantize.py", "")):
        (d / name).write_text(f'#!/bin/sh\nexec {sys.executable} {script} {args} "$@"\n')
        (d / name).chmod(0o755)
    monkeypatch.setattr(helpers, "BIN", d)
    return d


@pytest.fixture
def stand_in(fresh_oracd, tmp_path):
    """``make(fault, *options, models=("fake.gguf",), server=None, **llama)``: an oracd (not started) on the
    stand-in in mode ``fault`` with its extra ``options`` (``--gated``, ``--crash-after N``); each model a tiny
    GGUF, the first the default.  The stand-in's ``--state`` dir is ``tmp_path``."""
    def make(fault: str = "healthy", *options: str, models=("fake.gguf",), server=None, **llama):
        wrapper = stand_in_script(tmp_path, fault, *options)
        o = fresh_oracd(models=(), server=server,
                        llama={"server_bin": str(wrapper), "default_model": models[0], "threads": 1, **llama})
        for m in models:
            write_tiny_f32(o.models_dir / m)
        o.state = tmp_path
        return o
    return make
