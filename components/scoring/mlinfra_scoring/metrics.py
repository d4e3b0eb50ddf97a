"""The scoring server's Prometheus metrics, kept by `prometheus-client` (the ecosystem's standard: the exposition
format, escaping and content negotiation dashboards and scrapers expect) in a registry of the server's own.

The wrappers below only keep each label set's child in a dict keyed by the label tuple: `labels(...)` validates and
locks on every call. The request path updates three metrics per request; the in-flight gauge is read at scrape time.
benchmarks/serving/metrics_ops.py times those updates against the hand-written registry this replaced (≈ 2-3 µs
more per request, under 1 % of a one-row request's CPU), LIBRARIES.md the whole server. OTLP export reads the same registry
(otel.py), so there is one source of truth."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client as prom
from prometheus_client.core import Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# `_created` series double every counter and histogram on /metrics; nothing mlinfra or its gates read uses them.
prom.disable_created_metrics()


class _Family:
    """One metric: `inc`/`set`/`observe` take the label values as a tuple (in LABELS' order)."""

    kind: Any = None

    def __init__(
        self, registry: prom.CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any
    ):
        self.name, self.doc, self.labels = name, doc, labels
        self._metric = self.kind(name, doc, labels, registry=registry, **kw)
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, values: tuple[str, ...]) -> Any:
        c = self._children.get(values)
        if c is None:
            c = self._children[values] = self._metric.labels(*values) if self.labels else self._metric
        return c


class Counter(_Family):
    kind = prom.Counter

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.child(labels).inc(amount)


class Gauge(_Family):
    kind = prom.Gauge

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.child(labels).set(value)

    def track(self, value: Callable[[], float]) -> None:
        """Read VALUE() at each scrape and export instead of setting the gauge on the request path."""
        self._metric.set_function(value)


class Histogram(_Family):
    kind = prom.Histogram

    def __init__(
        self,
        registry: prom.CollectorRegistry,
        name: str,
        doc: str,
        buckets: tuple[float, ...],
        labels: tuple[str, ...] = (),
    ):
        self.buckets = buckets
        super().__init__(registry, name, doc, labels, buckets=buckets)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.child(labels).observe(value)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = prom.CollectorRegistry()
        # Process CPU, memory, open files and start time, as every Prometheus client exports them (read at scrape).
        prom.ProcessCollector(registry=r)
        self.requests = Counter(
            r,
            "mlinfra_requests_total",
            "Requests by route, model, version and status code.",
            ("route", "model", "version", "code"),
        )
        self.latency = Histogram(
            r,
            "mlinfra_request_duration_seconds",
            "Request latency (server side).",
            LATENCY_BUCKETS,
            ("route", "model", "version"),
        )
        self.batch = Histogram(
            r,
            "mlinfra_batch_size",
            "Rows per model execution (after dynamic batching).",
            BATCH_BUCKETS,
            ("model", "version"),
        )
        self.in_flight = Gauge(r, "mlinfra_in_flight_requests", "Requests being handled.")
        self.ready = Gauge(r, "mlinfra_ready", "1 when every model is loaded.")
        self.collector_dropped = Counter(
            r,
            "mlinfra_collector_dropped_total",
            "Records a data-collection hook refused (queue full).",
            ("model",),
        )
        self.collector_upload_errors = Counter(
            r,
            "mlinfra_collector_upload_errors_total",
            "Failed uploads of spooled records to storage (each retried; the records wait on disk).",
        )
        self.connections_refused = Counter(
            r,
            "mlinfra_connections_refused_total",
            "Connections closed on arrival: max_connections were open.",
        )
        self.shed = Counter(
            r,
            "mlinfra_requests_shed_total",
            "Inference requests refused with 503 (gRPC UNAVAILABLE) because max_queue were already in progress.",
        )
        self.grpc_merged = Counter(
            r,
            "mlinfra_grpc_merged_calls_total",
            "gRPC ModelInfer calls the native front end merged with others into one call to the data plane "
            "(mlinfra_requests_total counts them one by one).",
        )
        self.connections_idle_closed = Counter(
            r,
            "mlinfra_connections_idle_closed_total",
            "Connections closed after idle_timeout_s without a request (idle keep-alive, slow or silent clients).",
        )
        self.busy_poll = Counter(
            r,
            "mlinfra_busy_poll_seconds_total",
            "Seconds the event loop spun between requests instead of sleeping (--busy-poll-us): the CPU busy "
            "polling cost.",
        )
        self.direct = Counter(
            r,
            "mlinfra_direct_requests_total",
            "REST inference requests answered by the direct path (the rest by aiohttp's handler; "
            "mlinfra_requests_total counts both).",
        )
        self.non_finite = Counter(
            r,
            "mlinfra_non_finite_outputs_total",
            "Output values that were NaN or ±Inf (sent as null, reported in the response).",
            ("model", "version"),
        )
        self.ready.set((), 0)

    def render(self) -> str:
        return prom.generate_latest(self.registry).decode()

    def families(self) -> Iterator[Metric]:
        """The server's own metric families (not the process collector's), as the registry collects them."""
        for family in self.registry.collect():
            if family.name.startswith("mlinfra_"):
                yield family
