"""OpenTelemetry export from the scoring server to a local OTLP/HTTP receiver; a down receiver never fails a
request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mlinfra.lab.samples import write_mlp
from tests.scoring_helpers import free_port, start_server

pytestmark = pytest.mark.integration


def test_metrics_reach_an_otlp_receiver(tmp_path) -> None:
    got: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = {
        "MLINFRA_SERVE_OTLP_ENDPOINT": f"http://127.0.0.1:{httpd.server_port}",
        "MLINFRA_SERVE_OTLP_INTERVAL_S": "0.3",
        "MLINFRA_SERVE_OTLP_RESOURCE": "endpoint=fraud,deployment=blue",
    }
    server = start_server(tmp_path, "--model", str(write_mlp(tmp_path / "m.onnx")), "--name", "mlp", env=env)
    try:
        for _ in range(10):
            assert server.request("POST", "/score", {"data": [[0.1] * 64]})[0] == 200
        deadline = time.monotonic() + 10
        point = None
        while time.monotonic() < deadline and point is None:
            for g in reversed(got):
                rm = g["body"]["resourceMetrics"][0]
                for m in rm["scopeMetrics"][0]["metrics"]:
                    if m["name"] == "mlinfra_requests_total":
                        for p in m["sum"]["dataPoints"]:
                            a = {x["key"]: x["value"]["stringValue"] for x in p["attributes"]}
                            if a.get("route") == "score" and p["asDouble"] >= 10:
                                point, resource = (a, p), rm["resource"]
                if point:
                    break
            time.sleep(0.2)
        assert point is not None, got[-1:] if got else "nothing received"
        assert point[0] == {"route": "score", "model": "mlp", "version": "1", "code": "200"}
        assert point[1]["asDouble"] == 10
        attrs = {x["key"]: x["value"]["stringValue"] for x in resource["attributes"]}
        assert attrs == {"service.name": "mlinfra-scoring", "endpoint": "fraud", "deployment": "blue"}
        assert got[0]["path"] == "/v1/metrics" and got[0]["type"] == "application/json"
        names = {m["name"] for m in got[-1]["body"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]}
        assert "mlinfra_request_duration_seconds" in names
    finally:
        server.stop()
        httpd.shutdown()


def test_a_down_receiver_never_fails_a_request(tmp_path) -> None:
    env = {
        "MLINFRA_SERVE_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "MLINFRA_SERVE_OTLP_INTERVAL_S": "0.2",
    }
    server = start_server(tmp_path, "--model", str(write_mlp(tmp_path / "m.onnx")), "--name", "mlp", env=env)
    try:
        for _ in range(20):
            assert server.request("POST", "/score", {"data": [[0.1] * 64]})[0] == 200
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    assert "otlp_export_failed" in server.log.read_text()
