"""The benchmark's pure parts: plumbing (bench/harness.py: failures recorded not raised, progress lines,
timeouts), figures and targets (bench/figures.py), the markdown (bench/report.py), the chart's bars.

No llama-server, no oracd: a fake clock, an in-memory stream, made-up samples; each test runs in milliseconds.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading

import pytest
from oracd_protocol.errors import ConnectionLost, MethodNotFound

from bench.chart import warm_bars
from bench.clients import FloorConn
from bench.figures import check_targets, comparisons, pop_raw, warm_results

from bench.harness import (FAILED, Failures, Progress, Timeouts, describe, div, failures_note, fmt_elapsed, pct,
                           sub, summary)
from bench.report import warmup_markdown, warmup_section
from bench.today import report as today_report


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_progress(**kw):
    clock, out = Clock(), io.StringIO()
    return Progress(stream=out, clock=clock, **kw), clock, out


def lines(out: io.StringIO):
    return out.getvalue().splitlines()


def boom(msg: str = "lost connection"):
    raise ConnectionError(msg)


# ---------------------------------------------------------------------- failures
def test_failures_count_per_key_and_keep_only_the_first_examples():
    f = Failures(keep=2)
    for i in range(5):
        f.add("compat client", TimeoutError(f"generate: no answer within 135 s #{i}"))
    f.add("direct HTTP", "HTTP 503")
    assert f.count("compat client") == 5 and f.count("direct HTTP") == 1 and f.count("raw JSON-RPC") == 0
    assert f.count() == 6
    assert f.get("compat client") == {"count": 5, "examples": ["TimeoutError: generate: no answer within 135 s #0",
                                                                "TimeoutError: generate: no answer within 135 s #1"]}
    assert f.get("raw JSON-RPC") == {"count": 0, "examples": []}
    assert set(f.as_dict()) == {"compat client", "direct HTTP"}


def test_describe_names_the_type_when_the_message_is_empty_and_cuts_long_ones():
    assert describe(asyncio.TimeoutError()) == "TimeoutError"
    long = describe(RuntimeError("x" * 1000), limit=50)
    assert len(long) == 50 and long.startswith("RuntimeError: xxx") and long.endswith("...")


def test_summary_leaves_failed_requests_out_and_carries_their_failures():
    f = Failures()
    f.add("v", TimeoutError("t"))
    s = summary([10.0, 20.0, 30.0], f.get("v"))
    assert (s["n"], s["p50"], s["mean"], s["min"], s["max"]) == (3, 20.0, 20.0, 10.0, 30.0)
    assert s["failures"] == {"count": 1, "examples": ["TimeoutError: t"]}
    empty = summary([])
    assert empty["n"] == 0 and empty["p50"] is None and empty["mean"] is None and "failures" not in empty
    assert empty["min"] is None and empty["max"] is None
    assert pct([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_failures_note_only_when_something_failed():
    assert failures_note({}) == []
    assert failures_note({"direct HTTP": {"count": 0, "examples": []}}) == []
    note = failures_note({"direct HTTP": {"count": 0, "examples": []},
                          "old per-call CLI": {"count": 2, "examples": ["Exception: timed out\nsecond line"]}})
    assert note == ["Failed requests, left out of the figures: old per-call CLI: 2 (e.g. Exception: timed out)."]


def test_attempt_and_timed_record_a_failure_instead_of_raising():
    progress, _, _ = make_progress()
    ph = progress.phase("warm generate", 3, "run")
    assert ph.attempt("raw JSON-RPC", lambda x: x * 2, 21) == 42
    assert ph.attempt("raw JSON-RPC", boom) is FAILED
    times = {"direct HTTP": []}

    async def ok():
        return {"usage": {}}

    async def bad():
        raise TimeoutError("direct HTTP: no answer within 120 s")

    async def go():
        assert await ph.attempt_async("direct HTTP", ok) == {"usage": {}}
        assert await ph.attempt_async("direct HTTP", bad) is FAILED
        assert await ph.sample(times, "direct HTTP", ok) >= 0
        assert await ph.sample(times, "direct HTTP", bad) is None
        assert await ph.timed("direct HTTP", bad) is None

    asyncio.run(go())
    assert len(times["direct HTTP"]) == 1                   # only the successful request is a sample
    assert ph.failures.count("raw JSON-RPC") == 1 and ph.failures.count("direct HTTP") == 3
    assert ph.failures.get("raw JSON-RPC")["examples"] == ["ConnectionError: lost connection"]


def test_attempt_does_not_swallow_cancellation():
    """Ctrl-C / task cancellation must still stop the run: only Exception is recorded."""
    progress, _, _ = make_progress()
    ph = progress.phase("p", 1)

    async def cancelled():
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(ph.attempt_async("k", cancelled))
    assert ph.failures.count() == 0


# ---------------------------------------------------------------------- phases
def test_a_phase_that_cannot_run_is_recorded_as_failed_and_the_next_one_runs():
    progress, clock, out = make_progress()

    def no_daemon(ph):
        clock.now += 3
        raise RuntimeError("oracd would not start: TimeoutError: oracd not ready after 180s:\nstderr tail")

    async def works(ph):
        ph.fail("status", OSError("reset"))
        return {"status": 1.0}

    async def go():
        return (await progress.phase("warm generate", 60).run(no_daemon),
                await progress.phase("memory", 10, "request").run(works))

    failed, ok = asyncio.run(go())
    assert failed["failed"].startswith("RuntimeError: oracd would not start: TimeoutError")
    assert ok == {"status": 1.0, "failures": {"status": {"count": 1, "examples": ["OSError: reset"]}}}
    assert progress.failed_phases() == ["warm generate"]
    assert progress.phases["warm generate"]["elapsed_s"] == 3.0
    assert progress.phases["memory"] == {"elapsed_s": 0.0, "failed_requests": 1, "failed": None}
    text = lines(out)
    assert text[1] == ("[bench 0:03] warm generate: FAILED after 0:03: RuntimeError: oracd would not start: "
                       "TimeoutError: oracd not ready after 180s:")        # first line only on stderr
    assert text[-1] == "[bench 0:03] memory: done in 0:00, 0/10 requests, 1 failed requests"


def test_a_sync_body_works_too():
    progress, _, _ = make_progress()
    assert asyncio.run(progress.phase("cold start", 1).run(lambda ph: {"x": 1}))["x"] == 1


# ---------------------------------------------------------------------- progress lines
@pytest.mark.parametrize("seconds,text", [(0, "0:00"), (42.9, "0:42"), (65, "1:05"), (725, "12:05"),
                                          (3723, "1:02:03"), (-1, "0:00")])
def test_fmt_elapsed(seconds, text):
    assert fmt_elapsed(seconds) == text


def test_progress_prints_start_about_every_tenth_and_end_not_every_request():
    progress, clock, out = make_progress(min_gap=2.0, max_gap=15.0)
    clock.now += 42
    ph = progress.phase("warm generate", 60, "run", "direct, raw JSON-RPC, compat, old CLI interleaved")

    async def go():
        async def body(ph):
            for i in range(60):
                clock.now += 0.5                      # 30 s in all: a 10% step every 3 s
                if i == 10:
                    ph.fail("compat client", TimeoutError("t"))
                ph.advance()
            return {}
        return await ph.run(body)

    asyncio.run(go())
    text = lines(out)
    assert text[0] == ("[bench 0:42] warm generate: start, 60 runs "
                       "(direct, raw JSON-RPC, compat, old CLI interleaved)")
    assert text[1] == "[bench 0:45] warm generate: run 6/60 (direct, raw JSON-RPC, compat, old CLI interleaved)"
    assert text[2].endswith("run 12/60 (direct, raw JSON-RPC, compat, old CLI interleaved), 1 failed")
    assert text[-1] == "[bench 1:12] warm generate: done in 0:30, 60/60 runs, 1 failed requests"
    periodic = [ln for ln in text if re.search(r" run \d+/60", ln)]
    assert [int(re.search(r"run (\d+)/", ln).group(1)) for ln in periodic] == [6, 12, 18, 24, 30, 36, 42, 48, 54]


def test_fast_phase_prints_no_periodic_lines():
    """Thousands of sub-millisecond calls: min_gap keeps stderr to the start and end lines."""
    progress, clock, out = make_progress(min_gap=2.0)
    ph = progress.phase("RPC floor", 2000, "call")
    asyncio.run(ph.run(lambda ph: [ph.advance() for _ in range(2000)] and {}))
    assert len(lines(out)) == 2 and "done" in lines(out)[1] and "2000/2000 calls" in lines(out)[1]


def test_slow_units_still_report_after_max_gap():
    """Units slower than a 10% step still get a line at least every max_gap seconds."""
    progress, clock, out = make_progress(every_frac=0.5, min_gap=2.0, max_gap=15.0)
    ph = progress.phase("warm-up", 100, "load")
    for _ in range(3):
        clock.now += 16
        ph.advance()
    assert [ln.split("] ")[1] for ln in lines(out)] == ["warm-up: load 1/100", "warm-up: load 2/100",
                                                        "warm-up: load 3/100"]


def test_zero_total_does_not_divide_by_zero():
    progress, _, out = make_progress()
    ph = progress.phase("cold start", 0)
    ph.advance()
    assert lines(out) == []


def test_finish_line_names_failed_phases():
    progress, _, out = make_progress()

    def fail(ph):
        raise OSError("no socket")

    asyncio.run(progress.phase("concurrency", 4).run(fail))
    asyncio.run(progress.phase("memory", 4).run(lambda ph: {}))
    progress.finish()
    assert lines(out)[-1] == "[bench 0:00] finished: 2 phases, 1 FAILED (concurrency), 0 failed requests"


# ---------------------------------------------------------------------- timeouts
def test_timeouts_are_generous_and_scale_together_but_cleanup_never_shrinks():
    t = Timeouts()
    assert (t.generate, t.load, t.start) == (120.0, 300.0, 180.0)
    half = t.scaled(0.5)
    assert (half.generate, half.load, half.start, half.call) == (60.0, 150.0, 90.0, 15.0)
    assert half.stop == t.stop
    assert t.scaled(3).stop == 3 * t.stop
    with pytest.raises(ValueError):
        t.scaled(0)


def test_div_and_sub_say_missing_instead_of_failing():
    assert div(10, 4, 2) == 2.5 and div(None, 4, 2) is None and div(1, 0, 2) is None
    assert sub(106.364, 106.304) == 0.06 and sub(1.0, None) is None


# ---------------------------------------------------------------------- figures: warm generate
def gen(direct, raw, compat, cli):
    return {"direct HTTP": {"p50": direct}, "raw JSON-RPC": {"p50": raw}, "compat client": {"p50": compat},
            "old per-call CLI": {"p50": cli}}


def test_generate_comparisons_put_each_client_under_its_own_name():
    c = comparisons(gen(100.0, 101.0, 103.0, 400.0))
    assert c["overhead_ms_p50"] == {"raw JSON-RPC": 1.0, "compat client": 3.0}
    assert c["overhead_ratio_p50"] == {"raw JSON-RPC": 1.01, "compat client": 1.03}
    assert c["speedup_vs_old_cli"]["direct HTTP"] == 4.0 and c["speedup_vs_old_cli"]["compat client"] == 3.88
    assert c["speedup_vs_old_cli"]["share_of_direct_speedup"] == round(100 / 103, 4)      # the compat client's
    assert comparisons(gen(100.0, 101.0, 103.0, None))["speedup_vs_old_cli"]["share_of_direct_speedup"] is None


def test_check_targets_use_the_compat_client_and_say_not_measured_for_a_failed_phase():
    g = {**gen(100.0, 100.5, 103.0, 400.0)}
    g.update(comparisons(g))
    res = {"generate": g, "memory": {"oracd RSS idle MB": 40.0, "oracd RSS after 10 requests MB": 61.0},
           "rpc": {"status latency ms (1 conn)": {"p50": 0.2}}, "concurrency": {"failed": "no daemon"}}
    t = check_targets(res)
    assert t["generate overhead p50 <= max(1 ms, 2% of direct)"] == {"met": False, "value": "3.0 ms"}
    assert t["status p50 <= 0.3 ms (1 conn)"] == {"met": True, "value": "0.2 ms"}
    assert t["speed-up vs old CLI >= 97% of direct's"] == {"met": True, "value": "97.1%"}
    assert t[">= 95% of direct throughput at 8 clients"] == {"met": False, "value": "not measured"}
    assert t["oracd RSS <= 60 MB"] == {"met": False, "value": "61.0 MB"}


# ---------------------------------------------------------------------- figures: warm-up and warm restore
def no_failures(key):
    return {"count": 0, "examples": []}


def warm(off, on, restore, crash_on=None, crash_restore=None):
    """warm_results from per-variant samples given as (load, first, second) lists."""
    def steps(rounds):
        return {"load_ms": [r[0] for r in rounds], "first_ms": [r[1] for r in rounds],
                "load_plus_first_ms": [r[0] + r[1] for r in rounds], "second_ms": [r[2] for r in rounds]}

    crash = {"warmup on": crash_on or {}, "restore": crash_restore or {}}
    return warm_results(len(off), {"warmup off": steps(off), "warmup on": steps(on), "restore": steps(restore)},
                        crash, no_failures, parallel=2, restart_backoff_s=0.2)


def test_warm_targets_met_when_restore_is_nearly_free():
    w = warm(off=[(280, 2400, 410), (300, 2500, 420)], on=[(4500, 400, 410), (4600, 420, 420)],
             restore=[(350, 430, 410), (370, 450, 420)])
    t = w["targets"]
    assert t["restore load_model <= 1.3x no warm-up's"] == {"met": True, "value": "360.0 ms vs 290.0 ms (x1.24)"}
    assert t["restore first generate <= 1.1x steady-state generate"] == {
        "met": True, "value": "440.0 ms vs 415.0 ms (x1.06)"}
    # restore's load + first (p50 of the sums: 800) against no warm-up's load p50 + steady p50 (290 + 415)
    assert t["restore load + first generate <= 1.2x (no warm-up load + steady-state generate)"] == {
        "met": True, "value": "800.0 ms vs 705.0 ms (x1.13)"}
    assert w["first_request_saving_ms_p50"] == 2040.0 and w["first_request_speedup_p50"] == 5.98
    assert w["load_plus_first_saving_ms_p50"] == 2740.0 - 4960.0      # a longer load: negative


def test_warm_targets_missed_and_unmeasured():
    w = warm(off=[(280, 2400, 410)], on=[(4500, 400, 410)], restore=[(400, 600, 410)])
    t = w["targets"]
    assert [v["met"] for v in t.values()] == [False, False, False]
    assert t["restore load_model <= 1.3x no warm-up's"]["value"] == "400.0 ms vs 280.0 ms (x1.43)"
    none = warm(off=[(280, 2400, 410)], on=[(4500, 400, 410)], restore=[])     # every restore load failed
    assert all(v == {"met": False, "value": "not measured"} for v in none["targets"].values())
    assert none["restore"]["load_ms"] == {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None,
                                          "min": None, "max": None}


def test_warm_results_keep_every_step_and_take_raw_samples_out():
    w = warm(off=[(280, 2400, 410)], on=[(4500, 400, 410)], restore=[(350, 430, 410)],
             crash_restore={"ready_ms": [900.0, 1100.0], "first_ms": [420.0, 440.0],
                            "ready_plus_first_ms": [1320.0, 1540.0], "warmup_ms": [300.0, 320.0]})
    assert set(w["restore"]) == {"load_ms", "first_ms", "load_plus_first_ms", "second_ms", "warmup_ms",
                                 "failures", "_raw"}
    assert w["crash_restart"]["restore"]["ready_ms"]["p50"] == 1000.0
    assert w["crash_restart"]["warmup on"]["ready_ms"]["n"] == 0
    assert (w["loads"], w["parallel"], w["restart_backoff_s"]) == (1, 2, 0.2)
    raw = pop_raw(w)
    assert raw["restore"]["load_ms"] == [350] and raw["crash_restart"]["restore"]["first_ms"] == [420.0, 440.0]
    assert "_raw" not in w["restore"] and "_raw" not in w["crash_restart"]["restore"]
    json.dumps(w)                                       # what is left is the JSON as written


# ---------------------------------------------------------------------- report and chart
def test_warmup_markdown_has_a_table_per_variant_the_crash_table_and_the_targets():
    w = warm(off=[(280, 2400, 410), (300, 2500, 420)], on=[(4500, 400, 410), (4600, 420, 420)],
             restore=[(350, 430, 410), (370, 450, 420)],
             crash_on={"ready_ms": [5000.0], "first_ms": [420.0], "ready_plus_first_ms": [5420.0]},
             crash_restore={"ready_ms": [900.0], "first_ms": [430.0], "ready_plus_first_ms": [1330.0]})
    w["first_request_prompt_tokens"] = 650
    w["cached_prompt_tokens"] = {"restore": {"first": [621, 621], "second": [600, 621], "crash_first": [621]}}
    w["restore"]["failures"] = {"count": 1, "examples": ["status.child.warm.how is 'prefilled', not 'restored'"]}
    pop_raw(w)
    md = warmup_markdown(w)
    assert md[0].startswith("Warm-up: 2 interleaved loads per variant, 650-token few-shot system prompt")
    heads = [ln for ln in md if ln.startswith("| ") and "p50 ms | min ms" in ln]
    assert heads == ["| no warm-up (warmup = false) | p50 ms | min ms | max ms | n |",
                     "| prefill warm-up (warmup = true, warm_restore = false) | p50 ms | min ms | max ms | n |",
                     "| restore (warmup = true, warm_restore = true) | p50 ms | min ms | max ms | n |"]
    assert "| load_model, to ready (includes warm-up) | 360.0 | 350 | 370 | 2 |" in md
    assert not any(ln.startswith("| status.child.warm.ms") for ln in md)       # no samples: no row
    assert "| SIGKILL to ready (new pid) | 5000.0 (5000.0-5000.0) | 900.0 (900.0-900.0) |" in md
    assert ("Failed requests, left out of the figures: restore: 1 (e.g. status.child.warm.how is 'prefilled', "
            "not 'restored').") in md
    assert ("Prompt tokens found in the slot's cache (usage.cached_tokens): first generate 621, "
            "second generate 600-621.") in md
    assert ("Prompt tokens found in the slot's cache (usage.cached_tokens): restore, first answer after the "
            "restart 621.") in md
    assert "| restore first generate <= 1.1x steady-state generate | yes | 440.0 ms vs 415.0 ms (x1.06) |" in md
    text = "\n".join(md)
    assert "\n\n| restore (warmup" in text and "| 2 |\n\nPrompt tokens" in text     # tables stand apart
    assert "second generate 600-621.\n\nFailed requests" in text


def test_warmup_section_of_a_phase_that_could_not_run():
    assert warmup_section({"failed": "RuntimeError: oracd would not start\ntail"}) == [
        "**warm-up: not measured** (RuntimeError: oracd would not start)."]


def test_the_gemma_warmup_section_follows_the_smollm2_one_when_it_ran():
    from bench.report import gemma_warmup_section
    assert gemma_warmup_section({"warmup": {}}) == []
    lines = gemma_warmup_section({"warmup_gemma": {"model": "gemma-3-270m-q4_k_m.gguf", "failed": "boom"}})
    assert lines[1].startswith("Warm-up on gemma-3-270m-q4_k_m.gguf (sliding-window attention; warm restore "
                               "with --swa-full")
    assert lines[-1] == "**warm-up: not measured** (boom)."


def test_chart_bars_stack_the_wait_to_ready_and_the_first_answer():
    w = warm(off=[(280, 2400, 410)], on=[(4500, 400, 410)], restore=[],
             crash_restore={"ready_ms": [900.0], "first_ms": [430.0]})
    bars = warm_bars(w)
    assert [b["label"] for b in bars] == ["no warm-up", "prefill warm-up", "crash restart,\nrestore"]
    assert bars[0] == {"label": "no warm-up", "ready": 280, "first": 2400}
    assert bars[2] == {"label": "crash restart,\nrestore", "ready": 900.0, "first": 430.0}


# ---------------------------------------------------------------------- the blocking floor client
@pytest.fixture
def fake_oracd(tmp_path):
    """A one-connection-at-a-time Unix socket server answering lines from ``answers(request)``."""
    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)
    state = {"answers": None, "connections": 0}

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            state["connections"] += 1
            with conn, conn.makefile("rb") as rf:
                for line in rf:
                    conn.sendall(json.dumps(state["answers"](json.loads(line))).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    yield path, state
    srv.close()


def test_floor_conn_times_a_round_trip_raises_oracd_errors_and_reconnects_after_a_wrong_id(fake_oracd):
    path, state = fake_oracd
    conn = FloorConn(path, 5.0)
    state["answers"] = lambda req: {"jsonrpc": "2.0", "id": req["id"], "result": {"ok": True}}
    assert 0 < conn.round_trip_ms("status") < 5000
    state["answers"] = lambda req: {"jsonrpc": "2.0", "id": req["id"],
                                    "error": {"code": -32601, "message": "Method not found"}}
    with pytest.raises(MethodNotFound):
        conn.round_trip_ms("nope")
    assert state["connections"] == 1                       # an error answer leaves the connection usable
    state["answers"] = lambda req: {"jsonrpc": "2.0", "id": 999, "result": {}}
    with pytest.raises(ConnectionLost, match="answer to id 999"):
        conn.round_trip_ms("status")
    state["answers"] = lambda req: {"jsonrpc": "2.0", "id": req["id"], "result": {}}
    conn.round_trip_ms("status")
    assert state["connections"] == 2
    conn.close()


def test_the_http_phase_figures_and_targets():
    from bench.http import figures, targets
    times = {"direct /v1": [100.0, 102.0, 104.0], "oracd /v1": [100.5, 102.5, 104.5],
             "direct /v1 first token": [20.0, 21.0, 22.0], "oracd /v1 first token": [21.5, 22.5, 23.5],
             "oracd /api/chat": [103.0, 104.0, 105.0]}
    res = figures(times, {"oracd": [95.0, 96.0], "direct": [100.0, 100.0]}, {})
    assert res["added_ms_p50"] == {"non-streamed": 0.5, "first token": 1.5, "ollama vs openai path": 1.5}
    assert res["throughput_ratio"] == 0.955
    met = {k: v["met"] for k, v in targets(res).items()}
    assert list(met.values()) == [True, False, True]
    assert "floor_added_ms_p50" not in res
    floored = figures({**times, "floor /v1": [101.0, 103.0, 105.0], "floor /v1 first token": [20.5, 21.5, 22.5]},
                      {"oracd": [95.0, 96.0], "direct": [100.0, 100.0]}, {})
    assert floored["floor_added_ms_p50"] == {"non-streamed": 1.0, "first token": 0.5}
    empty = figures({k: [] for k in times}, {"oracd": [], "direct": []}, {})
    assert all(v["met"] is False and v["value"] == "not measured" for v in targets(empty).values())


def test_the_today_shim_measurement_lives_in_bench_and_reports_p50_min_and_speedups():
    """``python -m bench.today``: a measurement tool, kept out of the runtime client package."""
    def runs(*ms, **extra):
        return [{"ms": m, "total_ms": m * 2, "cached": 140, "prompt": 160, **extra} for m in ms]
    a = {"cold": runs(1000, 1100, 1200), "prewarm": runs(300, 350, 400), "prewarm_call": runs(50, 60, 70)}
    b = {"oracd": runs(400, 420, 440, same_pid=True), "orac": runs(700, 800, 900, same_pid=False)}
    text = today_report("m.gguf", 3, a, b)
    assert "today's ORAC on oracd: m.gguf, 3 repetitions" in text
    assert "first command speed-up (p50): 3.14x" in text                  # 1100 / 350
    assert "same llama-server pid: oracd 3/3, ORAC's way 0/3" in text
    assert "grammar change to answer speed-up (p50): 1.90x" in text       # 1600 / 840
    import importlib.util
    assert importlib.util.find_spec("oracd_client.compat.measure_today") is None


def test_the_command_phases_controlled_pass_counts_agreement_and_lists_each_difference():
    from bench.command import controlled_figures
    def a(text, ff=True):
        return {"text": text, "fast_forward": ff}
    got = {"b": [a('{"v":1}'), a('{"v":2}'), a('{"v":3}'), None],
           "c": [a('{"v":1}'), a('{"v": 2}'), a('{"v":9}'), a('{"v":4}')],
           "b2": [a('{"v":1}'), a('{"v":2}'), a('{"v":3}'), a('{"v":4}')]}
    res = controlled_figures(["one", "two", "three", "four"], got)
    assert res["commands"] == 3                       # a failed answer leaves its command out
    assert res["b2_same_as_b"] == 1.0
    assert res["c_same_as_b"] == 0.667                # the same JSON value with other whitespace is the same
    assert res["differences"] == [{"command": "three", "b": '{"v":3}', "c": '{"v":9}', "c_fast_forwarded": True}]
