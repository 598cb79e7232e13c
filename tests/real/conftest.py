"""The real layer: llama.cpp, SmolLM2 and Gemma 3 are provisioned (never skipped) before any test here runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import BIN, GEMMA, MODELS, REPO, SMOL


@pytest.fixture(scope="session", autouse=True)
def provisioned() -> None:
    """Build/fetch llama.cpp, SmolLM2 and Gemma 3 if needed (seconds when cached; scripts/test has already done it,
    smoke test included)."""
    tools = all((BIN / b).exists() for b in ("llama-server", "llama-quantize", "rpc-server"))
    if not tools or not all((MODELS / m).exists() for m in (SMOL, GEMMA)):
        subprocess.run([sys.executable, "-m", "oracd.provision", "--test-models"], cwd=str(REPO), check=True)
