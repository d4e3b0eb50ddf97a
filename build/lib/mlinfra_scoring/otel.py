"""OpenTelemetry metrics export for the scoring server: every `interval` seconds the server's own metrics (requests
by route/model/version/code, the latency histogram, batch sizes, in-flight, readiness, collector drops) are sent to
an OTLP/HTTP endpoint as JSON (`POST {endpoint}/v1/metrics`) — what an OpenTelemetry Collector, Azure Monitor's
OTLP ingestion or Grafana Alloy accept. Hand-rolled on purpose: no SDK in the images, and a down collector never
touches the request path (a daemon thread; failures are counted and logged, rate-limited).

Configured by MLINFRA_SERVE_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318), MLINFRA_SERVE_OTLP_INTERVAL_S (default 15)
and MLINFRA_SERVE_OTLP_RESOURCE (comma-separated key=value resource attributes, e.g. endpoint=…,deployment=…).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from mlinfra_scoring.metrics import Counter, Gauge, Histogram, Metrics


class OtlpConfigError(ValueError):
    pass


def _attrs(names: tuple[str, ...], values: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"key": n, "value": {"stringValue": v}} for n, v in zip(names, values, strict=True)]


def payload(metrics: Metrics, resource: dict[str, str], start_ns: int) -> dict[str, Any]:
    now = str(time.time_ns())
    start = str(start_ns)
    out: list[dict[str, Any]] = []
    for m in (
        metrics.requests,
        metrics.latency,
        metrics.batch,
        metrics.in_flight,
        metrics.ready,
        metrics.collector_dropped,
    ):
        if isinstance(m, Histogram):
            points = []
            for key, counts in sorted(m.counts.items()):
                points.append(
                    {
                        "attributes": _attrs(m.labels, key),
                        "startTimeUnixNano": start,
                        "timeUnixNano": now,
                        "count": str(sum(counts)),
                        "sum": m.sums[key],
                        "bucketCounts": [str(c) for c in counts],
                        "explicitBounds": [float(b) for b in m.buckets],
                    }
                )
            out.append(
                {
                    "name": m.name,
                    "description": m.doc,
                    "histogram": {"dataPoints": points, "aggregationTemporality": 2},
                }
            )
        elif isinstance(m, Gauge):
            points = [
                {"attributes": _attrs(m.labels, k), "timeUnixNano": now, "asDouble": float(v)}
                for k, v in sorted(m.values.items())
            ]
            out.append({"name": m.name, "description": m.doc, "gauge": {"dataPoints": points}})
        elif isinstance(m, Counter):
            points = [
                {
                    "attributes": _attrs(m.labels, k),
                    "startTimeUnixNano": start,
                    "timeUnixNano": now,
                    "asDouble": float(v),
                }
                for k, v in sorted(m.values.items())
            ]
            out.append(
                {
                    "name": m.name,
                    "description": m.doc,
                    "sum": {"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": True},
                }
            )
    attrs = [
        {"key": k, "value": {"stringValue": v}}
        for k, v in sorted({"service.name": "mlinfra-scoring", **resource}.items())
    ]
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": attrs},
                "scopeMetrics": [{"scope": {"name": "mlinfra"}, "metrics": out}],
            }
        ]
    }


class Exporter:
    def __init__(
        self,
        endpoint: str,
        interval_s: float,
        resource: dict[str, str],
        metrics: Metrics,
        log: Callable[[dict[str, Any]], None],
    ):
        if not endpoint.startswith(("http://", "https://")):
            raise OtlpConfigError(
                f"MLINFRA_SERVE_OTLP_ENDPOINT={endpoint!r} must be an http(s) URL, e.g. http://127.0.0.1:4318"
            )
        self.url = endpoint.rstrip("/") + "/v1/metrics"
        self.interval_s, self.resource, self.metrics, self.log = interval_s, resource, metrics, log
        self.start_ns = time.time_ns()
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="otlp-exporter", daemon=True)
        self._thread.start()

    def export(self) -> bool:
        body = json.dumps(payload(self.metrics, self.resource, self.start_ns)).encode()
        req = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                ok = 200 <= r.status < 300
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            ok = False
            if self.failed % 20 == 0:
                self.log(
                    {"event": "otlp_export_failed", "url": self.url, "error": str(getattr(e, "reason", e))}
                )
        if ok:
            self.sent += 1
        else:
            self.failed += 1
        return ok

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export()

    def close(self) -> None:
        self._stop.set()
        self.export()  # the final counts


def from_env(metrics: Metrics, log: Callable[[dict[str, Any]], None]) -> Exporter | None:
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
    resource = dict(
        kv.split("=", 1) for kv in os.environ.get("MLINFRA_SERVE_OTLP_RESOURCE", "").split(",") if "=" in kv
    )
    return Exporter(endpoint, interval, resource, metrics, log)
