"""Benchmarks: oracd vs direct llama-server vs the old per-call llama-cli path (python -m bench)."""
