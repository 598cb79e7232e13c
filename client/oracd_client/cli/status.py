"""``oracctl status`` and ``oracctl models``: oracd's state and the models it serves, as tables."""
from __future__ import annotations

import time
from typing import Any, Dict, List

from . import format as fmt
from .context import EXIT_OK, Ctx


def rpc_worker_line(w: Dict[str, Any], colour: bool) -> str:
    """"192.168.10.21:50052 in use, attached" / "... not answering: cannot connect: ..."."""
    state = []
    if w.get("in_use"):
        state.append("in use, " + ("attached" if w.get("attached") else "NOT attached"))
    if w.get("answers") is False:
        state.append(f"not answering: {w.get('error')}")
    elif w.get("answers"):
        state.append(f"answers (RPC {w.get('version')})")
    ok = w.get("answers") is not False and (not w.get("in_use") or w.get("attached"))
    return fmt.paint(f"{w.get('address')} " + "; ".join(state), "green" if ok else "red", colour)


def warm_line(w: Dict[str, Any]) -> str:
    """"restored in 45 ms, 225/226 tokens cached in 2 slots; restore on, cache 5.0 MB (3 restored, 1 prefilled)"."""
    how = w.get("how") or "none"
    if how == "none":
        line = "none (no profile system prompt, or warmup = false)"
    else:
        cached = w.get("cached_tokens") or []
        line = f"{how} in {fmt.duration((w.get('ms') or 0) / 1000)}"
        if cached:
            line += f", {min(cached)}/{w.get('prompt_tokens')} tokens cached in {fmt.plural(len(cached), 'slot')}"
    line += f"; restore {w.get('restore')}"
    if w.get("cache_dir_bytes") is not None:
        line += f", cache {fmt.size(w['cache_dir_bytes'])}"
    outcomes = w.get("outcomes") or {}
    if outcomes:
        line += " (" + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) + ")"
    if w.get("note"):
        line += f"; {w['note']}"
    save = w.get("save") or {}
    if save.get("ok") is False:
        why = _SAVE_REASONS.get(save.get("reason"), save.get("reason") or "failed")
        line += f"; KV cache save failed: {why}, nothing to restore next load"
        if save.get("free_bytes") is not None:
            line += f" ({fmt.size(save['free_bytes'])} free in {w.get('cache_dir') or 'the cache dir'})"
    return line


_SAVE_REASONS = {"no_space": "no space left", "io_error": "I/O error", "read_only": "read-only file system",
                 "permission": "permission denied", "failed": "error"}


def swa_line(swa: Dict[str, Any]) -> str:
    """"full cache (--swa-full): for warm restore: fits with it (...)" / "window cache: does not fit with ..."."""
    head = "full cache (--swa-full)" if swa.get("mode") == "full" else "window cache"
    return f"{head}: {swa.get('why')}"


def cmd_metrics(ctx: Ctx) -> int:
    """Prometheus text, as oracd's metrics RPC gives it (--json: the RPC result)."""
    res = ctx.call("metrics", timeout=30)
    if ctx.json:
        ctx.print_json(res)
    else:
        ctx.print(res.get("text", "").rstrip("\n"))
    return EXIT_OK


def server_line(child: Dict[str, Any]) -> str:
    """``ready: model.gguf (pid 1234, up 3h 12m, RSS 148.7 MB)``, with the retry time in backoff."""
    state = child.get("state", "?")
    server = f"{state}"
    if child.get("model"):
        server += f": {child['model']}"
    extra = []
    if child.get("pid"):
        extra.append(f"pid {child['pid']}")
    if child.get("uptime_s") is not None:
        extra.append(f"up {fmt.duration(child['uptime_s'])}")
    if child.get("rss_bytes") is not None:
        extra.append(f"RSS {fmt.size(child['rss_bytes'])}")
    if extra:
        server += f" ({', '.join(extra)})"
    if state == "backoff" and child.get("retry_in_s") is not None:
        server += f", retry in {fmt.duration(child['retry_in_s'])}"
    return server


def http_line(http: Dict[str, Any]) -> str:
    """The HTTP listeners (Ollama's and OpenAI's APIs) and their requests by API and status."""
    counts = "; ".join(f"{api} " + ", ".join(f"{n} x {status}" for status, n in sorted(by.items()))
                       for api, by in sorted((http.get("requests") or {}).items())) or "no requests yet"
    return (f"{', '.join(http.get('listen') or []) or '-'} ({'key required' if http.get('auth') else 'no key'}), "
            f"{http.get('in_flight', 0)} in flight; {counts}")


def last_exit_line(last_exit: Dict[str, Any]) -> str:
    """``llama-server crashed (SIGSEGV), 2m 03s ago: <its last output line>``."""
    line = str(last_exit.get("message") or f"code {last_exit.get('returncode')}")
    if isinstance(last_exit.get("at"), (int, float)):
        line += f", {fmt.duration(max(0.0, time.time() - last_exit['at']))} ago"
    tail = [t for t in last_exit.get("stderr_tail") or [] if isinstance(t, str) and t.strip()]
    return line + (f": {tail[-1][:160]}" if tail else "")


def cmd_status(ctx: Ctx) -> int:
    st = ctx.call("status", timeout=30)
    if ctx.json:
        ctx.print_json(st)
        return EXIT_OK
    child = st.get("child") or {}
    req = st.get("requests") or {}
    rows: List[List[Any]] = []
    rows.append(["oracd", f"{st.get('version', '?')}, pid {st.get('pid')}, up {fmt.duration(st.get('uptime_s'))}, "
                          f"RSS {fmt.size(st.get('rss_bytes'))}"])
    rows.append(["llama-server", fmt.paint(server_line(child), "green" if child.get("state") == "ready" else "yellow",
                                           ctx.colour_out)])
    if child.get("wanted_model") and child.get("wanted_model") != child.get("model"):
        rows.append(["wanted model", child["wanted_model"]])
    reasons = child.get("restarts_by_reason") or {}
    why = f" ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})" if reasons else ""
    rows.append(["loads", f"{fmt.plural(int(child.get('loads') or 0), 'load')}, "
                          f"{fmt.plural(int(child.get('restarts') or 0), 'restart')}{why}, "
                          f"{int(child.get('consecutive_failures') or 0)} consecutive failures"])
    warm = child.get("warm")
    if isinstance(warm, dict):
        rows.append(["warm-up", warm_line(warm)])
        if isinstance(warm.get("swa"), dict):
            rows.append(["sliding window", swa_line(warm["swa"])])
    fit = child.get("ctx_fit")
    if isinstance(fit, dict):
        rows.append(["context", f"{fit.get('ctx_size')} tokens, shrunk from {fit.get('configured_ctx_size')} to fit "
                                f"{fmt.size(fit.get('available_bytes'))} (fit_ctx)"])
    memory = st.get("memory")
    if isinstance(memory, dict):
        rows.append(["memory", f"{memory.get('model')}: needs {fmt.size(memory.get('required_bytes'))}, "
                               f"{fmt.size(memory.get('available_bytes'))} available"])
    rows.append(["requests", f"{req.get('served', 0)} served, {req.get('errors', 0)} errors, "
                             f"{req.get('in_flight', 0)} in flight, "
                             f"{fmt.plural(int(req.get('generations') or 0), 'generation')}"])
    rows.append(["connections", st.get("connections")])
    if child.get("endpoint"):
        rows.append(["endpoint", child["endpoint"]])
    if child.get("last_error"):
        rows.append(["last error", fmt.paint(str(child["last_error"]), "red", ctx.colour_out)])
    last_exit = child.get("last_exit")
    if isinstance(last_exit, dict):
        rows.append(["last exit", last_exit_line(last_exit)])
    elif last_exit:
        rows.append(["last exit", str(last_exit)])
    rpc = child.get("rpc") or {}
    for w in rpc.get("workers") or []:
        rows.append(["rpc worker", rpc_worker_line(w, ctx.colour_out)])
    if rpc.get("fallback_local"):
        rows.append(["rpc fallback", fmt.paint(f"running locally: {rpc['fallback_local'].get('reason')}",
                                               "yellow", ctx.colour_out)])
    http = st.get("http")
    if isinstance(http, dict):
        rows.append(["http apis", http_line(http)])
    for s in st.get("http_servers") or []:
        rows.append(["http server", f"pid {s.get('pid')} {s.get('model')} on {s.get('host')}:{s.get('port')}"])
    rows.append(["default model", st.get("default_model") or "-"])
    rows.append(["socket", st.get("socket")])
    rows.append(["log", st.get("log_file")])
    rows.append(["config", st.get("config") or "-"])
    rows.append(["models dirs", ", ".join(st.get("models_dirs") or []) or "-"])
    known = {"version", "pid", "uptime_s", "rss_bytes", "child", "requests", "connections", "http_servers", "http",
             "socket", "log_file", "models_dirs", "default_model", "config", "memory"}
    for k, v in st.items():                  # anything a newer oracd adds
        if k not in known and v not in (None, [], {}):
            rows.append([k.replace("_", " "), v if isinstance(v, (str, int, float)) else fmt.dumps(v, True)])
    ctx.print(fmt.key_values(rows))
    return EXIT_OK


def cmd_models(ctx: Ctx) -> int:
    params = {"models_path": ctx.args.models_path} if ctx.args.models_path else {}
    items = ctx.call("list_models", params, timeout=120)
    if ctx.json:
        ctx.print_json(items)
        return EXIT_OK
    if not items:
        ctx.note("no models (put .gguf files in oracd's models dir; `oracctl status` shows where)")
        return EXIT_OK
    rows = []
    for m in sorted(items, key=lambda m: str(m.get("name", ""))):
        valid = m.get("valid", True)
        loaded = "*" if m.get("loaded") else ""
        quant = m.get("quantization") or "-"
        if not valid:
            quant = "invalid"
        rows.append([m.get("name"), fmt.size(m.get("size")), quant, m.get("architecture") or "-",
                     m.get("size_label") or "-", m.get("context_length") or "-", loaded])
    ctx.print(fmt.table(["NAME", "SIZE", "QUANT", "ARCH", "PARAMS", "CTX", "LOADED"], rows, right=(1, 5)))
    bad = [m for m in items if m.get("valid") is False]
    for m in bad:
        ctx.note(f"{m.get('name')}: not a loadable GGUF: {m.get('error')}", "yellow")
    return EXIT_OK
