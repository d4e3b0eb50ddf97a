"""The Open Inference Protocol over gRPC, against the real scoring server (`--grpc-port`), with Triton's and KServe's
gRPC clients: raw and typed tensors, metadata and health, keys, bad input, metrics — and the vendored generated code
matches its .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import GRPC_FRONTEND
from tests.scoring_helpers import Server, free_port, metric, model_args, reference, start_server
from tests.unit.mlinfra_scoring.test_binary import kserve_call

KEY = "grpc-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
OIP = Path(__file__).parents[3] / "components" / "scoring" / "mlinfra_scoring" / "oip"


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request, models, tmp_path_factory):
    """The server with gRPC through each front end: the native one (mlinfra-grpcfront, what images run) and the
    in-process grpcio service. Every test below runs against both."""
    frontend = str(GRPC_FRONTEND) if request.param == "native" else "grpcio"
    assert request.param == "grpcio" or GRPC_FRONTEND is not None, (
        "mlinfra-grpcfront did not build: run make setup"
    )
    grpc_port = free_port()
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        *model_args(models, "3"),
        "--key",
        KEY,
        "--max-body-mb",
        "1",
        "--max-batch-size",
        "8",
        "--max-batch-delay-ms",
        "2",
        env={
            "MLINFRA_SERVE_GRPC_PORT": str(grpc_port),
            "MLINFRA_SERVE_GRPC_FRONTEND": frontend,
        },  # flags' variables
    )
    srv.grpc = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


def test_triton_grpc_client(server: Server, models) -> None:
    client = triton.InferenceServerClient(url=server.grpc)  # type: ignore[attr-defined]
    assert client.is_server_live() and client.is_server_ready()  # health needs no key
    assert client.is_model_ready("mlp", headers=dict(AUTH))
    assert "binary_tensor_data" in client.get_server_metadata(headers=dict(AUTH)).extensions
    meta = client.get_model_metadata("mlp", headers=dict(AUTH))
    assert (
        meta.versions == ["3"] and meta.inputs[0].name == "input" and list(meta.inputs[0].shape) == [-1, 64]
    )
    rows = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    x = triton.InferInput("input", [4, 64], "FP32")
    x.set_data_from_numpy(rows)  # raw_input_contents
    result = client.infer("mlp", [x], headers=dict(AUTH), request_id="req-1")
    assert result.get_response().id == "req-1" and result.get_response().model_version == "3"
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models["mlp"], rows), rtol=1e-5)
    with pytest.raises(InferenceServerException, match="missing or wrong key") as e:
        client.infer("mlp", [x])
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="model 'nope' is not served") as e:
        client.infer("nope", [x], headers=dict(AUTH))
    assert e.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_every_datatype_raw_and_typed(server: Server) -> None:
    values = {
        "fp32": ("FP32", "fp32_contents", np.array([[1.5, -2.0], [np.nan, np.inf]], dtype=np.float32)),
        "fp64": ("FP64", "fp64_contents", np.array([[1e300, -0.0], [3.25, 7.0]], dtype=np.float64)),
        "int32": ("INT32", "int_contents", np.array([[2**31 - 1, -(2**31)], [0, 5]], dtype=np.int32)),
        "int64": ("INT64", "int64_contents", np.array([[2**63 - 1, -(2**63)], [1, -1]], dtype=np.int64)),
        "bool": ("BOOL", "bool_contents", np.array([[True, False], [False, True]])),
        "bytes": ("BYTES", "bytes_contents", np.array([["héllo", ""], ["\x00x", "y" * 300]], dtype=object)),
    }
    client = triton.InferenceServerClient(url=server.grpc)  # type: ignore[attr-defined]
    inputs = []
    for t, (datatype, _field, arr) in values.items():
        x = triton.InferInput(f"x_{t}", list(arr.shape), datatype)
        x.set_data_from_numpy(arr)
        inputs.append(x)
    result = client.infer("types", inputs, headers=dict(AUTH))
    for t, (_datatype, _field, arr) in values.items():
        got = result.as_numpy(f"y_{t}")
        if t == "bytes":
            assert [b.decode() for b in got.ravel()] == arr.ravel().tolist()
        else:
            np.testing.assert_array_equal(got, arr)
    client.close()
    # Typed contents (a hand-built request: the protocol's messages are the same on the wire).
    req = service_pb2.ModelInferRequest(model_name="types")
    for t, (datatype, field, arr) in values.items():
        tensor = req.inputs.add(name=f"x_{t}", datatype=datatype, shape=list(arr.shape))
        flat = [v.encode() for v in arr.ravel()] if t == "bytes" else arr.ravel().tolist()
        getattr(tensor.contents, field).extend(flat)
    with grpc.insecure_channel(server.grpc) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        resp = stub.ModelInfer(req, metadata=AUTH)
        assert [o.name for o in resp.outputs] == [f"y_{t}" for t in values]
        got = np.frombuffer(resp.raw_output_contents[1], dtype="<f8")
        np.testing.assert_array_equal(got, values["fp64"][2].ravel())


def test_kserve_grpc_client(server: Server, models, tmp_path: Path) -> None:
    rows = np.random.default_rng(2).normal(size=(2, 64)).astype(np.float32)
    got = kserve_call("grpc", server.grpc, rows, tmp_path, KEY)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, reference(models["mlp"], rows), rtol=1e-5)


def _infer(server: Server, req: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, metadata=AUTH)
        return e.value


def mlp_request(rows: int = 2, raw: bytes | None = None, **tensor) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[rows, 64], **tensor)
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (
            lambda: mlp_request(raw=bytes(100)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "binary_data_size is 100 bytes, but shape [2, 64] of FP32 is 128 elements × 4 bytes = 512",
        ),
        (
            lambda: mlp_request(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "data has 0 values; shape [2, 64] needs 128",
        ),
        (
            lambda: mlp_request(contents=service_pb2.InferTensorContents(int_contents=[1] * 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "data has 0 values; shape [2, 64] needs 128",  # FP32 reads fp32_contents
        ),
        (
            lambda: service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[b"x"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 1 entries for 0 inputs",
        ),
        (
            lambda: mlp_request(
                rows=1, raw=bytes(256), contents=service_pb2.InferTensorContents(fp32_contents=[0])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'input' has contents, but the request carries its tensors in raw_input_contents",
        ),
        (
            lambda: mlp_request(rows=4096, raw=bytes(4096 * 256)),  # 1 MiB + framing > --max-body-mb 1
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ],
)
def test_bad_requests_get_status_codes_that_say_why(server: Server, make, code, message: str) -> None:
    err = _infer(server, make())
    assert err.code() == code and message in (err.details() or ""), (err.code(), err.details())
    # The server stays up.
    with grpc.insecure_channel(server.grpc) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (
            stub.ModelInfer(mlp_request(rows=1, raw=bytes(256)), metadata=AUTH).outputs[0].name
            == "probabilities"
        )


@pytest.mark.parametrize(
    "metadata",
    [(("x-big", "a" * 100_000),), tuple((f"x-{i}", "v" * 7000) for i in range(3))],
    ids=["one-100KB-entry", "21KB-in-all"],
)
def test_oversized_metadata_is_resource_exhausted_and_the_server_stays_up(server: Server, metadata) -> None:
    """Both front ends refuse metadata past 16 KiB in all (grpcio's limit); the native one also refuses one entry past
    8,000 bytes, which the server's HTTP parser would refuse: the client gets a status that says so, the log no
    traceback."""
    with grpc.insecure_channel(server.grpc) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(mlp_request(rows=1, raw=bytes(256)), metadata=(*AUTH, *metadata), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.value.code(), e.value.details())
        assert "16384" in (e.value.details() or "") or "8000" in (e.value.details() or ""), e.value.details()
        ok = stub.ModelInfer(mlp_request(rows=1, raw=bytes(256)), metadata=(*AUTH, ("x-fine", "v" * 4000)))
        assert ok.outputs[0].name == "probabilities"
    assert "Traceback" not in server.log.read_text()


def test_grpc_calls_are_counted_like_rest(server: Server) -> None:
    _, text, _ = server.request("GET", "/metrics")
    assert (
        metric(text, "mlinfra_requests_total", route="grpc_model_infer", model="mlp", version="3", code="200")
        or 0
    ) >= 1, text
    assert (
        metric(
            text, "mlinfra_requests_total", route="grpc_model_infer", model="unknown", version="", code="401"
        )
        or 0
    ) >= 1, text


def test_vendored_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{OIP}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         "oip.proto"],
        check=True,
    )  # fmt: skip
    for name in ("oip_pb2.py", "oip_pb2.pyi"):
        assert (tmp_path / name).read_text() == (OIP / name).read_text(), f"{name} is stale: run `make proto`"
