"""Bad input and abusive clients over the real socket, partly fuzzed with hypothesis.

Every test here runs against one oracd (small limits: 100 connections, idle_timeout 2 s,
send_timeout 2 s, 4 pending requests per connection) while a well-behaved client runs
alongside in a thread (status + a 2-token generate, each answer checked against its own
request).  After every test: oracd is still up, its RSS is under RSS_LIMIT, and the
well-behaved client completed another round with every answer right.

Properties checked on every answer: one JSON-RPC 2.0 response per request, strict RFC 8259
JSON in valid UTF-8 (no NaN/Infinity), and never -32603 (README: "a bug").

Already covered elsewhere: the basic error paths (test_rpc.py::test_error_paths), one oversized
line (test_rpc.py::test_oversized_line_gets_error_and_connection_survives).  Half a line then a
hang-up, with other clients unaffected: here (test_fuzz_half_line_then_disconnect, test_half_lines_leave_no_connection_behind).
"""
from __future__ import annotations

import inspect
import itertools
import json
import resource
import select
import socket
import threading
import time
import typing
from typing import Any, Dict, List, Optional, Tuple

import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import SMOL, Conn, Oracd
from oracd.api.methods import App

FAST = {"threads": 1, "extra_args": ["--no-warmup"]}   # see test_faults.py
SERVER = {"max_connections": 100, "max_connections_per_uid": 100, "idle_timeout": 2.0, "send_timeout": 2.0, "max_pending_per_connection": 4}
MAX_LINE = 1024 * 1024                                   # the default max_line_bytes
RSS_LIMIT = 150 * 2 ** 20
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],           # no shrinking: bounded CI time
                suppress_health_check=list(HealthCheck))
_ids = itertools.count(1)


# ---------------------------------------------------------------------- wire helpers
def _no_constants(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict_json(line: bytes) -> Any:
    """Parse one answer line as RFC 8259 JSON in UTF-8 (NaN/Infinity are not JSON)."""
    return json.loads(line.decode("utf-8"), parse_constant=_no_constants)


def check_answer(msg: Any) -> None:
    """A JSON-RPC 2.0 response (or batch of them) that is not an internal error."""
    for m in (msg if isinstance(msg, list) else [msg]):
        assert isinstance(m, dict) and m.get("jsonrpc") == "2.0", m
        assert ("result" in m) != ("error" in m), m
        assert "id" in m, m
        if "error" in m:
            err = m["error"]
            assert isinstance(err.get("code"), int) and isinstance(err.get("message"), str) and err["message"], m
            assert err["code"] != -32603, f"internal error (a bug, per README): {str(m)[:500]}"
        assert "Traceback" not in json.dumps(m)[:100_000]


def read_answer(c: Conn) -> Any:
    """The next answer on ``c``, skipping server notifications (progress messages without id)."""
    while True:
        line = c.recv_line()    # a whole line, its newline seen (ConnectionLost if oracd closes mid-line)
        msg = strict_json(line)
        if isinstance(msg, dict) and "method" in msg and "id" not in msg:
            continue
        check_answer(msg)
        return msg


def send_line(o: Oracd, line: bytes, timeout: float = 60) -> Any:
    """Send one raw line on a fresh connection, return its answer, then check framing is intact."""
    with Conn(o.socket, timeout) as c:
        c.send_raw(line + b"\n")
        answer = read_answer(c)
        rid = f"sentinel-{next(_ids)}"
        c.send_raw(json.dumps({"jsonrpc": "2.0", "method": "status", "id": rid}).encode() + b"\n")
        after = read_answer(c)
        assert after.get("id") == rid and "result" in after, after   # nothing extra, nothing lost
        return answer


def creq(c: Conn, method: str, params: Optional[Dict[str, Any]] = None, rid: Any = None) -> Dict[str, Any]:
    rid = rid if rid is not None else f"r{next(_ids)}"
    msg: Dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params is not None:
        msg["params"] = params
    c.send_raw(json.dumps(msg).encode() + b"\n")
    resp = read_answer(c)
    assert resp.get("id") == rid, (rid, resp)
    return resp


def status(o: Oracd) -> Dict[str, Any]:
    with Conn(o.socket, 30) as c:
        return creq(c, "status")["result"]


def rss(o: Oracd) -> int:
    return psutil.Process(o.proc.pid).memory_info().rss


def log_count(o: Oracd, event: str) -> int:
    n = 0
    for line in o.log_file.read_text(errors="replace").splitlines():
        try:
            n += json.loads(line).get("event") == event
        except ValueError:
            pass
    return n


# ---------------------------------------------------------------------- the daemon + a well-behaved client
class WellBehaved(threading.Thread):
    """status + a 2-token generate in a loop on one connection; every answer checked."""

    def __init__(self, o: Oracd):
        super().__init__(daemon=True)
        self.o = o
        self.halt = threading.Event()
        self.rounds = 0
        self.errors: List[str] = []

    def run(self) -> None:
        i = 0
        try:
            with Conn(self.o.socket, timeout=60) as c:
                while not self.halt.is_set():
                    i += 1
                    st = creq(c, "status", rid=f"wb-status-{i}")["result"]
                    assert st["pid"] == self.o.proc.pid, st
                    prompt = f"Reply with one word. Request number {i}."
                    r = creq(c, "generate", {"prompt": prompt, "max_tokens": 2, "temperature": 0},
                             rid=f"wb-gen-{i}")
                    assert "result" in r, r
                    assert r["result"]["prompt"] == prompt and r["result"]["model"] == SMOL, r
                    assert 0 < r["result"]["usage"]["completion_tokens"] <= 2, r
                    self.rounds += 1
                    self.halt.wait(0.05)
        except Exception as exc:
            self.errors.append(f"round {i}: {exc!r}"[:1000])

    def wait_round(self, timeout: float = 60) -> None:
        target = self.rounds + 1
        deadline = time.monotonic() + timeout
        while self.rounds < target and not self.errors and self.is_alive():
            assert time.monotonic() < deadline, "well-behaved client made no progress"
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def kill_leftovers(root: Any) -> None:
    """SIGKILL what a crashed oracd left running under its temp root (its llama-server)."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(root) in a for a in (p.info["cmdline"] or [])):
                p.kill()
        except psutil.Error:
            pass


class Daemon:
    """The module's oracd plus its well-behaved client; started over if a test broke them."""

    def __init__(self, server: Dict[str, Any], llama: Dict[str, Any], with_client: bool = True):
        self.server, self.llama, self.with_client = server, llama, with_client
        self.o: Optional[Oracd] = None
        self.wb: Optional[WellBehaved] = None

    def start(self) -> None:
        self.o = Oracd(server=self.server, llama=self.llama).start()
        self.start_client()

    def start_client(self) -> None:
        if self.with_client:
            self.wb = WellBehaved(self.o)
            self.wb.start()
            self.wb.wait_round()

    def answers(self) -> bool:
        if self.o is None or self.o.proc.poll() is not None:
            return False
        try:
            with Conn(self.o.socket, 5) as c:
                return creq(c, "status")["result"]["pid"] == self.o.proc.pid
        except Exception:
            return False

    def ensure(self) -> None:
        """Start over if an earlier test killed oracd or broke the client (no cascade of failures)."""
        if not self.answers():
            self.kill()
            self.start()
        elif self.wb is not None and (self.wb.errors or not self.wb.is_alive()):
            self.wb.stop()
            self.start_client()

    def kill(self) -> None:
        if self.wb is not None:
            self.wb.halt.set()
        if self.o is not None:
            if self.o.proc.poll() is None:
                self.o.proc.kill()
                self.o.proc.wait(10)
            kill_leftovers(self.o.root)
            self.o.cleanup()
        if self.wb is not None:
            self.wb.join(70)

    def stop(self) -> None:
        if self.wb is not None:
            self.wb.stop()
        if self.o is not None:
            self.o.cleanup()
            kill_leftovers(self.o.root)


@pytest.fixture(scope="module")
def fz():
    d = Daemon(SERVER, FAST)
    d.start()
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def stays_healthy(fz):
    fz.ensure()
    yield
    o = fz.o
    assert o.proc.poll() is None, f"oracd died (exit {o.proc.returncode}):\n{o.stderr_tail()}"
    fz.wb.wait_round()
    assert not fz.wb.errors, f"the well-behaved client saw: {fz.wb.errors}"
    assert rss(o) < RSS_LIMIT, f"oracd RSS {rss(o) / 2**20:.0f} MiB"


# ---------------------------------------------------------------------- method signatures (inspect)
def _rpc_methods() -> Dict[str, Tuple[List[inspect.Parameter], Dict[str, Any]]]:
    out = {}
    for name, func in inspect.getmembers(App, inspect.iscoroutinefunction):
        params = list(inspect.signature(func).parameters.values())
        if name.startswith("_") or [p.name for p in params[:2]] != ["self", "ctx"]:
            continue
        out[name] = (params[2:], typing.get_type_hints(func))
    return out


METHODS = _rpc_methods()
FILLER = {"prompt": "hi", "input_model": "no-such-input", "output_model": "no-such-output", "model": SMOL, "pid": 1}


def test_methods_found_by_inspect():
    assert {"generate", "list_models", "quantize_model", "load_model", "unload_model", "status",
            "start_server", "stop_server", "server_info"} <= set(METHODS)


def accepts(hint: Any, v: Any) -> bool:
    """Does a JSON value fit a param annotation?  (Independent of oracd's own checker.)"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union:
        return any(accepts(a, v) for a in args)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return isinstance(v, str)
    if origin in (list, List):
        return isinstance(v, list) and all(accepts(args[0] if args else Any, x) for x in v)
    if origin in (dict, Dict) or hint is dict:
        return isinstance(v, dict)
    raise AssertionError(f"unexpected annotation {hint!r}")


def required(method: str) -> Dict[str, Any]:
    params, _ = METHODS[method]
    return {p.name: FILLER.get(p.name, "x") for p in params if p.default is inspect.Parameter.empty}


CANDIDATES = [None, True, False, 0, -1, 7, 1.5, -0.0, 1e300, "", "x", "12", [], ["x"], [1], [None], {}, {"a": 1},
              [[]], {"prompt": "hi"}]
ALL_PARAMS = [(m, p.name) for m, (params, _) in sorted(METHODS.items()) for p in params]
# params with a type to violate (an ``Any`` param, e.g. a schema object or name, accepts every JSON value)
PARAMS = [(m, p) for m, p in ALL_PARAMS if not all(accepts(METHODS[m][1][p], v) for v in CANDIDATES)]
STRING_PARAMS = [(m, p) for m, p in ALL_PARAMS if accepts(METHODS[m][1][p], "x")]


def expect_invalid_param(resp: Dict[str, Any], param: str) -> None:
    err = resp.get("error")
    assert err and err["code"] == -32602, resp
    assert param in json.dumps(err), resp                 # the error names the offending param


@pytest.mark.parametrize("method, param", PARAMS, ids=[f"{m}.{p}" for m, p in PARAMS])
def test_every_param_rejects_wrong_types(fz, method, param):
    hint = METHODS[method][1][param]
    wrong = [v for v in CANDIDATES if not accepts(hint, v)]
    assert wrong
    bad = []
    with Conn(fz.o.socket, 30) as c:
        for v in wrong:
            resp = creq(c, method, dict(required(method), **{param: v}))
            try:
                expect_invalid_param(resp, param)
            except AssertionError:
                bad.append((v, resp))
    assert not bad, bad


@FUZZ
@given(data=st.data())
def test_fuzz_wrong_param_types(fz, data):
    method, param = data.draw(st.sampled_from(PARAMS))
    hint = METHODS[method][1][param]
    scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
    values = st.recursive(scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch,
                                                                                          max_size=4), max_leaves=8)
    value = data.draw(values.filter(lambda v: not accepts(hint, v)))
    with Conn(fz.o.socket, 30) as c:
        expect_invalid_param(creq(c, method, dict(required(method), **{param: value})), param)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_missing_and_positional_params(fz, method):
    with Conn(fz.o.socket, 30) as c:
        resp = creq(c, method, dict(required(method), no_such_param=1))
        assert resp["error"]["code"] == -32602, resp
        assert creq(c, method, [1, 2])["error"]["code"] == -32602
        for name in required(method):
            params = required(method)
            del params[name]
            assert creq(c, method, params)["error"]["code"] == -32602


# ---------------------------------------------------------------------- random bytes, invalid UTF-8
@FUZZ
@given(raw=st.binary(min_size=1, max_size=3000))
def test_fuzz_random_byte_lines(fz, raw):
    line = raw.replace(b"\n", b" ")
    if not line.strip():
        line += b"x"
    answer = send_line(fz.o, line)
    codes = {m["error"]["code"] for m in (answer if isinstance(answer, list) else [answer]) if "error" in m}
    assert codes <= {-32700, -32600}, answer


@FUZZ
@given(before=st.binary(max_size=200), after=st.binary(max_size=200),
       bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]))
def test_fuzz_invalid_utf8_is_a_parse_error(fz, before, after, bad):
    clean = lambda b: b.replace(b"\n", b"").replace(b'"', b"").replace(b"\\", b"")  # noqa: E731
    line = (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"'
            + clean(before) + bad + clean(after) + b'","max_tokens":2}}')
    answer = send_line(fz.o, line)
    assert answer["error"]["code"] == -32700 and answer["id"] is None, answer


# ---------------------------------------------------------------------- nesting, numbers, strings
@pytest.mark.parametrize("line", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b"[" * 100_000,
    b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","json_schema":'
    + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}}",
    b"[" * 500 + b"]" * 500,                                       # parses, but nesting > 64
    b'[{"jsonrpc":"2.0","method":"status","id":1,"params":' + b"[" * 80 + b"]" * 80 + b"}]",
], ids=["arrays-100k", "objects-100k", "unclosed-100k", "in-params-100k", "arrays-500", "in-batch-80"])
def test_deep_nesting_is_an_error_not_a_crash(fz, line):
    t0 = time.monotonic()
    answer = send_line(fz.o, line)
    assert time.monotonic() - t0 < 30
    assert answer["error"]["code"] in (-32700, -32600), answer
    assert answer["id"] is None


NUMBER_CASES = {
    # numbers JSON can spell but nobody can use: refused (at parse time or as a param), never echoed as
    # Infinity; None = any error, with id null (the id itself is unusable)
    "id-1e400": (b'{"jsonrpc":"2.0","method":"status","id":1e400}', None),
    "id--1e400": (b'{"jsonrpc":"2.0","method":"status","id":-1e400}', None),
    "id-10^5000": (b'{"jsonrpc":"2.0","method":"status","id":1' + b"0" * 5000 + b"}", (-32700,)),
    "temperature-1e400": (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","temperature":1e400}}',
                          (-32602, -32700)),
    "max_tokens-10^5000": (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","max_tokens":1'
                           + b"0" * 5000 + b"}}", (-32700,)),
    "max_tokens-10^4000": (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","max_tokens":1'
                           + b"0" * 4000 + b"}}", (-32602,)),
    "top_k-1e-400": (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","top_k":1e-400}}',
                     (-32602,)),
    "pid-huge": (b'{"jsonrpc":"2.0","method":"server_info","id":1,"params":{"pid":1' + b"0" * 4000 + b"}}", (-32602,)),
    "pid-negative": (b'{"jsonrpc":"2.0","method":"stop_server","id":1,"params":{"pid":-1}}', (-32602,)),
    "timeout-1e400": (b'{"jsonrpc":"2.0","method":"unload_model","id":1,"params":{"timeout":1e400}}',
                      (-32602, -32700)),
    # not JSON at all (RFC 8259 has no NaN/Infinity), although Python's json module reads them
    "NaN-param": (b'{"jsonrpc":"2.0","method":"generate","id":1,"params":{"prompt":"hi","temperature":NaN}}',
                  (-32700,)),
    "Infinity-param": (b'{"jsonrpc":"2.0","method":"load_model","id":1,"params":{"timeout":Infinity}}', (-32700,)),
    "NaN-id": (b'{"jsonrpc":"2.0","method":"status","id":NaN}', (-32700,)),
    "-Infinity-id": (b'{"jsonrpc":"2.0","method":"nope","id":-Infinity}', (-32700,)),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_huge_and_non_finite_numbers(fz, case):
    line, codes = NUMBER_CASES[case]
    answer = send_line(fz.o, line)                    # strict JSON: no Infinity/NaN may come back
    assert "error" in answer, answer
    if codes is None:
        assert answer["id"] is None, answer
    else:
        assert answer["error"]["code"] in codes, answer


def _huge_string_params() -> List[Tuple[str, str]]:
    return STRING_PARAMS + [("generate", "stop")]


@pytest.mark.parametrize("method, param", _huge_string_params(),
                         ids=[f"{m}.{p}" for m, p in _huge_string_params()])
def test_huge_string_in_every_string_param(fz, method, param):
    """A value close to the 1 MiB line limit in each string param: a clean answer, no crash."""
    base = {"generate": {"prompt": "hi", "max_tokens": 2, "temperature": 0},
            "quantize_model": {"input_model": SMOL}}.get(method, {})           # a real input: reach the output checks
    params = dict(required(method), **base)
    if method == "start_server":
        params["port"] = 0                            # never actually starts anything
    params[param] = "a" * (MAX_LINE - 400)
    if param == "stop":
        params[param] = [params[param]]
    line = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params}).encode()
    assert len(line) < MAX_LINE
    answer = send_line(fz.o, line, timeout=120)
    assert answer["id"] == 1


SURROGATES = {
    # "\ud800" is valid JSON syntax for a string no UTF-8 encoder accepts: echoing it must not kill oracd
    "id": b'{"jsonrpc":"2.0","method":"status","id":"\\ud800"}',
    "method": b'{"jsonrpc":"2.0","method":"\\ud800","id":1}',
    "model-name": b'{"jsonrpc":"2.0","method":"load_model","params":{"model":"\\udfff"},"id":1}',
    "unknown-member": b'{"jsonrpc":"2.0","method":"status","id":1,"\\ud800":2}',
    "unknown-param": b'{"jsonrpc":"2.0","method":"status","params":{"\\ud800":1},"id":1}',
    "batch-id": b'[{"jsonrpc":"2.0","method":"status","id":"\\ud800"}]',
    "models_path": b'{"jsonrpc":"2.0","method":"list_models","params":{"models_path":"\\ud800"},"id":1}',
    "quantization_type": b'{"jsonrpc":"2.0","method":"quantize_model","params":{"input_model":"'
                         + SMOL.encode() + b'","output_model":"q","quantization_type":"\\ud800"},"id":1}',
    "prompt": b'{"jsonrpc":"2.0","method":"generate","params":{"prompt":"\\ud800","max_tokens":2},"id":1}',
}


@pytest.mark.parametrize("case", list(SURROGATES))
def test_lone_surrogates_get_a_valid_answer(fz, case):
    send_line(fz.o, SURROGATES[case])                 # strict UTF-8 JSON back, and oracd alive (fixture)


# ---------------------------------------------------------------------- line limits
def _padded_status(n: int, rid: int) -> bytes:
    """A valid status request padded with JSON whitespace to exactly n bytes (newline excluded)."""
    core = json.dumps({"jsonrpc": "2.0", "method": "status", "id": rid}).encode()
    return core + b" " * (n - len(core))


def test_line_of_exactly_max_line_bytes_is_accepted(fz):
    with Conn(fz.o.socket, 60) as c:
        # exactly max_line_bytes is not "over" the limit, wherever the line starts in the stream
        c.send_raw(_padded_status(MAX_LINE, 1) + b"\n")
        assert read_answer(c).get("id") == 1
        c.send_raw(_padded_status(100, 2) + b"\n" + _padded_status(MAX_LINE, 3) + b"\n")
        got = {read_answer(c).get("id") for _ in range(2)}
        assert got == {2, 3}
        c.send_raw(_padded_status(MAX_LINE - 1, 4) + b"\n")
        assert read_answer(c).get("id") == 4
        # ... and however the stream is split: here the newline comes in a later write
        c.send_raw(_padded_status(MAX_LINE, 5))
        time.sleep(0.3)
        c.send_raw(b"\n")
        resp = read_answer(c)
        assert resp.get("id") == 5, f"a line of exactly max_line_bytes was refused: {resp}"


def test_repeated_oversized_lines_keep_the_connection(fz):
    with Conn(fz.o.socket, 60) as c:
        # one byte over, three times in a row, then a normal request on the same connection
        for _ in range(3):
            c.send_raw(_padded_status(MAX_LINE + 1, 9) + b"\n")
        for _ in range(3):
            err = read_answer(c)
            assert err["error"]["code"] == -32010 and err["id"] is None, err
        assert creq(c, "status")["result"]["pid"] == fz.o.proc.pid
        # 5 MiB in one line
        c.send_raw(b'{"jsonrpc":"2.0","method":"status","id":5,"params":{"x":"' + b"y" * (5 * MAX_LINE) + b'"}}\n')
        assert read_answer(c)["error"]["code"] == -32010
        assert creq(c, "status")["result"]["pid"] == fz.o.proc.pid


def test_oversized_unterminated_line_then_disconnect(fz):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(fz.o.socket))
    s.sendall(b'{"jsonrpc":"2.0","method":"status","id":1,"params":{"x":"' + b"z" * (3 * MAX_LINE))
    s.close()
    assert status(fz.o)["pid"] == fz.o.proc.pid


# ---------------------------------------------------------------------- half lines, idle and slow clients
def wait_connections(o: Oracd, n: int, timeout: float = 20) -> int:
    """Wait until oracd counts n connections besides the one asking."""
    deadline = time.monotonic() + timeout
    while True:
        now = status(o)["connections"] - 1
        if now == n or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


@FUZZ
@given(cut=st.integers(min_value=1, max_value=200), method=st.sampled_from(["status", "generate", "list_models"]))
def test_fuzz_half_line_then_disconnect(fz, cut, method):
    line = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1,
                       "params": {"prompt": "hello there", "max_tokens": 2} if method == "generate" else {}}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(fz.o.socket))
    s.sendall(line[: min(cut, len(line) - 1)])
    s.close()


def test_half_lines_leave_no_connection_behind(fz):
    for i in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(fz.o.socket))
        s.sendall(b'{"jsonrpc":"2.0","method":"sta'[: 1 + i % 30])
        s.close()
    assert wait_connections(fz.o, 1) == 1           # only the well-behaved client is left


def _time_to_eof(s: socket.socket, timeout: float, dribble: bool = False) -> Tuple[float, bytes]:
    t0 = time.monotonic()
    got = b""
    while time.monotonic() - t0 < timeout:
        r, _, _ = select.select([s], [], [], 0.3)
        if r:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - t0, got
            got += chunk
        elif dribble:
            try:
                s.send(b"x")
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0, got
    raise AssertionError(f"connection still open after {timeout} s")


def test_idle_and_slow_clients_are_closed_after_idle_timeout(fz):
    idle = SERVER["idle_timeout"]
    before = log_count(fz.o, "closing idle connection")
    socks = []
    for first in (b"", b'{"jsonrpc":"2.0","meth', b"{"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(str(fz.o.socket))
        if first:
            s.sendall(first)
        socks.append(s)
    results = {}

    def watch(i: int, s: socket.socket) -> None:
        results[i] = _time_to_eof(s, 30, dribble=(i == 2))      # the third one dribbles a byte every 0.3 s

    threads = [threading.Thread(target=watch, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    # meanwhile a request that runs longer than idle_timeout is not cut off: only *idle* connections go
    with Conn(fz.o.socket, 120) as c:
        t0 = time.monotonic()
        r = creq(c, "generate", {"prompt": "Write a long story about a lighthouse.", "max_tokens": 200,
                                 "temperature": 0.8})
        long_ms = (time.monotonic() - t0) * 1000
        assert r["result"]["usage"]["completion_tokens"] > 0, (r, long_ms)
    for t in threads:
        t.join(40)
    for s in socks:
        s.close()
    for i in range(3):
        took, data = results[i]
        assert data == b"", (i, data)                          # closed without an answer
        assert idle * 0.5 <= took <= idle + 15, (i, took)
    assert log_count(fz.o, "closing idle connection") >= before + 3


def test_client_that_never_reads_is_dropped_after_send_timeout(fz):
    base = wait_connections(fz.o, 1)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(fz.o.socket))
    reqs = b"".join(json.dumps({"jsonrpc": "2.0", "method": "status", "id": i}).encode() + b"\n"
                    for i in range(3000))
    try:
        s.sendall(reqs)               # oracd stops reading at 4 pending: this may block, that is fine
    except (socket.timeout, BrokenPipeError, ConnectionResetError):
        pass
    t0 = time.monotonic()
    # without reading a byte: oracd gives up on the send after send_timeout and drops the client
    while status(fz.o)["connections"] - 1 > base:
        assert time.monotonic() - t0 < SERVER["send_timeout"] + 30, "the non-reading client was never dropped"
        time.sleep(0.1)
    # what was already sent is still readable, then EOF: the connection is gone for good
    s.settimeout(10)
    answered = 0
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            answered += chunk.count(b"\n")
    except ConnectionResetError:
        pass
    s.close()
    assert 0 < answered < 3000                    # it got what fit in the socket buffer, then was dropped


def test_connection_limit_refuses_extra_with_busy(fz):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    limit = SERVER["max_connections"]
    assert wait_connections(fz.o, 1) == 1        # the well-behaved client's connection
    socks = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(30)
            s.connect(str(fz.o.socket))
            socks.append(s)
        busy, idle_closed = 0, 0
        deadline = time.monotonic() + 60
        open_ = {s.fileno(): (s, b"") for s in socks}
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} connections neither refused nor closed"
            r, _, _ = select.select([s for s, _ in open_.values()], [], [], 1)
            for s in r:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                s_, buf = open_[s.fileno()]
                if chunk:
                    open_[s.fileno()] = (s, buf + chunk)
                    continue
                del open_[s.fileno()]
                if buf:
                    assert buf.endswith(b"\n"), buf[:200]
                    msg = strict_json(buf)
                    assert msg["error"]["code"] == -32005 and msg["id"] is None, msg
                    assert str(limit) in msg["error"]["message"]
                    busy += 1
                else:
                    idle_closed += 1                  # accepted, then closed by idle_timeout
    finally:
        for s in socks:
            s.close()
    assert idle_closed == limit - 1, (idle_closed, busy)
    assert busy == 300 - (limit - 1)
    assert status(fz.o)["pid"] == fz.o.proc.pid


def test_many_fuzz_connections_did_not_leak(fz):
    """After everything above: no connection left behind, memory bounded, the client still fine."""
    assert wait_connections(fz.o, 1) == 1
    st = status(fz.o)
    assert st["rss_bytes"] < RSS_LIMIT and st["requests"]["in_flight"] <= 1      # the client's generate
    assert st["child"]["state"] == "ready" and st["child"]["restarts"] == 0
