"""Benchmarks: oracd vs direct llama-server vs the old per-call llama-cli path (python -m bench); today's ORAC
shim warm vs cold (python -m bench.today)."""
