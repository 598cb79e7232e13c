"""From samples to the figures people read: comparisons between variants, the warm-up results, the targets.

Pure (no processes, no third-party imports) so the arithmetic that decides "met" or "not met" is
unit-tested in milliseconds (tests/unit/test_bench_harness.py).  The names the measuring phases and
the report share (variants, labels, counts) live here too, for the same reason.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .harness import div, summary, sub

MAX_TOKENS = 16                     # the warm generate phase's completion length
OLD = "old per-call CLI"
GENERATE_VARIANTS = ("direct HTTP", "raw JSON-RPC", "compat client", OLD)
THROUGHPUT_CONNS = (1, 8)

# Warm-up variants: JSON key -> what the report calls it.  "warmup on"/"warmup off" keep the keys of the
# results before warm restore existed ("warmup on" was then, as now, a prefill warm-up).
WARM_LABELS = {"warmup off": "no warm-up", "warmup on": "prefill warm-up", "restore": "restore"}
WARM_SETTINGS = {"warmup off": "warmup = false", "warmup on": "warmup = true, warm_restore = false",
                 "restore": "warmup = true, warm_restore = true"}
EXPECTED_HOW = {"warmup off": "none", "warmup on": "prefilled", "restore": "restored"}   # status.child.warm.how
CRASH_VARIANTS = ("warmup on", "restore")
LOAD_STEPS = ("load_ms", "first_ms", "load_plus_first_ms", "second_ms", "warmup_ms")
CRASH_STEPS = ("ready_ms", "first_ms", "ready_plus_first_ms", "warmup_ms")


def comparisons(res: Dict[str, Any]) -> Dict[str, Any]:
    """Overheads over direct HTTP and speed-ups over the old CLI, from the generate variants' p50s."""
    d, r, c, cli = (res[k]["p50"] for k in GENERATE_VARIANTS)
    return {"overhead_ms_p50": {"compat client": sub(c, d), "raw JSON-RPC": sub(r, d)},
            "overhead_ratio_p50": {"compat client": div(c, d, 4), "raw JSON-RPC": div(r, d, 4)},
            "speedup_vs_old_cli": {"direct HTTP": div(cli, d, 2), "compat client": div(cli, c, 2),
                                   "raw JSON-RPC": div(cli, r, 2),
                                   "share_of_direct_speedup": None if cli is None else div(d, c, 4)}}  # (cli/c)/(cli/d)


# ---------------------------------------------------------------------- warm-up
def steps_summary(samples: Dict[str, List[float]], steps: tuple, failures: Dict[str, Any]) -> Dict[str, Any]:
    """One variant's steps summarised (each step always present: n 0 and p50 None when nothing succeeded),
    with its failures and its raw samples (``_raw``: moved out of the results before they are written)."""
    out: Dict[str, Any] = {k: summary(samples.get(k, [])) for k in steps}
    out["failures"] = failures
    out["_raw"] = {k: list(samples.get(k, [])) for k in steps}
    return out


def _p50(d: Dict[str, Any], step: str) -> Optional[float]:
    return d.get(step, {}).get("p50")


def warm_results(loads: int, times: Dict[str, Dict[str, List[float]]], crash: Dict[str, Dict[str, List[float]]],
                 failures: Callable[[str], Dict[str, Any]], **info: Any) -> Dict[str, Any]:
    """The warm-up phase's results: a summary per variant (``times``, keyed as WARM_LABELS) and per crash
    restart variant (``crash``), the old on/off savings, and the warm-restore targets.  ``failures(key)``
    gives a key's failures (keys: the variant, and "<variant> crash restart"); ``info`` is copied as is."""
    res: Dict[str, Any] = {"loads": loads, **info}
    for name in WARM_LABELS:
        res[name] = steps_summary(times.get(name, {}), LOAD_STEPS, failures(name))
    res["crash_restart"] = {name: steps_summary(crash.get(name, {}), CRASH_STEPS, failures(f"{name} crash restart"))
                            for name in CRASH_VARIANTS}
    on, off = res["warmup on"], res["warmup off"]
    res["first_request_saving_ms_p50"] = sub(_p50(off, "first_ms"), _p50(on, "first_ms"))
    res["first_request_speedup_p50"] = div(_p50(off, "first_ms"), _p50(on, "first_ms"), 2)
    res["load_plus_first_saving_ms_p50"] = sub(_p50(off, "load_plus_first_ms"), _p50(on, "load_plus_first_ms"))
    res["targets"] = warm_targets(res)
    return res


def pop_raw(w: Dict[str, Any]) -> Dict[str, Any]:
    """Take the raw samples out of a warm-up result (they go to the JSON's ``warmup_raw_ms``)."""
    raw: Dict[str, Any] = {k: w[k].pop("_raw") for k in WARM_LABELS if isinstance(w.get(k), dict) and "_raw" in w[k]}
    crash = w.get("crash_restart", {})
    raw["crash_restart"] = {k: v.pop("_raw") for k, v in crash.items() if "_raw" in v}
    return raw


def _ratio_text(a: float, b: float) -> str:
    return f"{a:.1f} ms vs {b:.1f} ms (x{a / b:.2f})" if b else f"{a:.1f} ms vs {b:.1f} ms"


def warm_targets(w: Dict[str, Any]) -> Dict[str, Any]:
    """The goals for warm restore, from the p50s: restore's load close to no warm-up's, its first
    request close to the steady state, and the two together close to "load with nothing + a warm request".
    The steady state is the second generate after a load, of the same daemon (restore's own for the
    first-request goal, no warm-up's for the last one)."""
    rs, off = w.get("restore", {}), w.get("warmup off", {})
    return {
        "restore load_model <= 1.3x no warm-up's": target(
            lambda: (_p50(rs, "load_ms"), _p50(off, "load_ms")),
            lambda v: v[0] <= 1.3 * v[1], lambda v: _ratio_text(*v)),
        "restore first generate <= 1.1x steady-state generate": target(
            lambda: (_p50(rs, "first_ms"), _p50(rs, "second_ms")),
            lambda v: v[0] <= 1.1 * v[1], lambda v: _ratio_text(*v)),
        "restore load + first generate <= 1.2x (no warm-up load + steady-state generate)": target(
            lambda: (_p50(rs, "load_plus_first_ms"), _p50(off, "load_ms") + _p50(off, "second_ms")),
            lambda v: v[0] <= 1.2 * v[1], lambda v: _ratio_text(*v)),
    }


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
    """The project's performance goals for the full run, met or missed, from this run's figures (the warm-up phase
    carries its own, ``res["warmup"]["targets"]``)."""
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
