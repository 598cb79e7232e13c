"""The results as a PNG: warm generate latencies and the concurrency curve.

Why apart: matplotlib is an optional dependency (the ``bench`` extra, which scripts/bench installs); without it
the benchmark still writes its JSON and markdown.  Each panel is drawn only when its phase has figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

from .figures import GENERATE_VARIANTS, MAX_TOKENS
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
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for draw, ax in zip(panels, axes[0]):
        draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
