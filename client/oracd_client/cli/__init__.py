"""oracctl: the operator's command line for oracd (JSON-RPC over its Unix socket).

    oracctl status | models | generate PROMPT [--stream] | load [MODEL] | unload
    oracctl quantize IN OUT [-t TYPE] [--overwrite] | logs [-f] [-n N]

Human output by default (aligned tables, sizes in MB/GB, humanised durations,
progress on stderr); ``--json`` prints the raw JSON-RPC result for scripts.
Every call is one blocking connection (``sync.call_sync``): Ctrl-C closes it,
and oracd aborts a request whose client hung up (a streamed generation stops
upstream and frees its llama-server slot).  Exit codes: see ``EPILOG``.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TextIO

from oracd_protocol.blocking import call_sync
from oracd_protocol.errors import AccessDenied, CallTimeout, ConnectionLost, OracdUnavailable, OracError
from oracd_protocol.names import (CHECKOUT, CLIENT_GRACE_S, DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET,
                                  default_socket_path)

from . import format as fmt
from . import logs as cli_logs

EXIT_OK = 0
EXIT_ERROR = 1          # oracd answered with an error (or did not answer in time)
EXIT_USAGE = 2          # bad command line (argparse's own code)
EXIT_DOWN = 3           # oracd not running / socket missing / connection lost
EXIT_PERMISSION = 4     # the socket (or its directory) is not ours to open, or oracd refused our uid
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_PIPE = 141         # stdout closed early (| head)

EPILOG = f"""\
exit codes:
  0    ok
  1    oracd returned an error (code and message on stderr) or did not answer in time
  2    usage error
  3    oracd is not running, the socket is missing, or the connection was lost
  4    permission denied on the socket (join group orac), or refused by oracd's allowed_uids/gids
  130  interrupted (Ctrl-C): oracd cancels the request (a generation or quantization stops at once)
  141  stdout was closed early (e.g. piped into head)

socket: --socket, else ${SOCKET_ENV}, else {SYSTEM_SOCKET} if it exists, else {DEV_SOCKET}.
--json prints the raw result (generate --stream --json: one {{"text": ...}} line per chunk, then the
result line); errors then also go to stdout as {{"error": {{code, message, data}}}}.
"""

FOREVER = 7 * 24 * 3600.0


class Ctx:
    """What every command needs: where oracd is, how to print."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO):
        self.args = args
        self.socket: str = args.socket or default_socket_path()
        self.json: bool = bool(args.json)
        self.out = out
        self.err = err
        no_colour = bool(getattr(args, "no_color", False))
        self.colour_out = fmt.colour_ok(out) and not no_colour
        self.colour_err = fmt.colour_ok(err) and not no_colour
        self.out_at_line_start = True      # for a clean newline after an interrupted stream
        self.asked_status = False

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, timeout: float = 60.0,
             on_notify: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> Any:
        return call_sync(method, params or {}, socket_path=self.socket, timeout=timeout, on_notify=on_notify)

    def write(self, text: str, flush: bool = False) -> None:
        if text:
            self.out.write(text)
            self.out_at_line_start = text.endswith("\n")
            if flush:
                self.out.flush()

    def print(self, text: str = "") -> None:
        self.write(text + "\n")

    def print_json(self, obj: Any, compact: bool = False) -> None:
        self.print(fmt.dumps(obj, compact))

    def note(self, text: str, style: str = "dim") -> None:
        """A line for humans on stderr (stats, hints)."""
        self.err.write(fmt.paint(text, style, self.colour_err) + "\n")
        self.err.flush()


# ---------------------------------------------------------------------- status
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
    rows.append(["llama-server", fmt.paint(server, "green" if state == "ready" else "yellow", ctx.colour_out)])
    if child.get("wanted_model") and child.get("wanted_model") != child.get("model"):
        rows.append(["wanted model", child["wanted_model"]])
    rows.append(["loads", f"{fmt.plural(int(child.get('loads') or 0), 'load')}, "
                          f"{fmt.plural(int(child.get('restarts') or 0), 'restart')}, "
                          f"{int(child.get('consecutive_failures') or 0)} consecutive failures"])
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
        # "llama-server crashed (SIGSEGV), 2m 03s ago", then its last output line
        line = str(last_exit.get("message") or f"code {last_exit.get('returncode')}")
        if isinstance(last_exit.get("at"), (int, float)):
            line += f", {fmt.duration(max(0.0, time.time() - last_exit['at']))} ago"
        tail = [t for t in last_exit.get("stderr_tail") or [] if isinstance(t, str) and t.strip()]
        rows.append(["last exit", line + (f": {tail[-1][:160]}" if tail else "")])
    elif last_exit:
        rows.append(["last exit", str(last_exit)])
    rpc = child.get("rpc") or {}
    for w in rpc.get("workers") or []:
        rows.append(["rpc worker", rpc_worker_line(w, ctx.colour_out)])
    if rpc.get("fallback_local"):
        rows.append(["rpc fallback", fmt.paint(f"running locally: {rpc['fallback_local'].get('reason')}",
                                               "yellow", ctx.colour_out)])
    for s in st.get("http_servers") or []:
        rows.append(["http server", f"pid {s.get('pid')} {s.get('model')} on {s.get('host')}:{s.get('port')}"])
    rows.append(["default model", st.get("default_model") or "-"])
    rows.append(["socket", st.get("socket")])
    rows.append(["log", st.get("log_file")])
    rows.append(["config", st.get("config") or "-"])
    rows.append(["models dirs", ", ".join(st.get("models_dirs") or []) or "-"])
    known = {"version", "pid", "uptime_s", "rss_bytes", "child", "requests", "connections", "http_servers",
             "socket", "log_file", "models_dirs", "default_model", "config"}
    for k, v in st.items():                  # anything a newer oracd adds
        if k not in known and v not in (None, [], {}):
            rows.append([k.replace("_", " "), v if isinstance(v, (str, int, float)) else fmt.dumps(v, True)])
    ctx.print(fmt.key_values(rows))
    return EXIT_OK


# ---------------------------------------------------------------------- models
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


# ---------------------------------------------------------------------- generate
def _stats(r: Dict[str, Any]) -> str:
    usage = r.get("usage") or {}
    n = int(usage.get("completion_tokens") or 0)
    elapsed = r.get("elapsed_ms")
    parts = [f"{fmt.plural(n, 'token')}, {fmt.ms(elapsed)}"]
    if isinstance(elapsed, (int, float)) and elapsed > 0 and n:
        parts.append(f"{n / (elapsed / 1000.0):.1f} tokens/s")
    parts.append(f"prompt {fmt.plural(int(usage.get('prompt_tokens') or 0), 'token')}")
    if r.get("finish_reason"):
        parts.append(f"finish {r['finish_reason']}")
    if r.get("model"):
        parts.append(str(r["model"]))
    return ", ".join(parts)


def cmd_generate(ctx: Ctx) -> int:
    a = ctx.args
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    params: Dict[str, Any] = {"prompt": prompt, "timeout": a.timeout}
    if a.model:
        params["model"] = a.model
    for key, value in (("max_tokens", a.max_tokens), ("temperature", a.temperature), ("top_p", a.top_p),
                       ("top_k", a.top_k), ("system_prompt", a.system)):
        if value is not None:
            params[key] = value
    if a.stop:
        params["stop"] = a.stop

    def show_chunk(method: str, p: Dict[str, Any]) -> None:
        if method != "generate.chunk":
            return
        text = p.get("text")
        if not isinstance(text, str) or not text:
            return
        if ctx.json:
            ctx.print_json({"text": text}, compact=True)
            ctx.out.flush()
        else:
            ctx.write(text, flush=True)

    if a.stream:
        params["stream"] = True
    on_notify = show_chunk if a.stream else None
    r = ctx.call("generate", params, timeout=a.timeout + CLIENT_GRACE_S, on_notify=on_notify)
    if ctx.json:
        ctx.print_json(r, compact=a.stream)
        return EXIT_OK
    if a.stream:
        if not ctx.out_at_line_start:
            ctx.write("\n")
    else:
        ctx.print(str(r.get("response", "")))
    ctx.out.flush()
    if not a.quiet:
        ctx.note(_stats(r))
    return EXIT_OK


# ---------------------------------------------------------------------- load / unload
def cmd_load(ctx: Ctx) -> int:
    a = ctx.args
    params: Dict[str, Any] = {}
    if a.model:
        params["model"] = a.model
    if a.timeout:
        params["timeout"] = a.timeout
    prog = fmt.Progress("load", ctx.err)
    seen = {"state": None, "printed_at": -1e9}

    def on_notify(method: str, p: Dict[str, Any]) -> None:
        if method != "load.progress" or ctx.json:
            return
        elapsed = float(p.get("elapsed_ms") or 0) / 1000.0
        state = p.get("state")
        text = f"{p.get('model')}: {state}, {fmt.duration(elapsed)}"
        if prog.tty:
            prog.status(text + " ...")
        elif state != seen["state"] or elapsed - seen["printed_at"] >= 5:
            prog.status(text)
            seen["state"], seen["printed_at"] = state, elapsed

    if prog.tty and not ctx.json:
        prog.status(f"{a.model or 'the default model'} ...")
    try:
        r = ctx.call("load_model", params, timeout=(a.timeout or FOREVER) + CLIENT_GRACE_S, on_notify=on_notify)
    finally:
        prog.clear()
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    ctx.print(f"loaded {r.get('model')} in {fmt.ms(r.get('elapsed_ms'))} "
              f"(llama-server pid {r.get('pid')}, {r.get('state')})")
    return EXIT_OK


def cmd_unload(ctx: Ctx) -> int:
    params = {"timeout": ctx.args.timeout} if ctx.args.timeout else {}
    r = ctx.call("unload_model", params, timeout=(ctx.args.timeout or 600) + CLIENT_GRACE_S)
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    if r.get("unloaded"):
        ctx.print(f"unloaded {r['unloaded']} (llama-server {r.get('state')})")
    else:
        ctx.print(f"no model was loaded (llama-server {r.get('state')})")
    return EXIT_OK


# ---------------------------------------------------------------------- eval
def cmd_eval(ctx: Ctx) -> int:
    """The command-parsing eval (``python -m oracd_client.cli.eval``) against this oracd."""
    from .eval import main as eval_main      # not at import time: python -m oracd_client.cli.eval runs it as __main__
    a = ctx.args
    argv = ["--socket", ctx.socket, "-j", str(a.concurrency)]
    for m in a.model or ():
        argv += ["--model", m]
    if a.all:
        argv.append("--all")
    if a.corpus:
        argv += ["--corpus", a.corpus]
    if a.no_schema:
        argv.append("--no-schema")
    if a.verbose:
        argv.append("--verbose")
    if ctx.json:
        argv.append("--json")
    return eval_main(argv)


# ---------------------------------------------------------------------- quantize
def cmd_quantize(ctx: Ctx) -> int:
    a = ctx.args
    params: Dict[str, Any] = {"input_model": a.input, "output_model": a.output, "overwrite": bool(a.overwrite)}
    if a.type:
        params["quantization_type"] = a.type
    prog = fmt.Progress("quantize", ctx.err)

    def on_notify(method: str, p: Dict[str, Any]) -> None:
        if method != "quantize.progress" or ctx.json:
            return
        try:
            done, total = int(p.get("done")), int(p.get("total"))
        except (TypeError, ValueError):
            return
        prog.update(done, total, float(p.get("elapsed_ms") or 0) / 1000.0, str(p.get("tensor") or ""))

    try:
        r = ctx.call("quantize_model", params, timeout=FOREVER, on_notify=on_notify)
    finally:
        prog.end()
    if ctx.json:
        ctx.print_json(r)
        return EXIT_OK
    qtype = str(r.get("quantization_type") or a.type or "").upper()
    ctx.print(f"quantized {a.input} -> {r.get('name')} ({qtype}, {fmt.size(r.get('size'))}) "
              f"in {fmt.ms(r.get('elapsed_ms'))}")
    ctx.print(f"  {r.get('path')}")
    return EXIT_OK


# ---------------------------------------------------------------------- logs
def _log_path(ctx: Ctx) -> Path:
    if ctx.args.file:
        return Path(ctx.args.file)
    try:
        st = ctx.call("status", timeout=10)
        ctx.asked_status = True
        return Path(st["log_file"])
    except OracdUnavailable:
        # oracd is down, which is when its log matters most: try the usual places
        for cand in (Path("/var/log/oracd/orac.log"), CHECKOUT / "logs" / "orac.log"):
            if cand.exists():
                ctx.note(f"oracd is not running at {ctx.socket}; reading {cand} (use --file to choose)")
                return cand
        raise


def cmd_logs(ctx: Ctx) -> int:
    a = ctx.args
    path = _log_path(ctx)
    if not path.exists() and not cli_logs.rotated_files(path) and not a.follow:
        ctx.note(f"oracctl: no log at {path}", "red")
        return EXIT_ERROR
    skip = cli_logs.own_lines(os.getpid()) if ctx.asked_status else None   # our own status call
    return cli_logs.run(path, a.lines, a.follow, ctx.json, ctx.out, ctx.colour_out,
                        notice=lambda m: ctx.note(f"oracctl: {m}"), skip=skip)


# ---------------------------------------------------------------------- parser
def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    def common(p: argparse.ArgumentParser, default: Any) -> None:
        g = p.add_argument_group("common options")
        g.add_argument("--socket", metavar="PATH", default=default(None),
                       help=f"oracd's socket (default: ${SOCKET_ENV}, {SYSTEM_SOCKET} if present, else the dev socket)")
        g.add_argument("--json", action="store_true", default=default(False),
                       help="print the raw JSON result instead of human output")
        g.add_argument("--no-color", action="store_true", default=default(False),
                       help="no ANSI colours (also: NO_COLOR=1)")

    parser = argparse.ArgumentParser(
        prog="oracctl", description="Operate oracd (one warm llama-server behind a JSON-RPC Unix socket).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(parser, lambda v: v)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, func: Callable[[Ctx], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        common(p, lambda v: argparse.SUPPRESS)     # options after the command too: `oracctl status --json`
        p.set_defaults(func=func)
        return p

    add("status", "daemon and llama-server state, counters, paths", cmd_status)

    p = add("models", "the models oracd serves (size, quantization, loaded)", cmd_models)
    p.add_argument("--models-path", metavar="DIR", help="list only this served models dir")

    p = add("generate", "generate a reply to PROMPT (- reads it from stdin)", cmd_generate)
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("-m", "--model", help="model name (default: oracd's default model)")
    p.add_argument("--max-tokens", type=int, metavar="N")
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--system", metavar="S", help="system prompt")
    p.add_argument("--stop", action="append", metavar="STR", help="stop string (repeatable)")
    p.add_argument("--timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                   help="oracd aborts the generation after this long (default 120)")
    p.add_argument("--stream", action="store_true",
                   help="print text as it is generated; Ctrl-C stops the generation in oracd")
    p.add_argument("-q", "--quiet", action="store_true", help="no stats line on stderr")

    p = add("load", "load MODEL (default: oracd's default model) into llama-server, with progress", cmd_load)
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="give up after this long (default: oracd's llama.load_timeout)")

    p = add("unload", "stop llama-server (oracd stays up; the next request loads again)", cmd_unload)
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS")

    p = add("quantize", "quantize model IN into OUT (in oracd's models dir), with progress", cmd_quantize)
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("-t", "--type", metavar="TYPE", help="quantization type, e.g. q4_k, q8_0 (default: q4_k)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = add("eval", "run the command-parsing corpus against models and report accuracy", cmd_eval)
    p.add_argument("-m", "--model", action="append", metavar="MODEL", help="model to evaluate (repeatable; "
                   "default: the loaded/default model)")
    p.add_argument("--all", action="store_true", help="every model oracd lists")
    p.add_argument("--corpus", metavar="PATH", help="JSONL corpus (default: the corpus shipped with oracd_client)")
    p.add_argument("-j", "--concurrency", type=int, default=1, metavar="N")
    p.add_argument("--no-schema", action="store_true", help="no grammar: measure the model unconstrained")
    p.add_argument("-v", "--verbose", action="store_true", help="list the mismatches")

    p = add("logs", "pretty-print oracd's log (orac.log and its rotations)", cmd_logs)
    p.add_argument("-n", "--lines", type=_nonneg_int, default=20, metavar="N",
                   help="last N lines across orac.log.2, .1, orac.log (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines, across rotations")
    p.add_argument("--file", metavar="PATH", help="the log file (default: log_file from `status`)")
    return parser


# ---------------------------------------------------------------------- main
def _down_message(path: str, exc: OracdUnavailable) -> str:
    if exc.errno is None:
        reason = "connect timed out"
    else:
        reason = {errno.ENOENT: "no socket there", errno.ECONNREFUSED: "connection refused: stale socket",
                  errno.ENOTSOCK: "not a socket"}.get(exc.errno) or os.strerror(exc.errno).lower()
    return (f"oracd is not running at {path} ({reason}): start it with `sudo systemctl start oracd` "
            f"(in a checkout: scripts/dev-up), or point --socket / ${SOCKET_ENV} at its socket")


def _perm_message(path: str) -> str:
    return (f"permission denied on {path}: add yourself to group orac: sudo usermod -aG orac $USER, "
            f"then log in again")


def _report_oracd_error(ctx: Ctx, exc: OracError) -> None:
    ctx.note(f"oracctl: error {exc.code} ({type(exc).__name__}): {exc.message}", "red")
    data = exc.data
    if isinstance(data, dict):
        tail = data.get("stderr_tail")
        if isinstance(tail, list) and tail:
            for line in tail[-5:]:
                ctx.note(f"  | {line}")
        if data.get("incident"):
            ctx.note(f"  incident {data['incident']}: details in oracd's log (oracctl logs -n 200)")
        if data.get("allowed"):
            ctx.note(f"  allowed: {', '.join(map(str, data['allowed']))}")
    if ctx.json:
        ctx.print_json({"error": exc.to_dict()})


def main(argv: Optional[List[str]] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(err)
        err.write("oracctl: error: a command is required (see oracctl --help)\n")
        return EXIT_USAGE
    ctx = Ctx(args, out, err)
    try:
        try:
            return args.func(ctx)
        finally:
            out.flush()
    except KeyboardInterrupt:
        try:
            if not ctx.out_at_line_start:
                out.write("\n")
                out.flush()
            ctx.note("oracctl: interrupted")
        except (OSError, ValueError):
            pass
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:       # stdout went away (| head): no traceback, no second error at interpreter exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_PIPE
    except OracdUnavailable as exc:
        path = exc.socket_path or ctx.socket
        if exc.errno in (errno.EACCES, errno.EPERM):
            ctx.note(f"oracctl: {_perm_message(path)}", "red")
            return EXIT_PERMISSION
        ctx.note(f"oracctl: {_down_message(path, exc)}", "red")
        return EXIT_DOWN
    except ConnectionLost as exc:
        ctx.note(f"oracctl: oracd closed the connection at {exc.socket_path or ctx.socket} before answering "
                 f"(did it stop or restart? see `oracctl status`, `oracctl logs`)", "red")
        return EXIT_DOWN
    except AccessDenied as exc:
        ctx.note(f"oracctl: permission denied on {ctx.socket}: {exc.message}", "red")
        return EXIT_PERMISSION
    except OracError as exc:
        _report_oracd_error(ctx, exc)
        if exc.code == -32011 and ctx.args.command == "quantize":      # OutputExists
            ctx.note("  (use --overwrite to replace it)")
        return EXIT_ERROR
    except CallTimeout as exc:
        ctx.note(f"oracctl: {exc}", "red")
        return EXIT_ERROR
    except PermissionError as exc:         # reading a log file
        ctx.note(f"oracctl: {_perm_message(exc.filename or ctx.socket)}", "red")
        return EXIT_PERMISSION

