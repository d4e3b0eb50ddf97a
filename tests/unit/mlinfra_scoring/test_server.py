"""The scoring server, started for real on loopback: every route and every error case."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.scoring_helpers import Server, metric, model_args, reference, start_server

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        *model_args(models, "3"),
        "--key",
        KEYS[0],
        "--key",
        KEYS[1],
        "--max-body-mb",
        "1",
    )
    yield srv
    assert srv.stop() == 0


def infer_body(rows: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        ],
        **extra,
    }


def test_health_and_metadata(server: Server) -> None:
    assert server.request("GET", "/v2/health/live")[:2] == (200, {"live": True})
    assert server.request("GET", "/v2/health/ready")[:2] == (200, {"ready": True})
    status, meta, _ = server.request("GET", "/v2", key=KEYS[0])
    assert status == 200 and {m["name"] for m in meta["models"]} == {"mlp", "types"}
    status, meta, _ = server.request("GET", "/v2/models/mlp", key=KEYS[0])
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["versions"] == ["3"]
    assert server.request("GET", "/v2/models/mlp/versions/3", key=KEYS[0])[0] == 200
    assert server.request("GET", "/v2/models/mlp/versions/4", key=KEYS[0])[0] == 404
    assert server.request("GET", "/v2/models/mlp/ready", key=KEYS[0])[:2] == (
        200,
        {"name": "mlp", "ready": True},
    )
    assert server.request("GET", "/v2/models/mlp/versions/3/ready", key=KEYS[0])[0] == 200
    status, doc, _ = server.request("GET", "/openapi.json")
    assert status == 200 and "/v2/models/{name}/infer" in doc["paths"]
    assert "mlp" in doc["paths"]["/v2/models/{name}/infer"]["parameters"][0]["schema"]["enum"]
    assert doc["x-mlinfra-models"]["mlp"]["inputs"][0]["name"] == "input"


def test_infer_flat_and_nested_with_id_parameters_and_outputs(server: Server, models) -> None:
    rows = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    want = reference(models["mlp"], rows)
    status, resp, headers = server.request(
        "POST", "/v2/models/mlp/infer", infer_body(rows, id="req-7"), key=KEYS[0]
    )
    assert status == 200, resp
    assert resp["id"] == "req-7" and resp["model_name"] == "mlp" and resp["model_version"] == "3"
    out = resp["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [3, 10] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 10), want, rtol=1e-6)
    assert headers.get("X-Request-Id")
    nested = {
        "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": rows.tolist()}],
        "parameters": {"trace": "yes"},
        "outputs": [{"name": "probabilities"}],
    }
    status, resp, _ = server.request("POST", "/v2/models/mlp/versions/3/infer", nested, key=KEYS[1])
    assert status == 200 and resp["parameters"] == {"trace": "yes"}
    np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(3, 10), want, rtol=1e-6)


def test_large_json_bodies_score_as_small_ones_do(server: Server, models) -> None:
    """64-row bodies take the C parser (mlinfra_scoring.jsonbody): the same answers and the same 400s."""
    rows = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    want = reference(models["mlp"], rows)
    for data in (rows.tolist(), rows.ravel().tolist()):
        body = {
            "inputs": [{"name": "input", "shape": [64, 64], "datatype": "FP32", "data": data}],
            "id": "big",
        }
        status, resp, _ = server.request("POST", "/v2/models/mlp/infer", body, key=KEYS[0])
        assert status == 200 and resp["id"] == "big", resp
        np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(64, 10), want, rtol=1e-6)
    ragged = rows.tolist()
    ragged[40] = ragged[40][:3]
    bad = {"inputs": [{"name": "input", "shape": [64, 64], "datatype": "FP32", "data": ragged}]}
    status, resp, _ = server.request("POST", "/v2/models/mlp/infer", bad, key=KEYS[0])
    assert status == 400 and "rectangular" in resp["error"], resp
    ragged[40] = [*rows[40].tolist()[:-1], "1"]
    status, resp, _ = server.request("POST", "/v2/models/mlp/infer", bad, key=KEYS[0])
    assert status == 400 and "data[2623] = '1' is not a number" in resp["error"], resp
    status, resp, _ = server.request("POST", "/score", {"data": rows.tolist()}, key=KEYS[0])
    assert status == 200, resp
    np.testing.assert_allclose(np.array(resp), want, rtol=1e-6)


def test_every_datatype_round_trips(server: Server) -> None:
    values = {
        "FP32": [1.5, -2.0],
        "FP64": [1e-300, 2.5],
        "INT32": [2**31 - 1, -5],
        "INT64": [2**62, -1],
        "BOOL": [True, False],
        "BYTES": ["héllo", "x"],
    }
    inputs = [
        {"name": f"x_{t.lower()}", "shape": [1, 2], "datatype": t, "data": v} for t, v in values.items()
    ]
    status, resp, _ = server.request("POST", "/v2/models/types/infer", {"inputs": inputs}, key=KEYS[0])
    assert status == 200, resp
    got = {o["name"]: (o["datatype"], o["data"]) for o in resp["outputs"]}
    for t, v in values.items():
        dt, data = got[f"y_{t.lower()}"]
        assert dt == t, (t, dt)
        assert data == pytest.approx(v) if t in ("FP32", "FP64") else data == v, (t, data)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (
            {"inputs": [{"name": "nope", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
            400,
            "'nope' is not an input of mlp",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": [0] * 64}]},
            400,
            "datatype 'FP64'; the model expects FP32",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0] * 63}]},
            400,
            "shape [1, 63]; the model expects [-1, 64]",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0] * 64}]},
            400,
            "data has 64 values; shape [2, 64] needs 128",
        ),
        (
            {"inputs": [{"name": "input", "shape": [10**9, 64], "datatype": "FP32", "data": [0] * 64}]},
            400,
            "needs 64000000000",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, -64], "datatype": "FP32", "data": [0] * 64}]},
            400,
            "non-negative integers",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [[0] * 64, [0] * 3]}
                ]
            },
            400,
            "rectangular",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}]},
            400,
            "data[0] = 'a' is not a number",
        ),
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": ["x"]}, 400, "is not an input"),
        ([1, 2], 400, "JSON object"),
        (
            {
                "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "'logits' not produced by mlp",
        ),
    ],
)
def test_bad_requests_are_400_with_a_reason(server: Server, body, status, fragment) -> None:
    got, resp, _ = server.request("POST", "/v2/models/mlp/infer", body, key=KEYS[0])
    assert got == status, resp
    assert fragment in resp["error"], resp


def test_protocol_errors(server: Server) -> None:
    assert server.request("POST", "/v2/models/mlp/infer", raw=b"{not json", key=KEYS[0])[0] == 400
    assert server.request("POST", "/v2/models/mlp/infer", raw=b"\xff\xfe\x00", key=KEYS[0])[0] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    assert server.request("POST", "/v2/models/mlp/infer", raw=deep, key=KEYS[0])[0] == 400
    status, resp, _ = server.request("POST", "/v2/models/ghost/infer", {"inputs": []}, key=KEYS[0])
    assert status == 404 and "'ghost' is not served here" in resp["error"]
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    status, resp, _ = server.request("POST", "/v2/models/mlp/infer", raw=big, key=KEYS[0])
    assert status == 413 and "limit" in resp["error"]
    # Auth: missing, wrong, either rotated key.
    body = infer_body(np.zeros((1, 64), np.float32))
    assert server.request("POST", "/v2/models/mlp/infer", body)[0] == 401
    assert server.request("POST", "/v2/models/mlp/infer", body, key="key-three")[0] == 401
    assert (
        server.request("POST", "/v2/models/mlp/infer", body, headers={"Authorization": "Basic a2V5"})[0]
        == 401
    )
    for k in KEYS:
        assert server.request("POST", "/v2/models/mlp/infer", body, key=k)[0] == 200
    # Still up after all of that.
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_azureml_score_default(server: Server, models) -> None:
    rows = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    status, resp, _ = server.request("POST", "/score", {"data": rows.tolist()}, key=KEYS[0])
    assert status == 200
    np.testing.assert_allclose(np.array(resp), reference(models["mlp"], rows), rtol=1e-6)
    status, resp, _ = server.request("POST", "/score", {"rows": []}, key=KEYS[0])
    assert status == 400 and '{"data"' in resp["error"]


def test_metrics(server: Server) -> None:
    server.request("POST", "/v2/models/mlp/infer", infer_body(np.zeros((4, 64), np.float32)), key=KEYS[0])
    status, text, _ = server.request("GET", "/metrics")
    assert status == 200
    assert (
        metric(text, "mlinfra_requests_total", route="infer", model="mlp", version="3", code="200") or 0
    ) >= 1
    assert 'code="401"' in text and 'code="400"' in text
    assert "mlinfra_request_duration_seconds_bucket" in text
    assert (metric(text, "mlinfra_batch_size_bucket", model="mlp", version="3", le="4.0") or 0) >= 1
    assert "mlinfra_in_flight_requests" in text


def test_access_log_is_json_with_request_id(server: Server) -> None:
    server.request("GET", "/v2/health/live", headers={"X-Request-Id": "trace-abc"})
    time.sleep(0.7)  # the log is flushed every 0.5 s
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert any(entry.get("request_id") == "trace-abc" and entry.get("status") == 200 for entry in lines)


def test_user_script_init_run_and_failures(tmp_path: Path, models) -> None:
    script = tmp_path / "score.py"
    script.write_text(
        "import json, os, time\n"
        "STATE = {}\n"
        "def init():\n"
        "    time.sleep(1.0)\n"
        "    STATE['model_dir'] = os.environ['AZUREML_MODEL_DIR']\n"
        "def run(raw_data):\n"
        "    data = json.loads(raw_data)['data']\n"
        "    if data == 'boom':\n"
        "        raise ValueError('bad row: boom')\n"
        "    if data == 'slow':\n"
        "        time.sleep(0.5)\n"
        "    return {'sum': sum(map(sum, data)) if isinstance(data, list) else data, 'dir': STATE['model_dir']}\n"
    )
    srv = start_server(tmp_path, "--model", str(models["mlp"]), "--script", str(script), wait_ready=False)
    try:
        status, body, _ = srv.request("GET", "/v2/health/ready")
        assert status == 503 and body["ready"] is False, "readiness must be false until init() finished"
        deadline = time.monotonic() + 10
        while srv.request("GET", "/v2/health/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body, _ = srv.request("POST", "/score", {"data": [[1, 2], [3, 4]]})
        assert status == 200 and body == {"sum": 10, "dir": str(models["mlp"].parent)}
        status, body, _ = srv.request("POST", "/score", {"data": "boom"})
        assert status == 500 and "ValueError: bad row: boom" in body["error"]
        assert srv.request("POST", "/score", {"data": [[1]]})[0] == 200, "server must stay up after a failure"

        # SIGTERM while requests are in flight: every one of them completes, exit code 0.
        results: list[int] = []

        def call() -> None:
            results.append(srv.request("POST", "/score", {"data": "slow"})[0])

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        code = srv.stop()
        for t in threads:
            t.join()
        assert results == [200] * 8, results
        assert code == 0
    finally:
        srv.stop()


def test_script_with_syntax_error_is_reported_with_line(tmp_path: Path, models) -> None:
    script = tmp_path / "broken.py"
    script.write_text("def init():\n    pass\ndef run(raw):\n    return (\n")
    srv = start_server(tmp_path, "--model", str(models["mlp"]), "--script", str(script), wait_ready=False)
    try:
        status, body, _ = srv.request("GET", "/v2/health/ready")
        deadline = time.monotonic() + 10
        while "error" not in body and time.monotonic() < deadline:
            time.sleep(0.05)
            status, body, _ = srv.request("GET", "/v2/health/ready")
        assert status == 503 and f"{script}:4" in body["error"]
    finally:
        srv.stop()


def test_dynamic_batching_merges_and_matches_unbatched(tmp_path: Path, models) -> None:
    srv = start_server(
        tmp_path,
        "--model",
        str(models["mlp"]),
        "--name",
        "mlp",
        "--max-batch-size",
        "32",
        "--max-batch-delay-ms",
        "20",
    )
    try:
        rng = np.random.default_rng(5)
        batches = [rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(40)]
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            status, resp, _ = srv.request("POST", "/v2/models/mlp/infer", infer_body(batches[i]))
            assert status == 200, resp
            results[i] = np.array(resp["outputs"][0]["data"], dtype=np.float32).reshape(-1, 10)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, rows in enumerate(batches):
            np.testing.assert_allclose(results[i], reference(models["mlp"], rows), rtol=1e-5, atol=1e-7)
        text = srv.request("GET", "/metrics")[1]
        executions = metric(text, "mlinfra_batch_size_count", model="mlp", version="1")
        assert executions is not None, text
        assert executions < len(batches), f"no merging happened: {executions} executions for {len(batches)}"
    finally:
        assert srv.stop() == 0


def test_dynamic_batching_is_on_by_default_only_where_the_batch_axis_is_dynamic(
    tmp_path: Path, models
) -> None:
    """No --max-batch-size: the MLP (batch axis dynamic) is batched up to 64 rows, the same MLP with a fixed batch
    of 1 runs request by request (as Triton batches only models whose config has a max batch size)."""
    from mlinfra.lab.samples import write_mlp

    fixed = write_mlp(tmp_path / "fixed.onnx", batch=1)
    srv = start_server(
        tmp_path,
        *model_args(models, "1"),
        "--model",
        str(fixed),
        "--name",
        "fixed",
        "--max-batch-delay-ms",
        "40",
    )
    try:
        assert srv.request("GET", "/v2/models/mlp")[1]["parameters"]["max_batch_size"] == 64
        assert srv.request("GET", "/v2/models/fixed")[1]["parameters"]["max_batch_size"] == 1
        row = np.random.default_rng(9).standard_normal((1, 64)).astype(np.float32)

        def burst(name: str) -> None:
            def call() -> None:
                status, resp, _ = srv.request("POST", f"/v2/models/{name}/infer", infer_body(row))
                assert status == 200, resp

            threads = [threading.Thread(target=call) for _ in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        burst("mlp")
        burst("fixed")
        text = srv.request("GET", "/metrics")[1]
        merged = metric(text, "mlinfra_batch_size_count", model="mlp", version="1")
        alone = metric(text, "mlinfra_batch_size_count", model="fixed", version="1")
        assert merged is not None and merged < 24, f"the MLP was not batched: {merged} executions for 24"
        assert alone == 24, f"the fixed-batch model must run each request alone: {alone} executions for 24"
    finally:
        assert srv.stop() == 0
    (tmp_path / "off").mkdir()
    off = start_server(
        tmp_path / "off", "--model", str(models["mlp"]), "--name", "mlp", "--max-batch-size", "1"
    )
    try:
        assert off.request("GET", "/v2/models/mlp")[1]["parameters"]["max_batch_size"] == 1
    finally:
        assert off.stop() == 0


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "mlinfra_scoring", "--model", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "mlinfra_scoring"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 2 and "no model given" in res.stderr


def test_collection_hooks_get_records_and_a_failing_hook_does_not_break_scoring(
    tmp_path: Path, models
) -> None:
    import asyncio

    import aiohttp
    from aiohttp import web

    from mlinfra_scoring.server import ModelSpec, ScoringServer, ServerConfig

    records: list[dict] = []

    def broken(_record: dict) -> None:
        raise RuntimeError("collector down")

    async def scenario() -> tuple[int, str]:
        srv = ScoringServer(
            ServerConfig(models=[ModelSpec(str(models["mlp"]), "mlp", "7")], access_log=False)
        )
        srv.add_hook(records.append)
        srv.add_hook(broken)
        srv.load()
        runner = web.AppRunner(srv.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as s:
            body = infer_body(np.ones((2, 64), np.float32))
            async with s.post(
                f"http://127.0.0.1:{port}/v2/models/mlp/infer", json=body, headers={"X-Request-Id": "rid-42"}
            ) as r:
                status = r.status
        text = srv.metrics.render()
        await runner.cleanup()
        return status, text

    status, metrics = asyncio.run(scenario())
    assert status == 200
    assert len(records) == 1
    rec = records[0]
    assert rec["request_id"] == "rid-42" and rec["model"] == "mlp" and rec["version"] == "7"
    assert rec["inputs"]["input"].shape == (2, 64) and rec["outputs"]["probabilities"].shape == (2, 10)
    assert metric(metrics, "mlinfra_collector_dropped_total", model="mlp") == 1, metrics
