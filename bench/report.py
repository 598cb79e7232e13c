"""The results as markdown: one table per phase, failures and unmeasured phases said under their table.

Why apart from the measuring: the text is what people paste into README and closing notes, and it is
pure (results dict in, lines out), so a change of wording never touches a measurement.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from .figures import GENERATE_VARIANTS, MAX_TOKENS
from .harness import failures_note, first_line

STDLIB_PHASE = "stdlib-loop RPC floor"


def num(v: Any) -> str:
    return "-" if v is None else str(v)


def fmt(v: Any, with_p99: bool = False) -> str:
    if not isinstance(v, dict):
        return num(v)
    return f"p50 {num(v['p50'])} / p99 {num(v['p99'])}" if with_p99 else f"p50 {num(v['p50'])}"


def rows(d: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """A phase result's table rows: everything but its bookkeeping."""
    return [(k, v) for k, v in d.items() if k not in ("failures", "failed", "_raw")]


def not_measured(title: str, r: Dict[str, Any]) -> str:
    return f"**{title}: not measured** ({first_line(r['failed'])})."


def with_notes(lines: List[str], notes: List[str]) -> List[str]:
    """Notes under a table, each its own paragraph (a line right under a table would be read as a row)."""
    for note in notes:
        lines = lines + ([""] if lines else []) + [note]
    return lines


def section(title: str, r: Dict[str, Any], render: Callable[[Dict[str, Any]], List[str]]) -> List[str]:
    """One phase's markdown: its table, or why it could not run; then its failed requests, if any."""
    body = [not_measured(title, r)] if "failed" in r else render(r)
    return with_notes(body, failures_note(r.get("failures", {})))


def targets_table(head: str, targets: Dict[str, Dict[str, Any]]) -> List[str]:
    return [f"| {head} | met | value |", "|---|---|---|"] + [
        f"| {k} | {'yes' if v['met'] else 'NO'} | {v['value']} |" for k, v in targets.items()]


# ---------------------------------------------------------------------- warm-up
def warmup_markdown(w: Dict[str, Any]) -> List[str]:
    tokens = w["first_request_prompt_tokens"]
    lines = [f"| warm-up ({w['loads']} loads each, {f'{tokens}-token ' if tokens else ''}few-shot prompt) "
             "| warmup = true p50 ms | warmup = false p50 ms |", "|---|---|---|"]
    labels = {"load_ms": "load_model (includes warm-up)", "first_ms": "first generate after the load",
              "load_plus_first_ms": "load + first generate", "second_ms": "second generate (steady state)"}
    for k, label in labels.items():
        on, off = (num(w[name].get(k, {}).get("p50")) for name in ("warmup on", "warmup off"))
        lines.append(f"| {label} | {on} | {off} |")
    if "warmup_ms" in w["warmup on"]:
        lines.append(f"| status.child.warmup_ms | {w['warmup on']['warmup_ms']['p50']} | - |")
    return lines + ["", f"Warm-up saves {num(w['first_request_saving_ms_p50'])} ms on the first request after a "
                    f"load (x{num(w['first_request_speedup_p50'])}); load + first request: "
                    f"{num(w['load_plus_first_saving_ms_p50'])} ms saved."]


# ---------------------------------------------------------------------- the other phases
def generate_markdown(g: Dict[str, Any]) -> List[str]:
    lines = ["| warm generate | p50 ms | p95 ms |", "|---|---|---|"]
    for k in GENERATE_VARIANTS:
        lines.append(f"| {k} | {num(g[k]['p50'])} | {num(g[k]['p95'])} |")
    share = g["speedup_vs_old_cli"]["share_of_direct_speedup"]
    return lines + [
        "", f"oracd overhead at p50: raw JSON-RPC {num(g['overhead_ms_p50']['raw JSON-RPC'])} ms "
        f"(x{num(g['overhead_ratio_p50']['raw JSON-RPC'])}), compat client "
        f"{num(g['overhead_ms_p50']['compat client'])} ms (x{num(g['overhead_ratio_p50']['compat client'])}).",
        f"Speed-up over the old per-call CLI: direct x{num(g['speedup_vs_old_cli']['direct HTTP'])}, "
        f"compat client x{num(g['speedup_vs_old_cli']['compat client'])} "
        f"({'-' if share is None else f'{share * 100:.1f}'}% of direct's)."]


def concurrency_markdown(c: Dict[str, Any]) -> List[str]:
    lines = ["| concurrent clients | oracd tok/s | direct tok/s | oracd/direct |", "|---|---|---|---|"]
    for n, v in sorted(rows(c), key=lambda kv: int(kv[0])):
        if v.get("failed"):
            lines.append(f"| {n} | not measured | - | - |")
        else:
            lines.append(f"| {n} | {num(v['oracd_tok_s'])} | {num(v['direct_tok_s'])} | {num(v['ratio'])} |")
    return lines


def table(head: str, parts: Dict[str, Dict[str, Any]], with_p99: bool = False) -> List[str]:
    """One two-column table from several phases' rows; a failed phase becomes a note under it."""
    body: List[str] = []
    notes: List[str] = []
    for title, r in parts.items():
        if "failed" in r:
            notes.append(not_measured(title, r))
        else:
            body += [f"| {k} | {fmt(v, with_p99)} |" for k, v in rows(r)]
        notes += failures_note(r.get("failures", {}))
    return with_notes([head, "|---|---|", *body] if body else [], notes)


def to_markdown(res: Dict[str, Any]) -> str:
    g = res["generate"]
    runs = "-" if "failed" in g else g["direct HTTP"]["n"]
    lines = [f"Benchmark {res['when']} on {res['machine']} (SmolLM2-135M Q4_1, max_tokens {MAX_TOKENS}, "
             f"temperature 0, {runs} interleaved runs)", ""]
    lines += section("warm generate", g, generate_markdown) + [""]
    lines += table("| RPC floor | value |", {"RPC floor": res["rpc"], STDLIB_PHASE: res["rpc_stdlib_loop"]},
                   with_p99=True) + [""]
    lines += section("concurrency", res["concurrency"], concurrency_markdown) + [""]
    lines += table("| cold start / memory | value |", {"cold start": res["cold_start"], "memory": res["memory"]})
    if "warmup" in res:
        lines += [""] + section("warm-up", res["warmup"], warmup_markdown)
    lines += [""] + targets_table("target", res["targets"])
    failed = [k for k, v in res.get("phases", {}).items() if v.get("failed")]
    if failed:
        lines += ["", f"Phases that could not run: {', '.join(failed)} (why: the JSON's \"phases\")."]
    return "\n".join(lines) + "\n"
