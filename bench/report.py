"""The results as markdown: one table per phase, failures and unmeasured phases said under their table.

Why apart from the measuring: the text is what people paste into bench/README.md and closing notes, and it is
pure (results dict in, lines out), so a change of wording never touches a measurement.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from .figures import CRASH_VARIANTS, GENERATE_VARIANTS, MAX_TOKENS, WARM_LABELS, WARM_SETTINGS
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
LOAD_ROWS = {"load_ms": "load_model, to ready (includes warm-up)", "first_ms": "first generate after the load",
             "load_plus_first_ms": "load + first generate", "second_ms": "second generate (steady state)",
             "warmup_ms": "status.child.warm.ms"}
CRASH_ROWS = {"ready_ms": "SIGKILL to ready (new pid)", "first_ms": "first generate after the restart",
              "ready_plus_first_ms": "SIGKILL to first answer", "warmup_ms": "status.child.warm.ms"}


def span(xs: List[float]) -> str:
    """``min-max`` of a few values (one value once), ``-`` for none."""
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def cached_note(cached: Dict[str, List[float]], parts: Dict[str, str]) -> List[str]:
    """Which share of the prompt came from the slot's cache (usage.cached_tokens): why a first request is fast."""
    said = [f"{label} {span(cached[k])}" for k, label in parts.items() if cached.get(k)]
    return [f"Prompt tokens found in the slot's cache (usage.cached_tokens): {', '.join(said)}."] if said else []


def spread(s: Dict[str, Any]) -> str:
    """``p50 (min-max)``, or ``-`` without samples."""
    return f"{num(s['p50'])} ({num(s['min'])}-{num(s['max'])})" if s.get("n") else "-"


def steps_table(head: str, v: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """One variant: p50, min and max of each step that has samples."""
    lines = [f"| {head} | p50 ms | min ms | max ms | n |", "|---|---|---|---|---|"]
    for k, label in labels.items():
        s = v.get(k)
        if s and s["n"]:
            lines.append(f"| {label} | {num(s['p50'])} | {num(s['min'])} | {num(s['max'])} | {s['n']} |")
    return lines


def warmup_markdown(w: Dict[str, Any]) -> List[str]:
    tokens = w.get("first_request_prompt_tokens")
    lines = [f"Warm-up: {w['loads']} interleaved load{'s' * (w['loads'] != 1)} per variant, "
             f"{f'{tokens}-token ' if tokens else ''}few-shot system prompt, parallel = {w.get('parallel')}, "
             "`command` json_schema."]
    for name, label in WARM_LABELS.items():
        cached = w.get("cached_prompt_tokens", {}).get(name, {})
        lines += [""] + with_notes(steps_table(f"{label} ({WARM_SETTINGS[name]})", w[name], LOAD_ROWS),
                                   cached_note(cached, {"first": "first generate", "second": "second generate"})
                                   + failures_note({label: w[name]["failures"]}))
    crash = w.get("crash_restart", {})
    if crash:
        heads = [WARM_LABELS[n] for n in CRASH_VARIANTS]
        table_ = [f"| crash restart (SIGKILL llama-server), ms: p50 (min-max) | {' | '.join(heads)} |",
                  "|---|" + "---|" * len(heads)]
        table_ += [f"| {label} | " + " | ".join(spread(crash[n][k]) for n in CRASH_VARIANTS) + " |"
                   for k, label in CRASH_ROWS.items() if any(crash[n][k]["n"] for n in CRASH_VARIANTS)]
        lines += [""] + with_notes(table_, [
            f"SIGKILL to ready includes oracd's restart backoff (restart_backoff_initial = "
            f"{w.get('restart_backoff_s')} s here).",
            *cached_note({WARM_LABELS[n]: w.get("cached_prompt_tokens", {}).get(n, {}).get("crash_first", [])
                          for n in CRASH_VARIANTS}, {WARM_LABELS[n]: f"{WARM_LABELS[n]}, first answer after the restart" for n in CRASH_VARIANTS}),
            *failures_note({f"{WARM_LABELS[n]} crash restart": crash[n]["failures"] for n in CRASH_VARIANTS})])
    lines += ["", f"Prefill warm-up saves {num(w['first_request_saving_ms_p50'])} ms on the first request after a "
              f"load (x{num(w['first_request_speedup_p50'])}); load + first request: "
              f"{num(w['load_plus_first_saving_ms_p50'])} ms saved."]
    return lines + [""] + targets_table("warm-restore target (p50s)", w.get("targets", {}))


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


def http_markdown(h: Dict[str, Any]) -> List[str]:
    """The HTTP phase: the openai SDK on oracd's /v1 and llama-server's own, the Ollama path, 8 clients."""
    lines = ["| HTTP (openai SDK, Unix sockets) | p50 ms | p95 ms |", "|---|---|---|"]
    for k in ("direct /v1", "oracd /v1", "direct /v1 first token", "oracd /v1 first token", "oracd /api/chat",
              "floor /v1", "floor /v1 first token"):
        if k in h:
            lines.append(f"| {k} | {num(h[k]['p50'])} | {num(h[k]['p95'])} |")
    added = h["added_ms_p50"]
    tput = h["throughput tokens/s (8 clients)"]
    lines += ["", f"Added at p50: non-streamed {num(added['non-streamed'])} ms, first token "
                  f"{num(added['first token'])} ms; the Ollama path vs the OpenAI path {num(added['ollama vs openai path'])} ms. "
                  f"8 clients: oracd {num(tput.get('oracd'))} tok/s, direct {num(tput.get('direct'))} tok/s "
                  f"(ratio {num(h['throughput_ratio'])})."]
    floor = h.get("floor_added_ms_p50")
    if floor:
        lines += ["", f"The floor of one Python hop (bench/floor_proxy.py, the same samples): non-streamed "
                      f"{num(floor['non-streamed'])} ms, first token {num(floor['first token'])} ms added."]
    if h.get("targets"):
        lines += [""] + targets_table("HTTP target", h["targets"])
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
    if "http" in res:
        lines += [""] + section("HTTP APIs", res["http"], http_markdown)
    if "warmup" in res:
        lines += [""] + warmup_section(res["warmup"]) + gemma_warmup_section(res)
    if "command" in res:
        from .command import command_section
        lines += [""] + ([not_measured("command", res["command"])] if "failed" in res["command"]
                         else command_section(res["command"]))
    lines += [""] + targets_table("target", res["targets"])
    failed = [k for k, v in res.get("phases", {}).items() if v.get("failed")]
    if failed:
        lines += ["", f"Phases that could not run: {', '.join(failed)} (why: the JSON's \"phases\")."]
    return "\n".join(lines) + "\n"


def warmup_section(w: Dict[str, Any]) -> List[str]:
    """The warm-up phase's markdown, or why it could not run (its failures are said per variant)."""
    return [not_measured("warm-up", w)] if "failed" in w else warmup_markdown(w)


def gemma_warmup_section(res: Dict[str, Any]) -> List[str]:
    """The same phase on Gemma 3 270M (a sliding-window model: restore holds with --swa-full), if it ran."""
    if "warmup_gemma" not in res:
        return []
    return ["", f"Warm-up on {res['warmup_gemma'].get('model', 'Gemma 3')} (sliding-window attention; "
                "warm restore with --swa-full, swa_full = \"auto\"):", ""] + warmup_section(res["warmup_gemma"])
