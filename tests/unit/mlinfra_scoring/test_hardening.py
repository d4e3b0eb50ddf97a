"""Hostile input against the scoring server (issue 17, the server's items that are fixed so far): what any client on
the network can send must cost nothing lasting, never be a 500, and never forge what the server records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra_scoring import collector
from tests.scoring_helpers import start_server

KEY = "hardening-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    srv = start_server(d, "--model", str(write_mlp(d / "m.onnx")), "--name", "mlp", "--key", KEY)
    yield srv
    srv.stop()


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_unauthenticated_and_unknown_model_requests_add_no_metric_series(server) -> None:
    def hostile(first: int) -> set[str]:
        for i in range(first, first + 100):
            server.request("POST", f"/v2/models/random-{i}/infer", body={"inputs": []})  # no key: 401
            server.request("GET", f"/v2/models/random-{i}/ready", key=KEY)  # a key, an unknown model: 404
            server.request("GET", f"/v2/models/random-{i}/versions/{i}", key=KEY)
        return _series(server.request("GET", "/metrics")[1])

    server.request("GET", "/metrics")  # the scrape route's own series exist from here on
    first = hostile(0)
    again = hostile(100)  # 300 more requests with names never seen before
    assert again == first, f"hostile requests grew /metrics by {len(again - first)} series"
    labels = set(re.findall(r'model="([^"]*)"', "\n".join(again)))
    assert labels <= {"mlp", "unknown", ""}, sorted(labels)[:10]
    versions = set(re.findall(r'version="([^"]*)"', "\n".join(again)))
    assert versions <= {"1", ""}, sorted(versions)[:10]


@pytest.mark.parametrize(
    "inputs",
    [
        [{"name": ["input"], "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
        [{"name": {"a": 1}, "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
        [{"name": 7, "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
    ],
)
def test_a_tensor_name_that_is_not_a_string_is_a_400(server, inputs) -> None:
    status, body, _ = server.request("POST", "/v2/models/mlp/infer", body={"inputs": inputs}, key=KEY)
    assert status == 400, body
    assert "name" in body["error"] and "string" in body["error"], body


@pytest.mark.parametrize("outputs", [[{"name": ["x"]}], [{"name": {"x": 1}}], [{"name": None}]])
def test_a_requested_output_name_that_is_not_a_string_is_a_400(server, outputs) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": outputs,
    }
    status, got, _ = server.request("POST", "/v2/models/mlp/infer", body=body, key=KEY)
    assert status == 400, got
    assert "outputs" in got["error"], got


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(server, scheme: str) -> None:
    status, _, _ = server.request("GET", "/v2/models/mlp", headers={"Authorization": f"{scheme} {KEY}"})
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "/v2/models/mlp/infer", "POST"), ("DELETE", "/score", "POST")]
)
def test_a_wrong_method_is_a_405_with_allow(server, method: str, path: str, allowed: str) -> None:
    status, _, headers = server.request(method, path, key=KEY)
    assert status == 405
    assert allowed in headers.get("Allow", ""), headers


def test_a_client_request_id_cannot_forge_log_fields(server) -> None:
    forged = 'x","status":200,"forged":"yes'
    status, _, headers = server.request("GET", "/v2/models/mlp", key=KEY, headers={"X-Request-Id": forged})
    assert status == 200
    assert headers["X-Request-Id"] != forged and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    _, _, h2 = server.request("GET", "/v2/models/mlp", key=KEY, headers={"X-Request-Id": "a" * 500})
    assert len(h2["X-Request-Id"]) <= 64
    _, _, h3 = server.request("GET", "/v2/models/mlp", key=KEY, headers={"X-Request-Id": "trace-42.a_b:c"})
    assert h3["X-Request-Id"] == "trace-42.a_b:c", "a short token is kept"
    lines = [json.loads(line) for line in Path(server.log).read_text().splitlines() if line.startswith("{")]
    assert not any("forged" in entry for entry in lines), "a log line gained a field from a header"


def test_sampling_cannot_be_steered_by_the_request_id() -> None:
    """A client picking request ids that an unsalted hash would (not) sample must not decide what is captured."""
    chosen = [f"id-{i}" for i in range(20000) if collector.sampled(f"id-{i}", 0.05, salt=b"")][:200]
    assert len(chosen) == 200
    salt = collector.new_salt()
    kept = sum(collector.sampled(r, 0.05, salt=salt) for r in chosen)
    assert kept < 60, f"{kept} of 200 ids chosen to be sampled were sampled: the client steers sampling"
    assert collector.sampled("retry-me", 0.05, salt=salt) == collector.sampled("retry-me", 0.05, salt=salt)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([None] + [0.0] * 63, "data[0] = None is not a number"),
        ([0.0] * 5 + ["1.5"] + [0.0] * 58, "data[5] = '1.5' is not a number"),
        ([0.0] * 63 + [1e40], "data[63] = 1e+40 is out of range for FP32"),
        ([-1e39] + [0.0] * 63, "data[0] = -1e+39 is out of range for FP32"),
        ([True] * 64, "data[0] = True is not a number"),
    ],
)
def test_fp32_data_is_decoded_strictly(server, values: list, message: str) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": values}]}
    status, got, _ = server.request("POST", "/v2/models/mlp/infer", body=body, key=KEY)
    assert status == 400, got
    assert message in got["error"], got


def test_integer_and_bool_tensors_are_decoded_strictly(tmp_path: Path) -> None:
    from mlinfra.lab.samples import write_types_model

    srv = start_server(tmp_path, "--model", str(write_types_model(tmp_path / "t.onnx")), "--name", "types")
    try:

        def infer(name: str, datatype: str, data: list) -> tuple[int, dict]:
            body = {"inputs": [{"name": name, "shape": [1, 2], "datatype": datatype, "data": data}]}
            s, got, _ = srv.request("POST", "/v2/models/types/infer", body=body)
            return s, got

        status, got = infer("x_int64", "INT64", [1.5, 2])
        assert status == 400 and "data[0] = 1.5 is not an integer (INT64)" in got["error"], got
        status, got = infer("x_int32", "INT32", [1, 2**40])
        assert status == 400 and "data[1] = 1099511627776 is out of range for INT32" in got["error"], got
        status, got = infer("x_bool", "BOOL", [True, 1])
        assert status == 400 and "data[1] = 1 is not true or false" in got["error"], got
    finally:
        srv.stop()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_whose_content_encoding_does_not_decode_is_a_400(server, encoding: str) -> None:
    status, got, _ = server.request(
        "POST", "/v2/models/mlp/infer", raw=b"not compressed", key=KEY, headers={"Content-Encoding": encoding}
    )
    assert status == 400 and "Content-Encoding" in got["error"], got


def test_score_on_a_model_it_cannot_feed_is_a_400_and_bytes_outputs_are_text(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from mlinfra.lab.samples import write_types_model

    srv = start_server(tmp_path, "--model", str(write_types_model(tmp_path / "t.onnx")), "--name", "types")
    try:
        status, got, _ = srv.request("POST", "/score", body={"data": [[1, 2]]})
        assert status == 400 and "/v2/models/types/infer" in got["error"], got
    finally:
        srv.stop()
    # One BYTES input, one BYTES output: /score answers text, not a 500.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "bytes",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bytes.onnx"))
    srv = start_server(tmp_path, "--model", str(tmp_path / "bytes.onnx"), "--name", "words")
    try:
        status, got, _ = srv.request("POST", "/score", body={"data": [["a", "b"]]})
        assert status == 200 and got == [["a", "b"]], got
    finally:
        srv.stop()
