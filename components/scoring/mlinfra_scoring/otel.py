"""OpenTelemetry for the scoring server, with the OpenTelemetry SDK and its OTLP/HTTP (protobuf) exporters — what an
OpenTelemetry Collector, Azure Monitor's OTLP ingestion or Grafana Alloy accept:

- **metrics**: every `interval` seconds the server's Prometheus registry (metrics.py: requests by route/model/
  version/code, the latency histogram, batch sizes, in-flight, readiness, collector drops) is read into the SDK's
  metric data model and sent by its `OTLPMetricExporter` to `{endpoint}/v1/metrics`. The registry stays the one
  source of truth: recording each request twice (once more in SDK instruments) would double the hot path's metric
  cost for the same numbers.
- **traces**: a SERVER span per request (REST and gRPC) with the model, version, deployment, status and the rows of
  the model execution it joined (after dynamic batching), whose parent is the client's W3C `traceparent` (routers
  pass it through). A caller's sampling decision (its traceparent's flag) is kept (the SDK's ParentBased sampler);
  root requests are sampled at `MLINFRA_SERVE_TRACE_SAMPLE` (default 0.05; 1 traces every request, 0 only
  callers that ask).
  Spans leave through the SDK's `BatchSpanProcessor` to `{endpoint}/v1/traces`.

A down collector never touches the request path: exports run on background threads with a 2 s timeout, a full span
queue (4,096) drops the oldest spans, and failures are logged as `otlp_export_failed` events, rate-limited.

Configured by MLINFRA_SERVE_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318), MLINFRA_SERVE_OTLP_INTERVAL_S (default 15),
MLINFRA_SERVE_OTLP_RESOURCE (comma-separated key=value resource attributes, e.g. endpoint=…,deployment=…) and
MLINFRA_SERVE_TRACE_SAMPLE (0..1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra_scoring.metrics import Metrics
    from mlinfra_scoring.telemetry import Telemetry


class OtlpConfigError(ValueError):
    pass


DEFAULT_TRACE_SAMPLE = 0.05
"""Root requests traced by default. A sampled request costs the server ≈ 110 µs of CPU (the SDK's span ≈ 40 µs, its
OTLP encoding ≈ 66 µs: benchmarks/serving/spans.py, LIBRARIES.md), a third of a one-row request on
one core; 5 % keeps the cost near 2 %. Callers that send a sampled `traceparent` are always traced."""


def from_env(metrics: Metrics, log: Callable[[dict[str, Any]], None]) -> Telemetry | None:
    endpoint = os.environ.get("MLINFRA_SERVE_OTLP_ENDPOINT")
    if not endpoint:
        return None
    raw = os.environ.get("MLINFRA_SERVE_OTLP_INTERVAL_S", "15")
    try:
        interval = float(raw)
    except ValueError:
        raise OtlpConfigError(f"MLINFRA_SERVE_OTLP_INTERVAL_S={raw!r} is not a number") from None
    if not 0.1 <= interval <= 3600:
        raise OtlpConfigError(f"MLINFRA_SERVE_OTLP_INTERVAL_S={interval} must be in 0.1..3600")
    raw = os.environ.get("MLINFRA_SERVE_TRACE_SAMPLE", str(DEFAULT_TRACE_SAMPLE))
    try:
        sample = float(raw)
    except ValueError:
        raise OtlpConfigError(f"MLINFRA_SERVE_TRACE_SAMPLE={raw!r} is not a number in 0..1") from None
    if not 0.0 <= sample <= 1.0:
        raise OtlpConfigError(
            f"MLINFRA_SERVE_TRACE_SAMPLE={sample} must be in 0..1 (the share of requests traced)"
        )
    resource = dict(
        kv.split("=", 1) for kv in os.environ.get("MLINFRA_SERVE_OTLP_RESOURCE", "").split(",") if "=" in kv
    )
    from mlinfra_scoring.telemetry import Telemetry

    return Telemetry(endpoint, interval, resource, metrics, log, sample)
