"""The OpenTelemetry SDK side of otel.py (imported only when MLINFRA_SERVE_OTLP_ENDPOINT is set: the SDK and its
exporters add ≈ 0.2 s to a server's start)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mlinfra_scoring.metrics import Metrics
from mlinfra_scoring.otel import DEFAULT_TRACE_SAMPLE, OtlpConfigError

SCOPE = InstrumentationScope("mlinfra_scoring")
TIMEOUT_S = 2.0
# The exporters log every failed export through `logging`; the server reports them as its own JSON events instead,
# rate-limited (a collector that is down for an hour must not write a line per export).
logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
# "Queue full, dropping Span." is logged per span, on the request path, for as long as the collector is down: the
# failed exports above already say spans are being lost.
logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)


def _cumulative_to_counts(buckets: list[tuple[float, float]]) -> list[int]:
    counts, prev = [], 0.0
    for _le, acc in buckets:
        counts.append(int(acc - prev))
        prev = acc
    return counts


def metrics_data(metrics: Metrics, resource: Resource, start_ns: int) -> MetricsData:
    """The registry's mlinfra_* families as OTLP metrics: counters as cumulative monotonic sums (named as on
    /metrics, `_total` included), gauges as gauges, histograms with the same bounds."""
    now = time.time_ns()
    out: list[Metric] = []
    for family in metrics.families():
        if family.type == "counter":
            points = [
                NumberDataPoint(dict(s.labels), start_ns, now, float(s.value))
                for s in family.samples
                if s.name.endswith("_total")
            ]
            data: Any = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
            name = family.name + "_total"
        elif family.type == "gauge":
            data = Gauge(
                [NumberDataPoint(dict(s.labels), start_ns, now, float(s.value)) for s in family.samples]
            )
            name = family.name
        elif family.type == "histogram":
            series: dict[tuple, dict[str, Any]] = {}
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
                entry = series.setdefault(tuple(sorted(labels.items())), {"labels": labels, "buckets": []})
                if s.name.endswith("_bucket"):
                    entry["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    entry["sum"] = s.value
                elif s.name.endswith("_count"):
                    entry["count"] = int(s.value)
            hist_points: list[HistogramDataPoint] = []
            for entry in series.values():
                buckets = sorted(entry["buckets"])
                hist_points.append(
                    HistogramDataPoint(
                        attributes=entry["labels"],
                        start_time_unix_nano=start_ns,
                        time_unix_nano=now,
                        count=entry.get("count", 0),
                        sum=entry.get("sum", 0.0),
                        bucket_counts=_cumulative_to_counts(buckets),
                        explicit_bounds=[le for le, _ in buckets[:-1]],  # the last is +Inf
                        min=float("nan"),
                        max=float("nan"),
                    )
                )
            data = Histogram(hist_points, AggregationTemporality.CUMULATIVE)
            name = family.name
        else:
            continue
        out.append(Metric(name=name, description=family.documentation, unit="", data=data))
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(SCOPE, out, schema_url="")], schema_url="")])


class _FailureLog:
    """Counts failed exports; logs the first and every 20th."""

    def __init__(self, log: Callable[[dict[str, Any]], None], url: str):
        self.log, self.url, self.failed, self.sent = log, url, 0, 0

    def record(self, ok: bool) -> bool:
        if ok:
            self.sent += 1
        else:
            if self.failed % 20 == 0:
                self.log({"event": "otlp_export_failed", "url": self.url, "failed": self.failed + 1})
            self.failed += 1
        return ok


class _SpanExporter(OTLPSpanExporter):
    def __init__(self, failures: _FailureLog, **kw: Any):
        super().__init__(**kw)
        self.failures = failures

    def export(self, spans: Any) -> SpanExportResult:
        result = super().export(spans)
        self.failures.record(result is SpanExportResult.SUCCESS)
        return result


class Telemetry:
    def __init__(
        self,
        endpoint: str,
        interval_s: float,
        resource: dict[str, str],
        metrics: Metrics,
        log: Callable[[dict[str, Any]], None],
        trace_sample: float = DEFAULT_TRACE_SAMPLE,
    ):
        if not endpoint.startswith(("http://", "https://")):
            raise OtlpConfigError(
                f"MLINFRA_SERVE_OTLP_ENDPOINT={endpoint!r} must be an http(s) URL, e.g. http://127.0.0.1:4318"
            )
        base = endpoint.rstrip("/")
        self.url = base + "/v1/metrics"
        self.interval_s, self.metrics = interval_s, metrics
        self.resource = Resource.create({"service.name": "mlinfra-scoring", **resource})
        self.deployment = resource.get("deployment", "")
        self.start_ns = time.time_ns()
        self.metric_failures = _FailureLog(log, self.url)
        self._metric_exporter = OTLPMetricExporter(endpoint=self.url, timeout=TIMEOUT_S)
        self.span_failures = _FailureLog(log, base + "/v1/traces")
        self._provider = TracerProvider(resource=self.resource, sampler=ParentBased(ALWAYS_ON))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                _SpanExporter(self.span_failures, endpoint=base + "/v1/traces", timeout=TIMEOUT_S),
                max_queue_size=4096,
                max_export_batch_size=128,  # encoding holds the GIL: smaller batches, shorter pauses (p99)
                schedule_delay_millis=min(interval_s, 5.0) * 1000,
            )
        )
        self.tracer = self._provider.get_tracer("mlinfra_scoring")
        self._ratio, self._random = trace_sample, random.random
        self._propagator = TraceContextTextMapPropagator()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="otlp-exporter", daemon=True)
        self._thread.start()

    # -- metrics ---------------------------------------------------------------------------------------------

    def export(self) -> bool:
        try:
            data = metrics_data(self.metrics, self.resource, self.start_ns)
            ok = (
                self._metric_exporter.export(data, timeout_millis=TIMEOUT_S * 1000)
                is MetricExportResult.SUCCESS
            )
        except Exception:
            ok = False
        return self.metric_failures.record(ok)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export()

    # -- traces ----------------------------------------------------------------------------------------------

    def start_span(
        self, name: str, carrier: Mapping[str, Any], start_ns: int, attributes: dict[str, Any]
    ) -> Span | None:
        """A SERVER span whose parent is CARRIER's `traceparent` (HTTP headers or gRPC metadata), if any; None for a
        root request the ratio does not sample.

        That one decision is taken here rather than by the SDK's TraceIdRatioBased sampler (the SDK samples roots
        with ALWAYS_ON after it): the SDK's non-recording span for a dropped root still costs ≈ 7 µs
        (benchmarks/serving/spans.py), 2 % of a one-row request on one core, paid by 95 % of requests at the
        default ratio. A random draw per request gives the same share."""
        if "traceparent" not in carrier and (self._ratio <= 0.0 or self._random() >= self._ratio):
            return None
        ctx: Context = self._propagator.extract(carrier)
        return self.tracer.start_span(
            name, context=ctx, kind=SpanKind.SERVER, start_time=start_ns, attributes=attributes
        )

    def end_span(self, span: Span | None, attributes: dict[str, Any], error: bool) -> None:
        if span is None:
            return
        if span.is_recording():
            span.set_attributes({"mlinfra.deployment": self.deployment, **attributes})
            if error:
                span.set_status(StatusCode.ERROR)
        span.end()

    def close(self) -> None:
        self._stop.set()
        self.export()  # the final counts
        self._provider.shutdown()  # flushes queued spans (each export bounded by the timeout)
        self._metric_exporter.shutdown()
