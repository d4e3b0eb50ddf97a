"""The binary tensor data extension (REST), against the real scoring server, with the clients people use: Triton's
HTTP client (tritonclient) and KServe's InferenceRESTClient, whose default encoding is binary — and raw bodies
that get the extension wrong."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from tests.scoring_helpers import Server, model_args, reference, start_server

KEY = "binary-key"


def auth() -> dict[str, str]:
    """Fresh headers per call: both clients add their own to the dict they are given."""
    return {"Authorization": f"Bearer {KEY}"}


HEADER = "Inference-Header-Content-Length"
CLIENTS = Path(__file__).parents[2] / "clients"


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        *model_args(models),
        "--key",
        KEY,
        "--max-body-mb",
        "1",
    )
    yield srv
    assert srv.stop() == 0


def test_triton_http_client_sends_and_receives_binary_tensors(server: Server, models) -> None:
    rows = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert "binary_tensor_data" in client.get_server_metadata(headers=auth())["extensions"]
    x = triton.InferInput("input", [3, 64], "FP32")
    x.set_data_from_numpy(rows, binary_data=True)
    binary_out = triton.InferRequestedOutput("probabilities", binary_data=True)
    result = client.infer("mlp", [x], outputs=[binary_out], headers=auth())
    out = result.get_output("probabilities")
    assert out["parameters"] == {"binary_data_size": 3 * 10 * 4} and "data" not in out
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models["mlp"], rows), rtol=1e-5)
    # Binary in, JSON out (the output asks for it); and the client's default (no outputs named).
    result = client.infer("mlp", [x], outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)],
                          headers=auth())  # fmt: skip
    assert len(result.get_output("probabilities")["data"]) == 30
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models["mlp"], rows), rtol=1e-5)
    result = client.infer("mlp", [x], headers=auth())
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models["mlp"], rows), rtol=1e-5)
    with pytest.raises(triton.InferenceServerException, match="missing or wrong key"):
        client.infer("mlp", [x])
    client.close()


def test_every_datatype_round_trips_in_binary(server: Server) -> None:
    values = {
        "fp32": ("FP32", np.array([[1.5, -2.0], [np.nan, np.inf]], dtype=np.float32)),
        "fp64": ("FP64", np.array([[1e300, -0.0], [3.25, 7.0]], dtype=np.float64)),
        "int32": ("INT32", np.array([[2**31 - 1, -(2**31)], [0, 5]], dtype=np.int32)),
        "int64": ("INT64", np.array([[2**63 - 1, -(2**63)], [1, -1]], dtype=np.int64)),
        "bool": ("BOOL", np.array([[True, False], [False, True]])),
        "bytes": ("BYTES", np.array([[b"h\xc3\xa9llo", b""], [b"\x00\xc3\xbf", b"x" * 300]], dtype=object)),
    }
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    inputs = []
    for t, (datatype, arr) in values.items():
        x = triton.InferInput(f"x_{t}", list(arr.shape), datatype)
        x.set_data_from_numpy(arr, binary_data=True)
        inputs.append(x)
    outputs = [triton.InferRequestedOutput(f"y_{t}", binary_data=True) for t in values]
    result = client.infer("types", inputs, outputs=outputs, headers=auth())
    for t, (_datatype, arr) in values.items():
        got = result.as_numpy(f"y_{t}")
        if t == "bytes":
            assert got.tolist() == arr.tolist()
        else:
            np.testing.assert_array_equal(got, arr)  # NaN and ±Inf travel as they are
    client.close()


def test_kserve_rest_client_default_binary_encoding(server: Server, models, tmp_path: Path) -> None:
    rows = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
    got = kserve_call("rest", f"http://127.0.0.1:{server.port}", rows, tmp_path)
    np.testing.assert_allclose(got, reference(models["mlp"], rows), rtol=1e-5)


def kserve_call(protocol: str, url: str, rows: np.ndarray, tmp: Path, key: str = KEY) -> np.ndarray:
    """KServe's client (tests/clients/kserve_call.py, a process of its own) → the model's output."""
    np.save(tmp / "rows.npy", rows)
    r = subprocess.run(
        [sys.executable, str(CLIENTS / "kserve_call.py"), protocol, url, key, "mlp", str(tmp / "rows.npy"),
         str(tmp / "out.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"binary_request": True}  # the client's default encoding is binary
    return np.load(tmp / "out.npy")


def body(tensors: list[dict], blob: bytes, **extra) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": tensors, **extra}).encode()
    return head + blob, {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def fp32(n: int = 3, size: int | None = None) -> dict:
    return {
        "name": "input",
        "shape": [n, 64],
        "datatype": "FP32",
        "parameters": {"binary_data_size": size or n * 256},
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: (b'{"inputs": []}', {HEADER: "lots"}), f"{HEADER}: 'lots' is not a byte count"),
        (lambda: (b'{"inputs": []}', {HEADER: "99"}), f"{HEADER} is 99, but the body has 14 bytes"),
        (lambda: (b'{"inputs": []}', {HEADER: "0"}), f"{HEADER} is 0"),
        (
            lambda: body([fp32(size=100)], bytes(100)),
            "binary_data_size is 100 bytes, but shape [3, 64] of FP32 is 192 elements × 4 bytes = 768",
        ),
        (lambda: body([fp32()], bytes(768 + 5)), "the body has 5 bytes after the inputs' binary data"),
        (
            lambda: body([fp32()], bytes(700)),
            "binary_data_size 768 runs past the end of the body (700 bytes left)",
        ),
        (
            lambda: body([{**fp32(), "data": [0.0] * 192}], bytes(768)),
            "has both data and binary_data_size",
        ),
        (
            lambda: body([{**fp32(), "parameters": {"binary_data_size": -4}}], b""),
            "binary_data_size must be a byte count",
        ),
        (
            lambda: (json.dumps({"inputs": [fp32()]}).encode(), {}),
            f"has binary_data_size, but the request has no binary part: send the JSON's length in the {HEADER}",
        ),
        (
            lambda: (json.dumps({"inputs": [fp32()]}).encode() + bytes(768), {}),
            f"(binary tensors need the {HEADER} header: the length of the JSON before them)",
        ),
    ],
)
def test_malformed_binary_bodies_are_named(server: Server, make, message: str) -> None:
    raw, headers = make()
    status, resp, _ = server.request("POST", "/v2/models/mlp/infer", key=KEY, raw=raw, headers=headers)
    assert status == 400 and message in resp["error"], resp


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (struct.pack("<I", 5) + b"ab", "BYTES element 0 says 5 bytes, but only 2 remain"),
        (struct.pack("<I", 1) + b"a" + b"\x01\x00", "BYTES element 1 is cut short: 2 bytes left"),
        (struct.pack("<I", 0) * 3, "holds more than the 2 BYTES elements its shape needs"),
        (struct.pack("<I", 0), "holds 1 BYTES elements; its shape needs 2"),
        (
            struct.pack("<I", 2) + b"\xff\xfe" + struct.pack("<I", 0),
            "BYTES element 0 is not UTF-8 text (byte 0)",
        ),
    ],
)
def test_malformed_bytes_tensors_are_named(server: Server, blob: bytes, message: str) -> None:
    others = {
        "fp32": ("FP32", 4),
        "fp64": ("FP64", 8),
        "int32": ("INT32", 4),
        "int64": ("INT64", 8),
        "bool": ("BOOL", 1),
    }
    tensors = [
        {"name": f"x_{t}", "shape": [1, 2], "datatype": dt, "parameters": {"binary_data_size": 2 * size}}
        for t, (dt, size) in others.items()
    ]
    tensors.append(
        {
            "name": "x_bytes",
            "shape": [1, 2],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(blob)},
        }
    )
    raw, headers = body(tensors, bytes(sum(2 * s for _, s in others.values())) + blob)
    status, resp, _ = server.request("POST", "/v2/models/types/infer", key=KEY, raw=raw, headers=headers)
    assert status == 400 and message in resp["error"], resp
    # A BOOL element is one byte, 0 or 1.
    raw, headers = body([*tensors[:5], {**tensors[5], "parameters": {"binary_data_size": 8}}],
                        bytes(8 + 16 + 8 + 16) + b"\x07\x00" + struct.pack("<I", 0) * 2)  # fmt: skip
    status, resp, _ = server.request("POST", "/v2/models/types/infer", key=KEY, raw=raw, headers=headers)
    assert status == 400 and "x_bool" in resp["error"] and "a byte 0 or 1" in resp["error"], resp
    # The server is still up and answers a good binary request.
    rows = np.ones((1, 64), dtype=np.float32)
    raw, headers = body([fp32(1)], rows.tobytes())
    status, resp, _ = server.request("POST", "/v2/models/mlp/infer", key=KEY, raw=raw, headers=headers)
    assert status == 200 and len(resp["outputs"][0]["data"]) == 10
