"""Scoring scripts record data with mlinfra_scoring.collection: against the real server with a folder sink —
correlated records, objects it cannot encode dropped and counted while the request succeeds, the raw
request/response when a script records nothing, and a no-op without a DataCollection."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra_scoring.collection import Collector, CorrelationContext
from tests.scoring_helpers import Server, start_server

SDK_SCRIPT = """
import json, os
import numpy as np
import onnxruntime as ort
from mlinfra_scoring.collection import Collector

inputs = Collector(name="model_inputs")
outputs = Collector(name="model_outputs")
extras = Collector("extras", on_error=lambda e: print(json.dumps({"event": "collect_error", "error": str(e)}), flush=True))
session = None

def init():
    global session
    session = ort.InferenceSession(os.environ["MLINFRA_MODEL_PATH"], providers=["CPUExecutionProvider"])

def run(raw):
    body = json.loads(raw)
    rows = np.asarray(body["data"], dtype=np.float32)
    context = inputs.collect(rows)
    probabilities = session.run(None, {"input": rows})[0]
    outputs.collect({"label": probabilities.argmax(axis=1), "p": probabilities}, context)
    if body.get("odd"):
        extras.collect(object())  # cannot be encoded: dropped and counted, the request still answers
    rows[:] = 0  # the script reuses its buffer: what was collected is a copy
    return {"label": probabilities.argmax(axis=1).tolist()}
"""

PLAIN_SCRIPT = """
import json

def run(raw):
    return {"echo": json.loads(raw)["data"]}
"""


def records(sink: Path, count: int, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [
            json.loads(ln) for f in sorted(sink.rglob("*.jsonl")) for ln in f.read_text().splitlines() if ln
        ]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(found)} records in {sink}, expected {count}: {found[:3]}")


def serve(tmp: Path, script: str, sink: Path | None) -> Server:
    (tmp / "score.py").write_text(textwrap.dedent(script))
    env: dict[str, str] = {}
    if sink is not None:
        env["MLINFRA_SERVE_COLLECT"] = json.dumps(
            {"sink": f"file://{sink}", "endpoint": "ep", "deployment": "blue", "flush_s": 0.1,
             "spool_dir": str(tmp / "spool")}
        )  # fmt: skip
    return start_server(
        tmp,
        "--model",
        str(write_mlp(tmp / "mlp.onnx")),
        "--name",
        "mlp",
        "--script",
        str(tmp / "score.py"),
        env=env,
    )


def test_a_script_records_correlated_inputs_and_outputs(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    srv = serve(tmp_path, SDK_SCRIPT, sink)
    try:
        rows = np.random.default_rng(0).normal(size=(2, 64)).round(3)
        for i in range(3):
            status, body, _ = srv.request(
                "POST", "/score", {"data": rows.tolist(), "odd": i == 2}, headers={"X-Request-Id": f"sdk-{i}"}
            )
            assert status == 200 and len(body["label"]) == 2, body
        got = records(sink, 6)
        assert sorted((r["request_id"], r["collection"]) for r in got) == sorted(
            (f"sdk-{i}", c) for i in range(3) for c in ("model_inputs", "model_outputs")
        )
        first = next(r for r in got if r["request_id"] == "sdk-0" and r["collection"] == "model_inputs")
        assert first["correlation_id"] == "sdk-0" and first["model"] == "mlp" and first["version"] == "1"
        np.testing.assert_allclose(first["data"], rows.astype(np.float32), rtol=1e-6)  # a copy, not the zeros
        out = next(r for r in got if r["request_id"] == "sdk-0" and r["collection"] == "model_outputs")
        assert set(out["data"]) == {"label", "p"} and len(out["data"]["p"]) == 2
        assert all(
            name.parent.relative_to(sink).parts[:4] == ("ep", "blue", "mlp", "1")
            for name in sink.rglob("*.jsonl")
        )
        _, metrics, _ = srv.request("GET", "/metrics")
        assert re.search(r'mlinfra_collector_dropped_total\{model="mlp"\} 1(\.0)?$', metrics, re.M), metrics
    finally:
        assert srv.stop() == 0
    log = srv.log.read_text()
    assert "collector extras: cannot record an object of type builtins.object; the record was dropped" in log


def test_a_script_that_records_nothing_gets_its_request_and_response_captured(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    srv = serve(tmp_path, PLAIN_SCRIPT, sink)
    try:
        status, body, _ = srv.request("POST", "/score", {"data": [1, 2]}, headers={"X-Request-Id": "raw-1"})
        assert status == 200 and body == {"echo": [1, 2]}
        got = {r["collection"]: r for r in records(sink, 2)}
        assert got["request"]["data"] == {"data": [1, 2]} and got["response"]["data"] == {"echo": [1, 2]}
        assert {r["request_id"] for r in got.values()} == {"raw-1"}
    finally:
        assert srv.stop() == 0


def test_without_a_data_collection_the_sdk_does_nothing(tmp_path: Path) -> None:
    srv = serve(tmp_path, SDK_SCRIPT, None)
    try:
        status, body, _ = srv.request("POST", "/score", {"data": [[0.0] * 64]})
        assert status == 200 and body == {"label": [body["label"][0]]}
    finally:
        assert srv.stop() == 0
    # In-process (a notebook, a unit test of a script): a context back, nothing recorded, nothing raised.
    context = Collector("model_inputs").collect(np.ones(3), correlation_id="abc")
    assert context == CorrelationContext("abc") and context.get_id() == "abc"


@pytest.mark.parametrize("name", ["", "model inputs", "x" * 65, "../etc", 7])
def test_collector_names_are_checked(name) -> None:
    with pytest.raises(ValueError, match="use 1-64 letters, digits, '_' or '-'"):
        Collector(name)
