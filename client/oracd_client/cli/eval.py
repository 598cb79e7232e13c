"""oracctl eval, python -m oracd_client.cli.eval: how well models turn spoken commands into ORAC's JSON.

Runs a corpus (``data/commands.jsonl`` next to this module, shipped as package data: one
``{"text", "expected"}`` per line) through a running oracd over its Unix socket (the protocol's
blocking client, one connection per worker thread) and reports, per model: valid-JSON rate,
schema-valid rate (the built-in ``command`` schema), exact-match accuracy per field (device,
action, location, value) and for all four at once, the median request latency, and how many
answers were cut off at max_tokens.

Each request names the model and sends ``json_schema="command"`` (grammar-constrained
decoding); everything else (system prompt, sampling, max_tokens) comes from the model's profile,
so the figures are for "model + its profile".  ``--no-schema`` replaces the schema with a grammar
that allows any text (a request cannot switch a profile's constraint off otherwise), to see what
the prompt alone achieves.

Comparison: strings are compared case-insensitively with whitespace collapsed; numbers (and
numeric strings such as "21") numerically; null only equals null.  A response that is not JSON,
not an object or an RPC error counts as wrong on every field.

    python -m oracd_client.cli.eval                           # the active default model
    python -m oracd_client.cli.eval --model Qwen3-1.7B-Q4_K_M --model SmolLM2-135M-Instruct.Q4_1
    python -m oracd_client.cli.eval --all --json > eval.json  # every model list_models shows

Loading models is oracd's job: the harness asks for each model in turn (``load_model``) and
swaps back to the model that was loaded before it started.  Exit status: 0 when every model
was evaluated, 1 when a model could not be (its row says why), 2 on a usage or connection error.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from oracd_protocol.blocking import BlockingClient
from oracd_protocol.errors import OracError
from oracd_protocol.names import CLIENT_GRACE_S, DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET, default_socket_path
from oracd_protocol.schemas import COMMAND_FIELDS as FIELDS, COMMAND_SCHEMA

PROG = "python -m oracd_client.cli.eval"
# package data next to this module, so an installed (non-editable) oracctl eval has its corpus too
DEFAULT_CORPUS = Path(str(importlib.resources.files("oracd_client.cli") / "data" / "commands.jsonl"))
# --no-schema: any text at all (GBNF); a profile's json_schema would apply to a request sending none
ANY_TEXT_GRAMMAR = r"root ::= [^\x00]*"
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


class UsageError(Exception):
    """Bad arguments, corpus or socket: exit status 2."""


# ---------------------------------------------------------------------- JSON-RPC over the socket
class Pool:
    """One blocking connection per worker thread, for requests in flight at once."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout
        self._local = threading.local()
        self._all: List[BlockingClient] = []
        self._lock = threading.Lock()

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None) -> Any:
        """``method`` on this thread's connection; ``timeout`` bounds the call (default: each read)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = BlockingClient(self.path, self.timeout)
            with self._lock:
                self._all.append(c)
        return c.call(method, params, timeout=timeout)

    def close(self) -> None:
        for c in self._all:
            c.close()


# ---------------------------------------------------------------------- corpus and scoring
def load_corpus(path: Path) -> List[Dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read corpus {path}: {exc.strerror or exc}") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{path}:{n}: not JSON: {exc}") from None
        exp = item.get("expected") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not isinstance(exp, dict) \
                or set(exp) != set(FIELDS):
            raise UsageError(f'{path}:{n}: expected {{"text": str, "expected": {{{", ".join(FIELDS)}}}}}')
        item.setdefault("id", n)
        items.append(item)
    if not items:
        raise UsageError(f"{path}: no corpus items")
    return items


def _validator() -> Callable[[Any], bool]:
    try:
        import jsonschema
    except ImportError:      # pragma: no cover - jsonschema comes with jsonrpcserver
        return _mini_valid
    v = jsonschema.Draft7Validator(COMMAND_SCHEMA)
    return v.is_valid


def _mini_valid(obj: Any) -> bool:
    """COMMAND_SCHEMA by hand (object, exactly the four keys, the enum, the value types)."""
    if not isinstance(obj, dict) or set(obj) != set(FIELDS):
        return False
    props = COMMAND_SCHEMA["properties"]
    kinds = {"string": (str,), "number": (int, float), "null": (type(None),)}
    for key, val in obj.items():
        types = props[key]["type"]
        types = [types] if isinstance(types, str) else types
        if isinstance(val, bool) or not any(isinstance(val, kinds[t]) for t in types):
            return False
        if "enum" in props[key] and val not in props[key]["enum"]:
            return False
    return True


def parse_response(text: str) -> Tuple[bool, Any]:
    """(is JSON, the value): the whole answer must be JSON (a ```json fence around it is tolerated)."""
    s = text.strip()
    if s.startswith("```"):
        s = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", s)
    try:
        return True, json.loads(s)
    except ValueError:
        return False, None


def norm(v: Any) -> Any:
    """Strings: lower case, whitespace collapsed; numbers and numeric strings: float."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = " ".join(v.lower().split())
        return float(s) if _NUMBER.fullmatch(s) else s
    return json.dumps(v, sort_keys=True)


def same(expected: Any, got: Any) -> bool:
    a, b = norm(expected), norm(got)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return type(a) is type(b) and a == b


def score(item: Dict[str, Any], response: Optional[str], valid: Callable[[Any], bool]) -> Dict[str, Any]:
    is_json, obj = parse_response(response) if response is not None else (False, None)
    out: Dict[str, Any] = {"json": is_json, "schema": bool(is_json and valid(obj))}
    fields = {f: bool(isinstance(obj, dict) and f in obj and same(item["expected"][f], obj[f])) for f in FIELDS}
    out["fields"] = fields
    out["all"] = all(fields.values())
    out["parsed"] = obj if is_json else None
    return out


# ---------------------------------------------------------------------- running
def evaluate_model(pool: Pool, model: str, corpus: List[Dict[str, Any]], *, schema: bool, concurrency: int,
                   timeout: float, load_timeout: float, progress: Callable[[str], None]) -> Dict[str, Any]:
    res: Dict[str, Any] = {"model": model, "n": len(corpus), "schema_constrained": schema}
    t0 = time.perf_counter()
    try:
        loaded = pool.call("load_model", {"model": model, "timeout": load_timeout}, load_timeout + CLIENT_GRACE_S)
    except OracError as exc:
        res["error"] = f"load failed: {exc.code}: {exc.message}"
        return res
    res["model"] = loaded["model"]
    res["load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    valid = _validator()
    constraint = {"json_schema": "command"} if schema else {"grammar": ANY_TEXT_GRAMMAR}

    def one(item: Dict[str, Any]) -> Dict[str, Any]:
        t = time.perf_counter()
        rec: Dict[str, Any] = {"id": item["id"], "text": item["text"], "expected": item["expected"]}
        try:
            r = pool.call("generate", {"model": model, "prompt": item["text"], "timeout": timeout, **constraint},
                          timeout + CLIENT_GRACE_S)
            rec.update(response=r["response"], finish_reason=r.get("finish_reason"),
                       completion_tokens=r.get("usage", {}).get("completion_tokens"))
        except OracError as exc:
            rec.update(response=None, error=f"{exc.code}: {exc.message}")
        rec["ms"] = round((time.perf_counter() - t) * 1000, 1)
        rec.update(score(item, rec.get("response"), valid))
        return rec

    records: List[Dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as ex:
        for rec in ex.map(one, corpus):
            records.append(rec)
            progress(f"{model}: {len(records)}/{len(corpus)}")
    n = len(records)
    res.update({
        "valid_json": sum(r["json"] for r in records) / n,
        "schema_valid": sum(r["schema"] for r in records) / n,
        "field_accuracy": {f: sum(r["fields"][f] for r in records) / n for f in FIELDS},
        "all_fields": sum(r["all"] for r in records) / n,
        "median_ms": round(statistics.median(r["ms"] for r in records), 1),
        "errors": sum(1 for r in records if "error" in r),
        "truncated": sum(1 for r in records if r.get("finish_reason") == "length"),   # hit max_tokens
        "wall_s": round(time.perf_counter() - t0, 2),
        "items": records,
    })
    toks = [r["completion_tokens"] for r in records if r.get("completion_tokens") is not None]
    res["median_completion_tokens"] = statistics.median(toks) if toks else None
    return res


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def to_markdown(report: Dict[str, Any]) -> str:
    how = 'json_schema="command"' if report["schema_constrained"] else "no schema (any text)"
    lines = [f"Corpus {report['corpus']} ({report['n']} items), {how}, concurrency {report['concurrency']}", "",
             "| model | valid JSON | schema-valid | device | action | location | value | all fields | median ms "
             "| cut off |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} |  |  |  |  |  |  |  |  |")
            continue
        fa = r["field_accuracy"]
        lines.append(f"| {r['model']} | {pct(r['valid_json'])} | {pct(r['schema_valid'])} | "
                     + " | ".join(pct(fa[f]) for f in FIELDS)
                     + f" | {pct(r['all_fields'])} | {r['median_ms']} | {r['truncated']} |")
    return "\n".join(lines) + "\n"


def mismatches(report: Dict[str, Any]) -> str:
    out = []
    for r in report["models"]:
        for rec in r.get("items", ()):
            if not rec["all"]:
                got = rec.get("error") or (json.dumps(rec["parsed"]) if rec["json"] else
                                           repr(" ".join(str(rec.get("response")).split())[:100]))
                out.append(f"- {r['model']} #{rec['id']} {rec['text']!r}: got {got}; "
                           f"expected {json.dumps(rec['expected'])}")
    return "\n".join(out) + ("\n" if out else "")


def pick_models(pool: Pool, args: argparse.Namespace) -> List[str]:
    if args.all:
        return [m["name"] for m in pool.call("list_models")]
    if args.model:
        return list(dict.fromkeys(args.model))
    st = pool.call("status")
    name = st.get("active_default_model") or st.get("default_model")
    if not name:
        raise UsageError("no default model configured in oracd: name one with --model (or use --all)")
    return [name]


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> Dict[str, Any]:
    corpus = load_corpus(args.corpus)
    pool = Pool(args.socket, args.timeout + CLIENT_GRACE_S)
    try:
        before = pool.call("status")["child"].get("model")
        models = pick_models(pool, args)
        report: Dict[str, Any] = {"corpus": str(args.corpus), "n": len(corpus), "schema_constrained": not args.no_schema,
                                  "concurrency": args.concurrency, "socket": args.socket, "models": []}
        for m in models:
            report["models"].append(evaluate_model(pool, m, corpus, schema=not args.no_schema,
                                                   concurrency=args.concurrency, timeout=args.timeout,
                                                   load_timeout=args.load_timeout, progress=progress))
        after = pool.call("status")["child"].get("model")
        if before and after != before:
            try:
                pool.call("load_model", {"model": before, "timeout": args.load_timeout},
                          args.load_timeout + CLIENT_GRACE_S)
            except OracError as exc:
                progress(f"could not reload {before}: {exc.message}")
        return report
    finally:
        pool.close()


def main(argv: Optional[Iterable[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--model", "-m", action="append", help="a model file name (repeatable); "
                    "default: oracd's active default model")
    ap.add_argument("--all", action="store_true", help="every model list_models shows")
    ap.add_argument("--socket", "-s", default=None, help=f"oracd's socket (default: ${SOCKET_ENV}, "
                    f"{SYSTEM_SOCKET} if it exists, else {DEV_SOCKET})")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL corpus (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the full report (every item) as JSON")
    ap.add_argument("--no-schema", action="store_true", help="no json_schema: a grammar allowing any text")
    ap.add_argument("--concurrency", "-j", type=int, default=1,
                    help="requests in flight at once (up to llama.parallel helps; default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    ap.add_argument("--load-timeout", type=float, default=300.0, help="per-model load timeout in seconds")
    ap.add_argument("--verbose", "-v", action="store_true", help="list the mismatches under the table")
    args = ap.parse_args(None if argv is None else list(argv))
    if args.all and args.model:
        ap.error("--all and --model are exclusive")
    if args.concurrency < 1:
        ap.error("--concurrency must be >= 1")
    args.socket = args.socket or default_socket_path()
    interactive = sys.stderr.isatty()

    def progress(msg: str) -> None:
        if interactive:
            print(f"\r{msg}   ", end="", file=sys.stderr, flush=True)

    try:
        report = run(args, progress)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OracError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:       # no oracd (OracdUnavailable), connection lost, no answer in time
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(to_markdown(report), end="")
        if args.verbose:
            print()
            print(mismatches(report), end="")
    return 1 if any("error" in r for r in report["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())
