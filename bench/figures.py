"""From samples to the figures people read: comparisons between variants, the targets.

Pure (no processes, no third-party imports) so the arithmetic that decides "met" or "not met" is
unit-tested in milliseconds (tests/unit/test_bench_harness.py).  The names the measuring phases and
the report share (variants, labels, counts) live here too, for the same reason.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from .harness import div, sub

MAX_TOKENS = 16                     # the warm generate phase's completion length
OLD = "old per-call CLI"
GENERATE_VARIANTS = ("direct HTTP", "raw JSON-RPC", "compat client", OLD)
THROUGHPUT_CONNS = (1, 8)


def comparisons(res: Dict[str, Any]) -> Dict[str, Any]:
    """Overheads over direct HTTP and speed-ups over the old CLI, from the generate variants' p50s."""
    d, r, c, cli = (res[k]["p50"] for k in GENERATE_VARIANTS)
    return {"overhead_ms_p50": {"compat client": sub(c, d), "raw JSON-RPC": sub(r, d)},
            "overhead_ratio_p50": {"compat client": div(c, d, 4), "raw JSON-RPC": div(r, d, 4)},
            "speedup_vs_old_cli": {"direct HTTP": div(cli, d, 2), "compat client": div(cli, c, 2),
                                   "raw JSON-RPC": div(cli, r, 2),
                                   "share_of_direct_speedup": None if cli is None else div(d, c, 4)}}  # (cli/c)/(cli/d)


# ---------------------------------------------------------------------- targets
def target(value: Callable[[], Any], ok: Callable[[Any], Any], show: Callable[[Any], str]) -> Dict[str, Any]:
    """One goal: ``value()`` (missing when its phase failed or had no successful request) checked by ``ok``."""
    try:
        v = value()
    except (KeyError, TypeError, AttributeError, ValueError):
        v = None
    if v is None or (isinstance(v, tuple) and None in v):
        return {"met": False, "value": "not measured"}
    return {"met": bool(ok(v)), "value": show(v)}


def check_targets(res: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals for the full run, met or missed, from this run's figures."""
    g, mem = res["generate"], res["memory"]
    return {
        "generate overhead p50 <= max(1 ms, 2% of direct)": target(
            lambda: (g["overhead_ms_p50"]["compat client"], g["direct HTTP"]["p50"]),
            lambda v: v[0] <= max(1.0, 0.02 * v[1]), lambda v: f"{v[0]} ms"),
        "status p50 <= 0.3 ms (1 conn)": target(
            lambda: res["rpc"]["status latency ms (1 conn)"]["p50"], lambda v: v <= 0.3, lambda v: f"{v} ms"),
        "speed-up vs old CLI >= 97% of direct's": target(
            lambda: g["speedup_vs_old_cli"]["share_of_direct_speedup"], lambda v: v >= 0.97,
            lambda v: f"{v * 100:.1f}%"),
        ">= 95% of direct throughput at 8 clients": target(
            lambda: res["concurrency"]["8"]["ratio"], lambda v: v >= 0.95, lambda v: f"{v * 100:.1f}%"),
        "oracd RSS <= 60 MB": target(
            lambda: max(v for k, v in mem.items() if k.startswith("oracd RSS")), lambda v: v <= 60,
            lambda v: f"{v} MB"),
    }
