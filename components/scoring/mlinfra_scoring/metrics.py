"""Prometheus metrics without a client library: counters and histograms kept in plain dicts (cheap on the hot
path), rendered in the text exposition format on /metrics."""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


class Counter:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()):
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] += amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.labels, k)} {v}" for k, v in sorted(self.values.items())]
        return out


class Gauge(Counter):
    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} gauge"]
        out += [f"{self.name}{_labels(self.labels, k)} {v}" for k, v in sorted(self.values.items())]
        return out


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.name, self.doc, self.buckets, self.labels = name, doc, buckets, labels
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            acc = 0
            for bound, c in zip((*self.buckets, float("inf")), counts, strict=True):
                acc += c
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{self.name}_bucket{_labels((*self.labels, 'le'), (*key, le))} {acc}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {acc}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "mlinfra_requests_total",
            "Requests by route, model, version and status code.",
            ("route", "model", "version", "code"),
        )
        self.latency = Histogram(
            "mlinfra_request_duration_seconds",
            "Request latency (server side).",
            LATENCY_BUCKETS,
            ("route", "model", "version"),
        )
        self.batch = Histogram(
            "mlinfra_batch_size",
            "Rows per model execution (after dynamic batching).",
            BATCH_BUCKETS,
            ("model", "version"),
        )
        self.in_flight = Gauge("mlinfra_in_flight_requests", "Requests being handled.")
        self.ready = Gauge("mlinfra_ready", "1 when every model is loaded.")
        self.collector_dropped = Counter(
            "mlinfra_collector_dropped_total",
            "Records a data-collection hook refused (queue full).",
            ("model",),
        )
        self.collector_upload_errors = Counter(
            "mlinfra_collector_upload_errors_total",
            "Failed uploads of spooled records to storage (each retried; the records wait on disk).",
        )
        self.connections_refused = Counter(
            "mlinfra_connections_refused_total", "Connections closed on arrival: max_connections were open."
        )
        self.connections_idle_closed = Counter(
            "mlinfra_connections_idle_closed_total",
            "Connections closed after idle_timeout_s without a request (idle keep-alive, slow or silent clients).",
        )
        self.non_finite = Counter(
            "mlinfra_non_finite_outputs_total",
            "Output values that were NaN or ±Inf (sent as null, reported in the response).",
            ("model", "version"),
        )
        self.collector_upload_errors.inc((), 0)
        self.connections_refused.inc((), 0)
        self.connections_idle_closed.inc((), 0)
        self.in_flight.set((), 0)
        self.ready.set((), 0)

    def render(self) -> str:
        lines: list[str] = []
        for m in (
            self.requests,
            self.latency,
            self.batch,
            self.in_flight,
            self.ready,
            self.collector_dropped,
            self.collector_upload_errors,
            self.connections_refused,
            self.connections_idle_closed,
            self.non_finite,
        ):
            lines += m.render()
        return "\n".join(lines) + "\n"
