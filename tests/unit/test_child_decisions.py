"""The supervisor's pure decisions, in milliseconds: swap order, backoff, crash-loop fail-fast, hang detection,
and the state table."""
from __future__ import annotations

import pytest

from oracd.child.backoff import BackoffPolicy
from oracd.child.failures import classify_load_failure, telling_line, worker_lost
from oracd.child.hang import HangDetector, slot_progress
from oracd.child.states import LEGAL, ChildState as S, IllegalTransition, check_transition
from oracd.child.swap_queue import SwapQueue


# ---------------------------------------------------------------------- swap queue
def test_first_request_picks_the_model_and_others_queue_in_arrival_order():
    q = SwapQueue()
    q.arrive("a")
    assert q.current == "a" and q.never_ready
    q.arrive("c")
    q.arrive("b")
    q.arrive("c")                      # queued once, at its first arrival
    assert q.advance() is None         # someone still waits for "a"
    q.leave("a")
    assert q.swap_due()
    assert q.advance() == "c" and q.current == "c" and q.never_ready
    q.leave("c")
    assert q.advance() is None         # the second "c" request still waits
    q.leave("c")
    assert q.advance() == "b" and q.current == "b"     # then "b", and "c" is not queued twice
    q.leave("b")
    assert q.advance() is None and not q.swap_due()


def test_no_ping_pong_everyone_waiting_for_the_new_model_is_served_first():
    q = SwapQueue()
    q.arrive("a")
    q.arrive("b")
    q.leave("a")
    assert q.advance() == "b"
    q.arrive("a")                      # "a" wanted again while "b" has waiters
    q.arrive("b")
    q.leave("b")
    assert q.advance() is None         # one "b" request still waits: stay on "b"
    q.leave("b")
    assert q.advance() == "a"


def test_a_model_whose_waiters_gave_up_is_skipped():
    q = SwapQueue()
    q.arrive("a")
    q.arrive("b")
    q.arrive("c")
    q.leave("b")                       # timed out while queued
    q.leave("a")
    assert q.advance() == "c"
    q.leave("c")
    assert q.advance() is None and q.current == "c"   # nothing left: "b" is not revived


def test_unload_and_served():
    q = SwapQueue()
    q.arrive("a")
    q.served()
    assert not q.never_ready
    q.unload()
    assert q.current is None and not q.swap_due()
    q.leave("a")
    q.arrive("a")
    assert q.current == "a" and q.never_ready   # the same model after an unload is a fresh load again


# ---------------------------------------------------------------------- backoff
def test_backoff_doubles_caps_and_fails_fast_at_the_threshold():
    p = BackoffPolicy(initial=0.5, maximum=4.0, reset_after=60.0, fail_fast_after=3)
    assert [p.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert p.delay(10_000) == 4.0                      # no overflow on a long crash loop
    assert [p.fail_fast(n) for n in (0, 2, 3, 9)] == [False, False, True, True]
    assert not p.healthy_long_enough(59.9) and p.healthy_long_enough(60.1)


# ---------------------------------------------------------------------- hang detection
def busy(*decoded, task=7):
    return [{"id": 0, "is_processing": True, "id_task": task, "n_prompt_tokens_processed": 10,
             "next_token": [{"n_decoded": d} for d in decoded]}, {"id": 1, "is_processing": False}]


def test_slot_progress_reads_only_busy_slots():
    assert slot_progress(busy(3)) == ((0, 7, 10, (3,)),)
    assert slot_progress([{"id": 1, "is_processing": False}]) == ()
    assert slot_progress({"error": "no"}) == ()


def test_frozen_counters_with_an_idle_cpu_is_a_hang():
    d = HangDetector(hang_timeout=10, health_timeout=2, now=0.0)
    assert d.slots(0.0, slot_progress(busy(5)), cpu_s=1.0) is None
    assert d.slots(5.0, slot_progress(busy(5)), cpu_s=1.1) is None        # frozen, but not for long
    why = d.slots(10.5, slot_progress(busy(5)), cpu_s=1.2)
    assert why and why.startswith("no progress in /slots for 10.5s")


def test_frozen_counters_while_burning_cpu_is_a_long_prompt_not_a_hang():
    d = HangDetector(hang_timeout=10, health_timeout=2, now=0.0)
    d.slots(0.0, slot_progress(busy(5)), cpu_s=0.0)
    assert d.slots(30.0, slot_progress(busy(5)), cpu_s=25.0) is None


def test_moving_counters_are_never_a_hang():
    d = HangDetector(hang_timeout=10, health_timeout=2, now=0.0)
    for t in range(0, 100, 5):
        assert d.slots(float(t), slot_progress(busy(t)), cpu_s=0.0) is None


def test_unanswered_probe_counts_from_the_first_failure_plus_its_timeout():
    d = HangDetector(hang_timeout=10, health_timeout=2, now=0.0)
    assert d.failed(1.0, "/health") is None
    assert d.failed(8.0, "/health") is None                 # 7 s + 2 s timeout = 9 s
    assert d.failed(9.0, "/health") == "/health unanswered for 10.0s"
    assert d.health(9.5, True) is None and d.unhealthy_since is None   # one answer clears it
    assert d.failed(10.0, "/slots") is None


# ---------------------------------------------------------------------- states and failures
def test_transition_table_allows_the_documented_moves_and_rejects_others_loudly():
    for prev, new in [(S.STOPPED, S.STARTING), (S.STARTING, S.READY), (S.READY, S.STOPPING),
                      (S.STOPPING, S.STOPPED), (S.READY, S.BACKOFF), (S.BACKOFF, S.STARTING),
                      (S.STARTING, S.FAILED), (S.STOPPING, S.BACKOFF), (S.FAILED, S.STARTING)]:
        check_transition(prev, new)
    for prev, new in [(S.STOPPED, S.READY), (S.READY, S.STARTING), (S.SHUTDOWN, S.STARTING),
                      (S.FAILED, S.READY), (S.READY, S.READY)]:
        with pytest.raises(IllegalTransition, match=f"{prev.value} -> {new.value}"):
            check_transition(prev, new)
    assert LEGAL[S.SHUTDOWN] == frozenset()
    assert all(S.SHUTDOWN in LEGAL[s] for s in S if s not in (S.SHUTDOWN, S.READY))


def test_load_failure_reasons_and_the_telling_line():
    tail = ["llama_model_load: error loading model: tensor 'x' data is not within the file bounds",
            "srv load_model: failed to load model", "exiting due to model loading error"]
    assert classify_load_failure(tail) == "corrupt"
    assert telling_line(tail) == tail[0]
    assert classify_load_failure(["ggml_cuda: cudaMalloc failed: out of memory"]) == "out_of_memory"
    assert classify_load_failure(["something else"]) == "load_failed"
    assert telling_line(["a", "b failed here", "c"]) == "b failed here"
    assert worker_lost(["ggml-rpc.cpp:123: Remote RPC server crashed"]) and not worker_lost(["fine"])


def test_sliding_window_models_are_detected_from_the_gguf_header(tmp_path):
    import gguf
    from oracd.child.warmup import restore_support
    from oracd.config import Config
    from oracd.models.gguf import read_gguf_header
    path = tmp_path / "swa.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_uint32("gemma3.attention.sliding_window", 512)
    w.add_uint32("gemma3.block_count", 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    meta = read_gguf_header(path)
    assert meta["architecture"] == "gemma3" and meta["sliding_window"] == 512
    assert restore_support(Config(), meta) == "unsupported: sliding-window attention (gemma3) without --swa-full"


def test_oom_restarts_back_off_harder():
    p = BackoffPolicy(initial=0.5, maximum=30.0, reset_after=60.0, fail_fast_after=3)
    assert p.delay(1, "out_of_memory") == 5.0 and p.delay(4, "out_of_memory") == 16.0
    assert p.delay(9, "out_of_memory") == 30.0 and p.delay(1) == 0.5


def test_wedge_needs_a_streak_of_failures_within_the_window():
    from oracd.child.wedge import WedgeDetector
    w = WedgeDetector(threshold=3, window=60)
    assert not w.failure(0) and not w.failure(1)
    w.success()                                   # one good answer in between: start over
    assert not w.failure(2) and not w.failure(3) and w.failure(4)
    slow = WedgeDetector(threshold=3, window=60)
    assert not slow.failure(0) and not slow.failure(100) and not slow.failure(200)   # a trickle, not a wedge
    assert slow.streak == 1


def test_memory_estimate_from_the_header():
    from oracd.memory import MiB, estimate, kv_types
    meta = {"weights_bytes": 100 * MiB, "block_count": 30, "head_count": 9, "head_count_kv": 3,
            "embedding_length": 576, "context_length": 8192}
    fp = estimate(meta, ctx_size=2048, extra_args=[], cache_ram_mb=256)
    # 30 layers x 2048 positions x 3 KV heads x 64 dims x (K + V) x 2 bytes (f16)
    assert fp.kv == 30 * 2048 * 3 * 64 * 2 * 2
    assert fp.weights == 100 * MiB and fp.compute == 64 * MiB and fp.host_cache == 256 * MiB
    assert estimate(meta, 0, [], 0).kv == fp.kv * 4             # ctx 0: the model's own context length
    assert kv_types(["-ctk", "q8_0", "-fa", "on"]) == ("q8_0", "f16")
    assert estimate(meta, 2048, ["-ctk", "q8_0", "-ctv", "q8_0"], 0).kv < fp.kv * 0.6
    huge = estimate({"weights_bytes": 200 * 2 ** 30}, 2048, [], 256)
    assert huge.total > 200 * 2 ** 30 and huge.compute == int(200 * 2 ** 30 * 0.05)


def test_sliding_window_layers_keep_a_window_not_the_whole_context():
    from oracd.memory import estimate, full_attention_layers
    gemma3 = {"architecture": "gemma3", "block_count": 18, "sliding_window": 512, "head_count": 4,
              "head_count_kv": 1, "key_length": 256, "value_length": 256}
    assert full_attention_layers(gemma3) == 3                               # layers 5, 11, 17
    assert full_attention_layers({**gemma3, "sliding_window_pattern": 3}) == 6
    assert full_attention_layers({**gemma3, "sliding_window_pattern": [True, False] * 9}) == 9
    assert full_attention_layers({**gemma3, "sliding_window": 0}) == 18     # gemma3 without a window: all full
    assert full_attention_layers({**gemma3, "architecture": "mystery"}) == 18  # unknown pattern: the worst case
    assert full_attention_layers({"architecture": "gemma2", "block_count": 26}) == 13   # 4096 window by default
    per_position = 1 * (256 + 256) * 2
    # 8192 positions over 2 slots: full layers hold 8192; windowed ones 2 x pad256(512 + 512)
    assert estimate(gemma3, 8192, [], 0, parallel=2).kv == per_position * (3 * 8192 + 15 * 2 * 1024)
    assert estimate(gemma3, 8192, ["-ub", "256"], 0, parallel=4, ubatch=256).kv == \
        per_position * (3 * 8192 + 15 * 4 * 768)
    assert estimate(gemma3, 8192, ["-kvu"], 0, parallel=2).kv == per_position * (3 * 8192 + 15 * 1536)
    assert estimate(gemma3, 8192, ["--swa-full"], 0, parallel=2).kv == per_position * 18 * 8192
    assert estimate(gemma3, 512, [], 0, parallel=2).kv == per_position * 18 * 512   # the window covers it all


def test_fit_ctx_picks_the_largest_context_that_fits_and_says_when_none_does():
    from oracd.memory import MiB, estimate, judge
    meta = {"weights_bytes": 100 * MiB, "block_count": 30, "head_count": 9, "head_count_kv": 3,
            "embedding_length": 576, "context_length": 8192}
    per_token = 30 * 3 * 64 * 2 * 2                                   # 23040 bytes of f16 KV per position
    fixed = 100 * MiB + 64 * MiB                                      # weights + compute (no host cache)
    margin = 16 * MiB
    full = judge("m", meta, 8192, [], 0, margin, room=fixed + margin + 8192 * per_token, parallel=2, fit_ctx=True)
    assert full.ctx == 8192 and not full.shrunk and "ctx_size" not in full.as_dict()
    room = fixed + margin + 3000 * per_token                          # room for 3000 positions: 2816 (11 x 256)
    v = judge("m", meta, 8192, [], 0, margin, room, parallel=2, fit_ctx=True)
    assert v.ctx == 2816 and v.shrunk and v.need <= room
    assert v.footprint == estimate(meta, 2816, [], 0)
    assert v.as_dict() == {"model": "m", "required_bytes": v.need, "available_bytes": room, "ctx_size": 2816,
                           "configured_ctx_size": 8192}
    assert judge("m", meta, 0, [], 0, margin, room, 2, True).ctx == 2816      # 0: the model's own 8192
    off = judge("m", meta, 8192, [], 0, margin, room, parallel=2, fit_ctx=False)
    assert off.ctx is None and off.need > room                       # without fit_ctx: refused
    tight = fixed + margin + 600 * per_token                         # 512 fits, but 2 slots need 2 x 256
    assert judge("m", meta, 8192, [], 0, margin, tight, parallel=2, fit_ctx=True).ctx == 512
    assert judge("m", meta, 8192, [], 0, margin, tight, parallel=4, fit_ctx=True).ctx is None
    assert judge("m", meta, 8192, [], 0, margin, fixed, parallel=1, fit_ctx=True).ctx is None


def test_cgroup_budget_and_oom_count(tmp_path):
    from oracd.memory import MiB, available, oom_kills
    (tmp_path / "memory.max").write_text(f"{512 * MiB}\n")
    (tmp_path / "memory.current").write_text(f"{400 * MiB}\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    avail, source = available(tmp_path)
    assert avail == 112 * MiB and "memory.max 512 MiB" in source
    assert oom_kills(tmp_path) == 2 and oom_kills(None) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert available(tmp_path)[1] == "MemAvailable"


# ---------------------------------------------------------------- a load killed from outside: one retry
def test_a_load_ended_by_an_outside_signal_is_retried_once():
    import signal as s
    from oracd.child.failures import load_retry_due
    assert load_retry_due(-s.SIGKILL, None, retried=False)
    assert load_retry_due(-s.SIGTERM, None, retried=False)
    assert not load_retry_due(-s.SIGKILL, None, retried=True)          # once only
    assert not load_retry_due(-s.SIGKILL, "stop", retried=False)       # we killed it ourselves
    assert not load_retry_due(-s.SIGSEGV, None, retried=False)         # a crash says something about the build
    assert not load_retry_due(1, None, retried=False)                  # an error exit: the model's fault


def test_llama_server_per_request_chatter_is_debug_the_rest_keeps_its_level():
    import logging
    from oracd.child.instance import child_line_level
    assert child_line_level("0.01.224.106 I slot print_timing: id  7 | task 25 |  total time = 31.79 ms") == logging.DEBUG
    assert child_line_level("0.01.228.435 I slot get_availabl: id  7 | task -1 | selected slot by LCP") == logging.DEBUG
    assert child_line_level("0.00.101.000 I srv  update_slots: all slots are idle") == logging.DEBUG
    # a whole-prompt cache hit: normal operation
    assert child_line_level("0.01.228.835 W slot   operator(): id  7 | task 30 | need to evaluate at least 1 token "
                            "for each active slot (n_past = 31, task.n_tokens() = 31)") == logging.DEBUG
    assert child_line_level("0.01.228.992 W slot   operator(): id  7 | task 30 | n_past was set to 30") == logging.DEBUG
    # any other warning or error about a slot is never hidden; neither is load-time information
    assert child_line_level("0.01.228.835 W slot update_slots: id  0 | task 9 | slot context shift") == logging.WARNING
    assert child_line_level("0.00.100.000 E slot launch_slot_: id 0 | failed to parse grammar") == logging.ERROR
    assert child_line_level("0.00.050.000 I main: server is listening on unix:///tmp/x.sock") == logging.INFO
    assert child_line_level("llama_model_loader: loaded meta data with 33 key-value pairs") == logging.INFO


# ---------------------------------------------------------------------- return to the default model
def test_idle_rules_keep_alive_and_the_default_model():
    import math
    from pathlib import Path
    from oracd.child.idle_rules import IdleRules
    r = IdleRules()
    assert r.return_at("other.gguf", 100.0, 300) is None          # no default yet: nowhere to return
    r.set_default("default.gguf", Path("/m/default.gguf"))
    assert r.return_at("default.gguf", 100.0, 300) is None        # the default never gives way to itself
    assert r.return_at("other.gguf", 100.0, 300) == 400.0         # the config's return_to_default_after
    assert r.return_at("other.gguf", 100.0, 0) is None            # 0: never
    r.set_keep_alive("other.gguf", 0)
    assert r.return_at("other.gguf", 100.0, 300) == 100.0         # keep_alive 0: right after the request
    r.set_keep_alive("other.gguf", math.inf)
    assert r.return_at("other.gguf", 100.0, 300) is None          # pinned
    r.set_keep_alive("default.gguf", 5)                            # a client cannot make the default go
    assert "default.gguf" not in r.keep_alive
