"""The real layer: llama.cpp and SmolLM2 are provisioned (never skipped) before any test here runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import BIN, MODELS, REPO, SMOL


@pytest.fixture(scope="session", autouse=True)
def provisioned() -> None:
    """Build/fetch llama.cpp and SmolLM2 if needed (seconds when cached; scripts/test has already done it,
    smoke test included)."""
    if not all((BIN / b).exists() for b in ("llama-server", "llama-quantize", "rpc-server")) or not (MODELS / SMOL).exists():
        subprocess.run([sys.executable, "-m", "oracd.provision"], cwd=str(REPO), check=True)
