"""Hostile input against the scoring server (issue 17, the server's items that are fixed so far): what any client on
the network can send must cost nothing lasting, never be a 500, and never forge what the server records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra_scoring import collector
from tests.scoring_helpers import metric, start_server

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


def _save(
    tmp_path: Path, name: str, nodes: list, inputs: list, outputs: list, inits: list | None = None
) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    return tmp_path / f"{name}.onnx"


def test_health_and_metrics_answer_while_a_big_request_computes(tmp_path: Path) -> None:
    """Inference runs in a worker pool: a request that computes for seconds does not stall the event loop."""
    import threading
    import time

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    # x [1, 512] tiled to [4096, 512], then 12 chained 512x512 MatMuls: seconds of work from a tiny request.
    w = numpy_helper.from_array((np.eye(512, dtype=np.float32) * 0.5), "w")
    reps = numpy_helper.from_array(np.array([4096, 1], dtype=np.int64), "reps")
    nodes = [helper.make_node("Tile", ["x", "reps"], ["h0"])]
    for i in range(12):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", ["h12"], ["y"], keepdims=1))
    model = _save(
        tmp_path,
        "slow",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [w, reps],
    )
    srv = start_server(tmp_path, "--model", str(model), "--name", "slow")
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": [1.0] * 512}]}
        t0 = time.monotonic()
        assert srv.request("POST", "/v2/models/slow/infer", body=body)[0] == 200
        alone = time.monotonic() - t0
        done: list[float] = []
        heavy = [
            threading.Thread(
                target=lambda: (srv.request("POST", "/v2/models/slow/infer", body=body), done.append(1))
            )
            for _ in range(2)
        ]
        for t in heavy:
            t.start()
        time.sleep(min(0.1, alone / 4))
        probes = []
        for path in ("/v2/health/live", "/metrics", "/v2/health/ready"):
            t1 = time.monotonic()
            assert srv.request("GET", path)[0] == 200
            probes.append(time.monotonic() - t1)
        still_computing = len(done) < 2
        for t in heavy:
            t.join()
        assert max(probes) < max(0.25, alone / 3), f"probes took {probes} while requests of {alone:.2f} s ran"
        assert still_computing, (
            f"the big requests ({alone:.2f} s each) ended before the probes: nothing was tested"
        )
    finally:
        srv.stop()


def test_one_bad_request_in_a_merged_batch_fails_alone(tmp_path: Path) -> None:
    """A Gather whose index is out of range fails in ONNX Runtime, not in decoding: merged with good requests, only it
    gets the 400."""
    import threading

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    model = _save(
        tmp_path,
        "lookup",
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 4])],
        [table],
    )
    srv = start_server(
        tmp_path,
        "--model",
        str(model),
        "--name",
        "lookup",
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "150",
    )
    try:
        got: dict[int, tuple[int, dict]] = {}

        def call(i: int) -> None:
            idx = 99 if i == 3 else i
            body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [idx]}]}
            s, resp, _ = srv.request("POST", "/v2/models/lookup/infer", body=body)
            got[i] = (s, resp)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got[3][0] == 400 and "lookup" in got[3][1]["error"], got[3]
        for i in (0, 1, 2, 4, 5, 6, 7):
            assert got[i][0] == 200, (i, got[i])
            assert got[i][1]["outputs"][0]["data"] == [4.0 * i + k for k in range(4)]
        text = srv.request("GET", "/metrics")[1]
        merged = metric(text, "mlinfra_batch_size_count", model="lookup", version="1")
        assert merged is not None and merged < 8, f"requests were not merged: {merged} executions"
    finally:
        srv.stop()


def test_non_finite_outputs_are_reported_not_silently_null(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    model = _save(
        tmp_path,
        "log",
        [helper.make_node("Log", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    srv = start_server(tmp_path, "--model", str(model), "--name", "log")
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, -1.0, 0.0]}]}
        status, resp, _ = srv.request("POST", "/v2/models/log/infer", body=body)
        assert status == 200, resp
        out = resp["outputs"][0]
        assert out["data"] == [0.0, None, None], out
        assert out["parameters"] == {"non_finite_values": 2, "first_non_finite_index": 1}, out
        status, resp, _ = srv.request(
            "POST",
            "/v2/models/log/infer",
            body={**body, "inputs": [{**body["inputs"][0], "data": [1.0, 2.0, 3.0]}]},
        )
        assert "parameters" not in resp["outputs"][0], resp
        status, scored, headers = srv.request("POST", "/score", body={"data": [[1.0, -1.0, 0.0]]})
        assert status == 200 and scored == [[0.0, None, None]] and headers.get("X-Non-Finite-Values") == "2"
        metrics = srv.request("GET", "/metrics")[1]
        assert metric(metrics, "mlinfra_non_finite_outputs_total", model="log", version="1") == 4, metrics
    finally:
        srv.stop()


def _closed_within(sock, seconds: float) -> bool:
    """Whether the server closes SOCK (recv gives b"" or a reset) within SECONDS."""
    import time

    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True
        if data == b"":
            return True
        if b"HTTP/1.1 408" in data or b"HTTP/1.1 400" in data:
            continue  # an answer before the close
    return False


def test_silent_slow_and_idle_connections_are_cut_and_connections_bounded(tmp_path: Path) -> None:
    import socket
    import time

    srv = start_server(
        tmp_path, "--model", str(write_mlp(tmp_path / "m.onnx")), "--name", "mlp",
        "--idle-timeout-s", "1", "--body-timeout-s", "1", "--max-connections", "6",
    )  # fmt: skip
    try:

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", srv.port), timeout=5)

        silent = connect()  # connects, sends nothing
        slow = connect()  # sends its headers one byte at a time, never finishing within the timeout
        t0 = time.monotonic()
        for ch in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n":
            try:
                slow.send(bytes([ch]))
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_within(slow, 3), "a client sending headers slowly kept its connection"
        assert _closed_within(silent, 3), "a client sending nothing kept its connection"
        assert time.monotonic() - t0 < 8

        trickle = connect()  # complete headers, then a body that never finishes
        trickle.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inputs": ['
        )
        trickle.settimeout(5)
        assert b"408" in trickle.recv(65536).split(b"\r\n", 1)[0], "a trickled body was not answered 408"

        idle = connect()  # keep-alive: one request, then nothing
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        assert b"200" in idle.recv(65536).split(b"\r\n", 1)[0]
        assert _closed_within(idle, 4), "an idle keep-alive connection was kept"

        crowd = [connect() for _ in range(10)]  # more than --max-connections 6
        closed = sum(_closed_within(s, 0.5) for s in crowd)
        assert closed >= 4, f"only {closed} of 10 connections over the limit of 6 were refused"
        for s in crowd:
            s.close()
        time.sleep(0.3)
        assert srv.request("GET", "/v2/health/live")[0] == 200, "the server did not recover"
        metrics = srv.request("GET", "/metrics")[1]
        assert re.search(r"mlinfra_connections_idle_closed_total [1-9]", metrics), metrics
        assert re.search(r"mlinfra_connections_refused_total [1-9]", metrics), metrics
    finally:
        srv.stop()


def test_past_max_queue_requests_get_503_with_retry_after_and_the_server_stays_up(tmp_path: Path) -> None:
    """Admission control: with --max-queue 2 and a scoring script that takes 0.6 s, a burst of 8 gets 2 answers and 6
    immediate 503s with Retry-After; gRPC ModelInfer is bounded by the same count; health answers throughout, the
    shed requests are counted, and once the burst is over requests are served again."""
    import threading
    import time

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from tests.scoring_helpers import free_port

    script = tmp_path / "slow.py"
    script.write_text(
        "import time\n\ndef init():\n    pass\n\ndef run(raw):\n    time.sleep(0.6)\n    return {'ok': 1}\n"
    )
    grpc_port = free_port()
    srv = start_server(
        tmp_path,
        "--model", str(write_mlp(tmp_path / "m.onnx")), "--name", "mlp", "--script", str(script),
        "--max-queue", "2", "--grpc-port", str(grpc_port),
    )  # fmt: skip
    try:
        got: list[tuple[int, dict, float]] = []

        def call() -> None:
            t = time.monotonic()
            status, body, headers = srv.request("POST", "/score", raw=b"{}")
            got.append((status, {**body, **{k.lower(): v for k, v in headers.items()}}, time.monotonic() - t))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # the burst is in: two run, the rest were refused
        assert srv.request("GET", "/v2/health/ready")[0] == 200  # health is never shed
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="mlp")
            request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
            request.raw_input_contents.append(bytes(256))
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "--max-queue" in (
                e.value.details() or ""
            )
            for t in threads:
                t.join()
            assert [s for s, _b, _t in got].count(200) == 2, got
            shed = [(b, dt) for s, b, dt in got if s != 200]
            assert len(shed) == 6 and all(s == 503 for s, _b, _t in got if s != 200), got
            for b, dt in shed:
                assert b["retry-after"] == "1" and "--max-queue" in b["error"], b
                assert dt < 0.5, f"a shed request must be refused at once, not after {dt:.2f} s"
            assert stub.ModelInfer(request, timeout=10).outputs[0].name == "probabilities"  # served again
        assert srv.request("POST", "/score", raw=b"{}")[0] == 200
        text = srv.request("GET", "/metrics")[1]
        assert metric(text, "mlinfra_requests_shed_total") == 7, text  # 6 REST + 1 gRPC
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            "longer than 8190 bytes",
        ),
        (b"GARBAGE\r\n\r\n", "the request line is not"),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n", "header"),
        (
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n",
            "chunk",
        ),
    ],
    ids=["header-too-long", "request-line", "header", "chunked"],
)
def test_a_malformed_request_gets_a_json_400_and_one_log_line_not_a_traceback(
    server, raw: bytes, says: str
) -> None:
    import socket

    before = metric(server.request("GET", "/metrics")[1], "mlinfra_requests_total", route="malformed", model="", version="", code="400") or 0  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        reply = b""
        while chunk := s.recv(65536):  # the server closes the connection after answering
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], reply[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert says in error.lower() and "aaaa" not in error, error  # names the problem; echoes no client bytes
    text = server.request("GET", "/metrics")[1]  # the server stays up, and counted it
    after = metric(text, "mlinfra_requests_total", route="malformed", model="", version="", code="400")
    assert after == before + 1, text
    log = server.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-2000:]
    assert f'"error":"{error}"' in log.replace('", "', '","'), log[-1000:]


def test_output_names_are_checked_once_each_and_client_names_are_not_echoed_at_length(server) -> None:
    one = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    status, got, _ = server.request(
        "POST",
        "/v2/models/mlp/infer",
        body={"inputs": [one], "outputs": [{"name": "probabilities"}] * 1000},
        key=KEY,
    )
    assert status == 400 and got["error"] == "output 'probabilities' is requested twice", got
    status, got, _ = server.request(
        "POST", "/v2/models/mlp/infer", body={"inputs": [{**one, "name": "x" * 100_000}]}, key=KEY
    )
    assert status == 400 and "is not an input of mlp" in got["error"] and len(got["error"]) < 300, got[
        "error"
    ][:300]
    wrong = [{"name": f"{i:03d}" * 2000} for i in range(200)]
    status, got, _ = server.request(
        "POST", "/v2/models/mlp/infer", body={"inputs": [one], "outputs": wrong}, key=KEY
    )
    assert status == 400 and "not produced by mlp" in got["error"] and len(got["error"]) < 2000, len(
        got["error"]
    )
