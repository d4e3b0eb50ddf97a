"""A local OTLP/HTTP receiver for tests: accepts `POST /v1/metrics` and `/v1/traces` in protobuf (what the
OpenTelemetry SDK's exporters send; gzip too), decodes them with opentelemetry-proto and keeps them as dicts."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.scoring_helpers import free_port


def _value(v: dict[str, Any]) -> Any:
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in items}


class OtlpReceiver:
    def __init__(self, port: int | None = None):
        self.metrics: list[dict[str, Any]] = []  # ExportMetricsServiceRequest as dicts
        self.traces: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        got = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                got.content_types.append(self.headers.get("Content-Type", ""))
                if self.path == "/v1/metrics":
                    got.metrics.append(MessageToDict(ExportMetricsServiceRequest.FromString(body)))
                elif self.path == "/v1/traces":
                    got.traces.append(ExportTraceServiceRequest.FromString(body))
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.port = self.httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def spans(self) -> Iterator[dict[str, Any]]:
        """Every span received: name, hex trace/span/parent ids, kind, status code, attributes and resource."""
        for req in list(self.traces):
            for rs in req.resource_spans:
                resource = attributes(MessageToDict(rs.resource).get("attributes", []))
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        d = MessageToDict(s)
                        yield {
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "kind": s.kind,
                            "status": s.status.code,
                            "attributes": attributes(d.get("attributes", [])),
                            "resource": resource,
                        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
