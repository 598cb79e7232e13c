"""oracctl: the operator's command line for oracd (JSON-RPC over its Unix socket).

    oracctl status | metrics | models | generate PROMPT [--stream] | load [MODEL] | unload
    oracctl quantize IN OUT [-t TYPE] [--overwrite] | prewarm [MODEL] [--prefix T | --clear]
    oracctl logs [-f] [-n N] | eval

Human output by default (aligned tables, sizes in MB/GB, humanised durations,
progress on stderr); ``--json`` prints the raw JSON-RPC result for scripts.
This module holds ``main`` (the ``oracctl`` entry point), the argument parser and
the mapping of failures to exit codes (see ``EPILOG``); each command lives in a
module of its own (``status``, ``generate``, ``operations``, ``logs``, ``eval``),
and what they share in ``context``.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any, Callable, List, Optional, TextIO

from oracd_protocol.errors import AccessDenied, CallTimeout, ConnectionLost, OracdUnavailable, OracError
from oracd_protocol.names import DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET

from .context import EXIT_DOWN, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PERMISSION, EXIT_PIPE, EXIT_USAGE, Ctx
from .generate import cmd_generate
from .logs import cmd_logs
from .operations import cmd_load, cmd_prewarm, cmd_quantize, cmd_unload
from .status import cmd_metrics, cmd_models, cmd_status

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
    add("metrics", "Prometheus metrics (oracd's and llama-server's, labelled with the model)", cmd_metrics)

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

    p = add("prewarm", "warm MODEL's slots with a shared prefix, kept for every later load; or --clear it",
            cmd_prewarm)
    p.add_argument("model", nargs="?", metavar="MODEL", help="default: oracd's default model (--clear: every model)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefix", metavar="TEXT", help="raw text that raw prompts begin with (- reads stdin)")
    g.add_argument("--system", metavar="TEXT", help="chat system prompt (default: the model's profile's)")
    g.add_argument("--clear", action="store_true", help="forget the prewarm target(s): later loads warm with "
                   "the profile's system prompt again")
    p.add_argument("--no-persist", dest="persist", action="store_false",
                   help="warm now only; do not keep it for later loads (no admin needed)")

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
