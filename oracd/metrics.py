"""Prometheus metrics (prometheus_client): oracd's own, plus llama-server's re-labelled with ``model``.

Read by the ``metrics`` RPC, ``oracctl metrics`` and, when ``server.metrics_listen``
is set, an HTTP ``/metrics`` on loopback (``serve_http``) -- the text format that
node_exporter setups, Home Assistant's Prometheus integration and Grafana read.

Why most series are collected at scrape time (``_StateCollector``): restarts by
reason, warm-up outcomes, the child's state, RSS and the memory budget already
live in the supervisor's snapshot and the app; reading them when Prometheus asks costs
nothing on the request path.  Only request counts and latency histograms are
recorded as requests happen.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from .api.appview import AppView
from .child.states import ChildState
from .config.values import listen_address
from . import logs
from .logs import get as get_logger

log = get_logger("oracd.metrics")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, methods: Iterable[str]):
        self.registry = CollectorRegistry()
        self.known_methods = frozenset(methods)
        self.requests = Counter("oracd_requests", "JSON-RPC requests by method and outcome",
                                ["method", "outcome"], registry=self.registry)
        self.generate_seconds = Histogram("oracd_generate_seconds", "generate latency (successful requests)",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        self.load_seconds = Histogram("oracd_load_seconds", "llama-server start to ready, warm-up included",
                                      buckets=LOAD_BUCKETS, registry=self.registry)
        self.http_requests = Counter("oracd_http_requests", "HTTP API requests by API, route and status",
                                     ["api", "route", "status"], registry=self.registry)
        self.http_generate_seconds = Histogram("oracd_http_generate_seconds",
                                               "HTTP API generation latency (successful requests) by API", ["api"],
                                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self._state: Optional[_StateCollector] = None
        self._llama = _LlamaCollector()
        self.registry.register(self._llama)

    def attach(self, app: AppView) -> None:
        """Collect the app's and supervisor's state at scrape time."""
        self._state = _StateCollector(app)
        self.registry.register(self._state)

    def request(self, method: str, code: Optional[int]) -> None:
        # unknown method names (fuzzers, typos) share one label: no unbounded label values
        self.requests.labels(method if method in self.known_methods else "other",
                             "ok" if code is None else str(code)).inc()

    def observe_http_generation(self, api: str, seconds: float) -> None:
        self.http_generate_seconds.labels(api).observe(seconds)

    def http_request(self, api: str, route: str, status: int) -> None:
        # route is the matched route's pattern (or "other"): no unbounded label values
        self.http_requests.labels(api, route, str(status)).inc()

    async def render(self, app: AppView) -> Tuple[bytes, str]:
        """The whole exposition, llama-server's series included (fetched now, bounded by health_timeout)."""
        self._llama.families = await _fetch_llama(app)
        try:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        finally:
            self._llama.families = []


async def _fetch_llama(app: AppView) -> List[Metric]:
    import anyio
    snap = app.supervisor.snapshot
    child = snap.child
    if child is None or child.returncode is not None or snap.state is not ChildState.READY:
        return []
    try:
        with anyio.fail_after(app.cfg.llama.health_timeout):
            text = await child.http.metrics()
    except Exception as exc:      # metrics never fail because llama-server's did
        log.warning("llama-server metrics unavailable", error=str(exc))
        return []
    return relabel(text, child.model)


def relabel(text: str, model: str) -> List[Metric]:
    """llama-server's families with ``model="<file>"`` on every sample (llama-swap users ask for exactly this)."""
    out = []
    for fam in text_string_to_metric_families(text):
        new = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        for s in fam.samples:
            new.add_sample(s.name, {**s.labels, "model": model}, s.value, s.timestamp, s.exemplar)
        out.append(new)
    return out


class _LlamaCollector:
    def __init__(self) -> None:
        self.families: List[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families

    def describe(self) -> List[Metric]:
        return []


class _StateCollector:
    """Series read from the app when scraped."""

    def __init__(self, app: AppView):
        self.app = app

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        app = self.app
        sup = app.supervisor
        snap = sup.snapshot
        restarts = CounterMetricFamily("oracd_child_restarts", "llama-server restarts by reason", labels=["reason"])
        for reason, n in sorted(snap.restarts_by_reason.items()):
            restarts.add_metric([reason], n)
        yield restarts
        warm = CounterMetricFamily("oracd_warm", "warm-up outcomes (restored, prefilled, verify_failed, ...)",
                                   labels=["outcome"])
        for outcome, n in sorted(snap.warm_counts.items()):
            warm.add_metric([outcome], n)
        yield warm
        yield CounterMetricFamily("oracd_child_loads", "llama-server starts", value=snap.loads)
        state = GaugeMetricFamily("oracd_child_state", "1 for the state llama-server is in", labels=["state"])
        for s in ChildState:
            state.add_metric([s.value], 1.0 if snap.state is s else 0.0)
        yield state
        yield GaugeMetricFamily("oracd_queue_depth", "requests waiting for a model", value=sup.waiting)
        yield GaugeMetricFamily("oracd_in_flight", "requests holding llama-server", value=sup.in_flight)
        yield GaugeMetricFamily("oracd_connections", "open client connections",
                                value=app.connections.open if app.connections else 0)
        rss = GaugeMetricFamily("oracd_rss_bytes", "resident memory", labels=["process"])
        rss.add_metric(["oracd"], app.self_status.rss() or 0)
        rss.add_metric(["llama-server"], sup.child_rss())
        yield rss
        yield CounterMetricFamily("oracd_log_lines_dropped", "log lines that did not reach the log file "
                                  "(full, read-only or failing disk; they still went to stderr)",
                                  value=logs.dropped_lines())
        accept = CounterMetricFamily("oracd_accept_errors", "accept() failures by errno (EMFILE: out of file "
                                     "descriptors); oracd paused accepting and retried", labels=["error"])
        for err, n in sorted((app.acceptor.errors if app.acceptor else {}).items()):
            accept.add_metric([err], n)
        yield accept
        if app.memory:
            budget = GaugeMetricFamily("oracd_memory_budget_bytes", "the last load's memory check", labels=["kind"])
            budget.add_metric(["required"], app.memory["required_bytes"])
            budget.add_metric(["available"], app.memory["available_bytes"])
            yield budget


async def serve_http(app: AppView, metrics: Metrics, address: str, *, task_status: Any) -> None:
    """GET /metrics on ``address`` (loopback) until cancelled."""
    import anyio
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        body, ctype = await metrics.render(app)
        return web.Response(body=body, headers={"Content-Type": ctype})

    host, port = listen_address(address)   # checked at config load (config/values.py)
    web_app = web.Application()
    web_app.add_routes([web.get("/metrics", handle)])
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:     # port taken: oracd serves on without its /metrics listener, and says so
            log.error("metrics listener failed; serving without it", address=f"{host}:{port}", error=str(exc))
            task_status.started()
            return
        log.info("metrics listening", address=f"{host}:{port}")
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
