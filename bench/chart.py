"""The results as a PNG: warm generate latencies, the concurrency curve, the warm-up variants.

Why apart: matplotlib is an optional dependency (the ``bench`` extra, which scripts/bench installs); without it
the benchmark still writes its JSON and markdown.  Each panel is drawn only when its phase has figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

from .figures import CRASH_VARIANTS, GENERATE_VARIANTS, MAX_TOKENS, WARM_LABELS
from .report import rows


def _generate_panel(raw: Dict[str, List[float]]) -> Callable[[Any], None]:
    names = [k for k in GENERATE_VARIANTS if raw.get(k)]

    def draw(ax: Any) -> None:
        ax.boxplot([raw[k] for k in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"warm generate, max_tokens {MAX_TOKENS}")
    return draw


def _concurrency_panel(conc: Dict[str, Any], levels: List[str]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        ax.plot([int(n) for n in levels], [conc[n]["direct_tok_s"] for n in levels], "o-", label="direct")
        ax.plot([int(n) for n in levels], [conc[n]["oracd_tok_s"] for n in levels], "s--", label="oracd")
        ax.set_xlabel("concurrent clients (= parallel slots)")
        ax.set_ylabel("completion tokens/s")
        ax.set_title("aggregate throughput")
        ax.legend()
    return draw


def warm_bars(w: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The warm-up panel's bars: per load variant and crash restart, the wait to ready and the first
    generate after it (p50s); a bar without both figures is left out."""
    bars = []
    for name, label in WARM_LABELS.items():
        v = w.get(name, {})
        bars.append({"label": label, "ready": v.get("load_ms", {}).get("p50"),
                     "first": v.get("first_ms", {}).get("p50")})
    for name in CRASH_VARIANTS:
        v = w.get("crash_restart", {}).get(name, {})
        bars.append({"label": f"crash restart,\n{WARM_LABELS[name]}", "ready": v.get("ready_ms", {}).get("p50"),
                     "first": v.get("first_ms", {}).get("p50")})
    return [b for b in bars if b["ready"] is not None and b["first"] is not None]


def _warmup_panel(bars: List[Dict[str, Any]], loads: int) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        x = range(len(bars))
        ready = [b["ready"] for b in bars]
        ax.bar(x, ready, label="load / restart to ready")
        ax.bar(x, [b["first"] for b in bars], bottom=ready, label="first generate")
        ax.set_xticks(list(x), [b["label"] for b in bars], fontsize=8)
        ax.set_ylabel("ms (p50)")
        ax.set_title(f"warm-up: to the first answer, p50 of {loads} load{'s' * (loads != 1)} each")
        ax.legend(fontsize=8)
    return draw


def write_chart(res: Dict[str, Any], raw: Dict[str, List[float]], path: Path) -> bool:
    """Whatever panels this run has figures for; False (nothing written) without matplotlib or figures."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = []
    if any(raw.get(k) for k in GENERATE_VARIANTS):
        panels.append(_generate_panel(raw))
    conc = res.get("concurrency", {"failed": True})
    levels = sorted((n for n, v in rows(conc) if v.get("oracd_tok_s") is not None
                     and v.get("direct_tok_s") is not None), key=int) if "failed" not in conc else []
    if levels:
        panels.append(_concurrency_panel(conc, levels))
    w = res.get("warmup", {"failed": True})
    bars = warm_bars(w) if "failed" not in w else []
    if bars:
        panels.append(_warmup_panel(bars, w["loads"]))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for draw, ax in zip(panels, axes[0]):
        draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
