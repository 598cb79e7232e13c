"""The READY child's probes (child/watchdog.py), against stand-ins: which probe is asked, and what is judged.

The owner loop decides when to probe and acts on the verdict (tests/fake/test_supervisor.py shows the
kill and restart end to end); here, one probe at a time, in milliseconds.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, List, Optional

import pytest

from oracd.child.watchdog import Probe, Watchdog

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


class StubHTTP:
    """llama-server's /health and /slots, scripted; records which was asked."""

    def __init__(self, health: Any = 200, slots: Any = (200, [])):
        self.health_status: Any = health
        self.slots_answer = slots
        self.asked: List[str] = []

    async def health(self) -> int:
        self.asked.append("/health")
        if isinstance(self.health_status, Exception):
            raise self.health_status
        return self.health_status

    async def slots(self) -> Any:
        self.asked.append("/slots")
        return self.slots_answer


class StubWorkers:
    def __init__(self, lost: Optional[List[str]] = None):
        self._lost, self.idle_checks = lost or [], 0

    def lost(self, pid: int, in_use: Any) -> List[str]:
        return list(self._lost)

    async def recheck_idle(self, interval: float) -> None:
        self.idle_checks += 1


def llama(hang_timeout: float = 30.0) -> Any:
    return SimpleNamespace(hang_timeout=hang_timeout, health_timeout=1.0, health_interval=2.0)


def child(http: StubHTTP, workers: tuple = ()) -> Any:
    return SimpleNamespace(pid=4242, http=http, rpc_workers=workers, returncode=None, psutil=lambda: None)


async def test_idle_it_asks_health_and_schedules_the_next_probe():
    http, workers = StubHTTP(), StubWorkers()
    dog = Watchdog(llama(), workers, child(http))
    before = time.monotonic()
    assert await dog.probe(in_flight=0) == Probe(True, None)
    assert http.asked == ["/health"] and workers.idle_checks == 1
    assert dog.next_probe >= before + 2.0


async def test_with_requests_in_flight_it_asks_slots_and_falls_back_to_health_for_good_on_501():
    http = StubHTTP(slots=(501, None))
    dog = Watchdog(llama(), StubWorkers(), child(http))
    assert await dog.probe(in_flight=1) == Probe(True, None)
    assert http.asked == ["/slots", "/health"]
    await dog.probe(in_flight=1)
    assert http.asked == ["/slots", "/health", "/health"]


async def test_a_probe_unanswered_for_hang_timeout_is_a_hang():
    http = StubHTTP(health=ConnectionRefusedError())
    dog = Watchdog(llama(hang_timeout=0.5), StubWorkers(), child(http))   # health_timeout 1 s >= 0.5 s
    probe = await dog.probe(in_flight=0)
    assert not probe.answered and probe.kill is not None
    assert probe.kill[0] == "hang" and "/health unanswered" in probe.kill[1]


async def test_one_failed_probe_within_hang_timeout_is_not_yet_a_hang():
    dog = Watchdog(llama(hang_timeout=30.0), StubWorkers(), child(StubHTTP(health=503)))
    assert await dog.probe(in_flight=0) == Probe(False, None)


async def test_a_lost_rpc_worker_is_a_kill_before_any_http_probe():
    http = StubHTTP()
    dog = Watchdog(llama(), StubWorkers(lost=["10.0.0.2:50052"]), child(http, ("10.0.0.2:50052",)))
    assert await dog.probe(in_flight=0) == Probe(False, ("rpc_worker_lost", "rpc workers lost: 10.0.0.2:50052"))
    assert http.asked == []
