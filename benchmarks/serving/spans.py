"""What one request trace costs the scoring server's CPU, in parts: the OpenTelemetry SDK's span (context extraction
from the headers, sampler, start, attributes, end) for a sampled request and for a dropped root request, and the OTLP
protobuf encoding per span the BatchSpanProcessor's thread does later (same interpreter, same GIL). Pinned to CPU 0.
Prints microseconds per span; LIBRARIES.md quotes them next to the A/B.

Usage: taskset -c 0 .venv/bin/python benchmarks/serving/spans.py
"""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

N = 20_000
NAME = "POST /v2/models/{name}/infer"
# What mlinfra_scoring's middleware and telemetry.py put on a span.
START = {"http.request.method": "POST", "mlinfra.request_id": "0af7651916cd43dd"}
END = {
    "mlinfra.deployment": "blue",
    "mlinfra.model": "mlp",
    "mlinfra.model.version": "1",
    "mlinfra.batch_size": 1,
    "http.route": "infer",
    "http.response.status_code": 200,
}


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def per_span_us(ratio: float, headers: dict[str, str]) -> tuple[float, list[ReadableSpan]]:
    keep = Keep()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "mlinfra-scoring"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer, propagator = provider.get_tracer("bench"), TraceContextTextMapPropagator()
    t0 = time.perf_counter()
    for _ in range(N):
        span = tracer.start_span(
            NAME,
            context=propagator.extract(headers),
            kind=SpanKind.SERVER,
            start_time=time.time_ns(),
            attributes=START,
        )
        if span.is_recording():
            span.set_attributes(END)
        span.end()
    return (time.perf_counter() - t0) / N * 1e6, keep.spans


def main() -> None:
    parent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    sampled, spans = per_span_us(1.0, parent)
    dropped, _ = per_span_us(0.0, {})
    t0 = time.perf_counter()
    for i in range(0, len(spans), 128):  # the BatchSpanProcessor's batch size in telemetry.py
        encode_spans(spans[i : i + 128]).SerializeToString()
    encode = (time.perf_counter() - t0) / len(spans) * 1e6
    print(f"sampled span (SDK)       {sampled:6.1f} us")
    print(f"OTLP encoding per span   {encode:6.1f} us")
    print(f"dropped root span (SDK)  {dropped:6.1f} us")


if __name__ == "__main__":
    main()
