"""OpenTelemetry from the scoring server to a local OTLP/HTTP receiver (protobuf, as the SDK's exporters send it):
metrics with the same names and labels as /metrics, one span per request linked to the caller's `traceparent` (REST
and gRPC), sampling as configured, and a down receiver never fails a request."""

from __future__ import annotations

import concurrent.futures
import secrets
import time

import pytest

from mlinfra.lab.samples import write_mlp
from tests.otlp_receiver import OtlpReceiver, attributes
from tests.scoring_helpers import free_port, start_server
from tests.waiting import until

pytestmark = pytest.mark.integration

ROW = {"data": [[0.1] * 64]}


def _infer(rows: int = 1) -> dict:
    return {
        "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [0.1] * (64 * rows)}]
    }


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace, span = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace}-{span}-{'01' if sampled else '00'}", trace, span


def otlp_server(tmp_path, endpoint: str, *args: str, **env: str):
    """The scoring server on the sample MLP ("mlp") exporting to ENDPOINT every 0.3 s, with ENV's extra variables."""
    env = {"MLINFRA_SERVE_OTLP_ENDPOINT": endpoint, "MLINFRA_SERVE_OTLP_INTERVAL_S": "0.3", **env}
    model = str(write_mlp(tmp_path / "m.onnx"))
    return start_server(tmp_path, "--model", model, "--name", "mlp", *args, env=env)


def test_metrics_reach_an_otlp_receiver(tmp_path) -> None:
    receiver = OtlpReceiver()
    server = otlp_server(tmp_path, receiver.url, MLINFRA_SERVE_OTLP_RESOURCE="endpoint=fraud,deployment=blue")
    try:
        for _ in range(10):
            assert server.request("POST", "/score", ROW)[0] == 200

        def score_point() -> tuple | None:
            for body in reversed(receiver.metrics):
                rm = body["resourceMetrics"][0]
                for m in rm["scopeMetrics"][0]["metrics"]:
                    if m["name"] == "mlinfra_requests_total":
                        for p in m["sum"]["dataPoints"]:
                            a = attributes(p["attributes"])
                            if a.get("route") == "score" and p["asDouble"] >= 10:
                                return a, p, rm["resource"], m["sum"]
            return None

        found = until("the score route's count at the receiver", score_point, 10, 0.2)
        labels, point, resource, total = found
        assert labels == {"route": "score", "model": "mlp", "version": "1", "code": "200"}
        assert point["asDouble"] == 10
        assert (
            total["isMonotonic"] and total["aggregationTemporality"] == "AGGREGATION_TEMPORALITY_CUMULATIVE"
        )
        attrs = attributes(resource["attributes"])
        assert {k: attrs[k] for k in ("service.name", "endpoint", "deployment")} == {
            "service.name": "mlinfra-scoring",
            "endpoint": "fraud",
            "deployment": "blue",
        }
        assert receiver.content_types[0] == "application/x-protobuf"
        metrics = {
            m["name"]: m for m in receiver.metrics[-1]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        }
        # The latency histogram: same bounds as /metrics, per-bucket counts adding up to the count.
        hist = next(
            p
            for p in metrics["mlinfra_request_duration_seconds"]["histogram"]["dataPoints"]
            if attributes(p["attributes"]).get("route") == "score"
        )
        assert int(hist["count"]) == 10 and sum(int(c) for c in hist["bucketCounts"]) == 10
        assert hist["explicitBounds"][:2] == [0.0005, 0.001] and len(hist["bucketCounts"]) == 15
        assert metrics["mlinfra_ready"]["gauge"]["dataPoints"][0]["asDouble"] == 1
    finally:
        server.stop()
        receiver.close()


def test_a_down_receiver_never_fails_a_request(tmp_path) -> None:
    server = otlp_server(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            assert server.request("POST", "/score", ROW, headers={"traceparent": traceparent()[0]})[0] == 200
            time.sleep(0.05)
        assert time.perf_counter() - t0 < 10  # no request waited on the exporter's 2 s timeout
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "otlp_export_failed" in log and "/v1/traces" in log and "/v1/metrics" in log


def test_one_span_per_request_linked_to_the_callers_traceparent(tmp_path) -> None:
    import numpy as np
    import tritonclient.grpc as triton  # not mlinfra_scoring.oip: both define inference.* in one descriptor pool

    receiver = OtlpReceiver()
    grpc_port = free_port()
    server = otlp_server(
        tmp_path, receiver.url,
        "--grpc-port", str(grpc_port), "--max-batch-size", "16", "--max-batch-delay-ms", "40",
        MLINFRA_SERVE_OTLP_RESOURCE="endpoint=fraud,deployment=green",
        MLINFRA_SERVE_TRACE_SAMPLE="1",  # every root request too (default 0.05)
    )  # fmt: skip
    try:
        parents = {}
        for i in range(3):  # REST, each with its caller's span
            tp, trace, span = traceparent()
            parents[f"rest-{i}"] = (trace, span)
            status, _, _ = server.request(
                "POST",
                "/v2/models/mlp/infer",
                _infer(2),
                headers={"traceparent": tp, "X-Request-Id": f"rest-{i}"},
            )
            assert status == 200
        tp, _, _ = traceparent(sampled=False)  # the caller decided not to sample: no span
        assert (
            server.request("POST", "/score", ROW, headers={"traceparent": tp, "X-Request-Id": "unsampled"})[0]
            == 200
        )
        assert (
            server.request("POST", "/score", ROW, headers={"X-Request-Id": "root"})[0] == 200
        )  # a root span
        assert (
            server.request("POST", "/v2/models/nope/infer", _infer(), headers={"X-Request-Id": "missing"})[0]
            == 404
        )
        tp, trace, span = traceparent()
        parents["grpc-0"] = (trace, span)
        client = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")  # a third-party OIP client
        x = triton.InferInput("input", [1, 64], "FP32")
        x.set_data_from_numpy(np.full((1, 64), 0.1, np.float32))
        client.infer("mlp", [x], headers={"traceparent": tp, "x-request-id": "grpc-0"})
        client.close()
        # Eight concurrent one-row requests inside one 40 ms window: their spans carry the merged execution's rows.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: server.request(
                        "POST", "/v2/models/mlp/infer", _infer(), headers={"X-Request-Id": f"burst-{i}"}
                    )[0],
                    range(8),
                )
            )
        assert codes == [200] * 8

        def by_rid() -> dict[str, list[dict]] | None:
            out: dict[str, list[dict]] = {}
            for s in receiver.spans():
                out.setdefault(s["attributes"].get("mlinfra.request_id", ""), []).append(s)
            wanted = {*parents, "root", "missing", *(f"burst-{i}" for i in range(8))}
            return out if wanted <= set(out) else None

        spans = until("a span for every request", by_rid, 15, 0.2)
        for rid, (trace, span) in parents.items():
            assert len(spans[rid]) == 1, spans[rid]  # one span per request
            s = spans[rid][0]
            assert (s["trace_id"], s["parent_id"]) == (trace, span), (
                s
            )  # the caller's trace, its span the parent
            assert s["kind"] == 2  # SERVER
            a = s["attributes"]
            assert a["mlinfra.model"] == "mlp" and a["mlinfra.model.version"] == "1", a
            assert a["mlinfra.deployment"] == "green" and s["resource"]["endpoint"] == "fraud"
        for i in range(3):
            a = spans[f"rest-{i}"][0]["attributes"]
            assert a["http.response.status_code"] == 200 and a["mlinfra.batch_size"] == 2, a
            assert spans[f"rest-{i}"][0]["name"] == "POST /v2/models/{name}/infer"
        assert spans["grpc-0"][0]["attributes"]["rpc.grpc.status_code"] == 0
        assert spans["grpc-0"][0]["name"] == "inference.GRPCInferenceService/ModelInfer"
        assert "unsampled" not in spans
        assert spans["root"][0]["parent_id"] == "" and len(spans["root"][0]["trace_id"]) == 32
        missing = spans["missing"][0]["attributes"]
        assert missing["http.response.status_code"] == 404 and missing["mlinfra.model"] == "unknown"
        burst = [spans[f"burst-{i}"][0]["attributes"]["mlinfra.batch_size"] for i in range(8)]
        assert all(1 <= b <= 8 for b in burst) and max(burst) > 1, burst
        assert sum(1 for s in receiver.spans() if s["attributes"].get("mlinfra.request_id") in parents) == 4
    finally:
        assert server.stop() == 0
        receiver.close()


def test_trace_sampling_ratio_zero_traces_only_callers_that_ask(tmp_path) -> None:
    receiver = OtlpReceiver()
    server = otlp_server(tmp_path, receiver.url, MLINFRA_SERVE_TRACE_SAMPLE="0")
    try:
        for i in range(5):
            assert server.request("POST", "/score", ROW, headers={"X-Request-Id": f"r{i}"})[0] == 200
        tp, trace, _ = traceparent()
        assert (
            server.request("POST", "/score", ROW, headers={"traceparent": tp, "X-Request-Id": "asked"})[0]
            == 200
        )
        spans = until(
            "the asked-for trace", lambda: [s for s in receiver.spans() if s["trace_id"] == trace], 10, 0.2
        )
        assert spans[0]["attributes"]["mlinfra.request_id"] == "asked"
        assert not [
            s for s in receiver.spans() if s["attributes"].get("mlinfra.request_id", "").startswith("r")
        ]
    finally:
        assert server.stop() == 0
        receiver.close()


@pytest.mark.parametrize("value", ["x", "1.5", "-0.1"])
def test_a_bad_sampling_ratio_is_refused_naming_it(tmp_path, value) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "mlinfra_scoring", "--model", str(write_mlp(tmp_path / "m.onnx")), "--port",
         str(free_port())],
        env={"MLINFRA_SERVE_OTLP_ENDPOINT": "http://127.0.0.1:4318", "MLINFRA_SERVE_TRACE_SAMPLE": value,
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "MLINFRA_SERVE_TRACE_SAMPLE" in r.stderr and value in r.stderr, r.stderr
    assert "0..1" in r.stderr


def test_a_trace_crosses_an_endpoints_router(local_services, program, backend, tmp_path) -> None:
    """The real engine: a CloudEndpoint on Local Docker with DataCollection(otlp_endpoint=127.0.0.1:4318). The
    scoring containers reach the receiver on this machine's loopback (rewritten to the bridge gateway, the port
    forwarded by `mlinfra services`), and a client's `traceparent` passes the nginx router to the replica: one span
    per request, the client's span its parent."""
    import os

    from pulumi import automation as auto

    from mlinfra.automation import local_stack
    from mlinfra.lab import services
    from mlinfra.lab.samples import scoring_image
    from tests.endpoint_helpers import score

    local_services("docker", "registry", "python-base", "router-base", "azurite")
    receiver = OtlpReceiver(services.OTLP_PORT)
    image = scoring_image(
        f"file://{tmp_path / 'registry'}",
        "127.0.0.1:5000/mlinfra-test/traced",
        write_mlp(tmp_path / "mlp.onnx"),
    )
    container = f"traced-{os.getpid()}"
    config = {
        "image": image,
        "storage": f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}",
        "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
        "otlp_endpoint": receiver.url,
    }
    st = local_stack(program("data-collection"), "traced", backend, config)
    try:
        out = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        parents = {}
        for i in range(3):
            tp, trace, span = traceparent()
            parents[f"via-router-{i}"] = (trace, span)
            status, _, _ = score(
                out["scoring_uri"],
                out["primary_key"],
                headers={"traceparent": tp, "X-Request-Id": f"via-router-{i}"},
            )
            assert status == 200

        def server_spans() -> dict[str, list[dict]] | None:
            got: dict[str, list[dict]] = {}
            for s in receiver.spans():
                rid = s["attributes"].get("mlinfra.request_id", "")
                if rid in parents:
                    got.setdefault(rid, []).append(s)
            return got if set(got) == set(parents) else None

        spans = until("the replicas' spans at the receiver", server_spans, 60, 0.5)
        for rid, (trace, span) in parents.items():
            assert len(spans[rid]) == 1, spans[rid]
            s = spans[rid][0]
            assert (s["trace_id"], s["parent_id"]) == (trace, span), s
            assert (
                s["attributes"]["mlinfra.deployment"] == "blue" and s["attributes"]["mlinfra.model"] == "mlp"
            )
            assert s["resource"]["endpoint"] == "scoring-traced" or s["resource"]["endpoint"].startswith(
                "scoring"
            )
        # The replicas' metrics arrive too, labelled with the endpoint's deployment.
        until("metrics from the replicas", lambda: receiver.metrics, 30, 0.5)
    finally:
        st.destroy(on_output=lambda _l: None)
        receiver.close()
