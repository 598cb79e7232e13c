"""The fake layer's stand-in: a real oracd whose llama-server is the scripted ``llama_server.py`` (no llama.cpp)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import write_tiny_f32

FAKE = Path(__file__).resolve().parent / "llama_server.py"


@pytest.fixture
def stand_in(fresh_oracd, tmp_path):
    """``make(fault, *options, models=("fake.gguf",), server=None, **llama)``: an oracd (not started) on the
    stand-in in mode ``fault`` with its extra ``options`` (``--gated``, ``--crash-after N``); each model a tiny
    GGUF, the first the default.  The stand-in's ``--state`` dir is ``tmp_path``."""
    def make(fault: str = "healthy", *options: str, models=("fake.gguf",), server=None, **llama):
        wrapper = tmp_path / "llama-server"
        extra = " ".join(options)
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} --fault {fault} {extra} --state {tmp_path} "$@"\n')
        wrapper.chmod(0o755)
        o = fresh_oracd(models=(), server=server,
                        llama={"server_bin": str(wrapper), "default_model": models[0], "threads": 1, **llama})
        for m in models:
            write_tiny_f32(o.models_dir / m)
        o.state = tmp_path
        return o
    return make
