"""Fuzz targets for every parser that takes untrusted bytes (issue 17), run by hypothesis for a bounded number of
examples in `make test`: the OIP JSON decoder (a tensor, and a whole request through the data plane), the
target-condition grammar and the edge manifest. Each may only answer with its own error type — anything else
(a TypeError, a RecursionError, a crash) is a bug the fuzzer found.

Run longer locally: MLINFRA_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/unit/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlinfra.lab.samples import write_types_model
from mlinfra_edge.condition import ConditionError, parse
from mlinfra_edge.manifest import ManifestError, parse_manifest
from mlinfra_scoring.dataplane import DataPlane
from mlinfra_scoring.metrics import Metrics
from mlinfra_scoring.models import OIP_TO_NUMPY, RequestError, TensorSpec, decode_input
from mlinfra_scoring.repository import ModelRepository, ModelSpec

EXAMPLES = int(os.environ.get("MLINFRA_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=40,
)
shapes = st.lists(st.integers(min_value=-3, max_value=5), max_size=4) | json_values
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "input"]) | json_values,
        "shape": shapes,
        "datatype": st.sampled_from(sorted(OIP_TO_NUMPY)) | json_values,
        "data": st.lists(json_scalars, max_size=12) | json_values,
        "parameters": json_values,
    },
)


@FUZZ
@given(datatype=st.sampled_from(sorted(OIP_TO_NUMPY)), tensor=tensors | json_values)
def test_fuzz_oip_tensor_decoder(datatype: str, tensor: object) -> None:
    spec = TensorSpec("x", datatype, [-1, 2])
    try:
        arr = decode_input(spec, tensor)
    except RequestError as e:
        assert 400 <= e.status < 500
        return
    assert isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.shape[1] == 2


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> DataPlane:
    d = tmp_path_factory.mktemp("fuzz")
    repo = ModelRepository(["CPUExecutionProvider"], 1)
    dp = DataPlane(repo, Metrics(), io.StringIO())
    dp.load([ModelSpec(str(write_types_model(Path(d) / "t.onnx")), "types")], None, ["CPUExecutionProvider"])
    assert dp.ready
    return dp


requests_ = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(
            tensors.map(lambda t: {**t, "name": "x_" + str(t.get("name", "fp32"))[:6]})
            | st.sampled_from(sorted(OIP_TO_NUMPY)).map(
                lambda dt: {"name": f"x_{dt.lower()}", "shape": [1, 2], "datatype": dt, "data": [1, 0]}
            ),
            max_size=7,
        )
        | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": json_values}), max_size=3) | json_values,
        "id": json_values,
        "parameters": json_values,
    },
)


@FUZZ
@given(body=requests_ | json_values)
def test_fuzz_inference_requests_through_the_data_plane(plane: DataPlane, body: object) -> None:
    try:
        resp, _ = asyncio.run(plane.infer(plane.repository.get("types"), body, "fuzz", {}))
    except RequestError as e:
        assert 400 <= e.status < 500, e
        return
    json.dumps(resp, default=lambda o: o.tolist())  # the response encodes


TOKENS = [*"()*,='\" \tabcxyz.01", "AND ", "OR ", "NOT ", "IN ", "tags.", "deviceId", "capabilities."]
conditions = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)


@FUZZ
@given(text=conditions | st.text(max_size=300))
def test_fuzz_target_conditions(text: str) -> None:
    try:
        cond = parse(text)
    except ConditionError:
        return
    assert isinstance(cond.matches({"tags": {"a": "x"}, "deviceId": "d"}), bool)


@FUZZ
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_edge_manifests(payload: bytes) -> None:
    try:
        parse_manifest(payload)
    except ManifestError:
        return


@FUZZ
@given(
    name=json_values,
    models=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(max_size=12) | json_values,
                "version": st.integers() | json_values,
                "sha256": st.sampled_from(["a" * 64]) | json_values,
                "files": st.lists(
                    st.fixed_dictionaries(
                        {
                            "path": st.text(max_size=20),
                            "url": st.text(max_size=20),
                            "sha256": st.just("b" * 64),
                            "size": st.integers(),
                        }
                    ),
                    max_size=3,
                )
                | json_values,
            }
        ),
        max_size=3,
    ),
    condition=conditions,
)
def test_fuzz_edge_manifests_shaped_like_real_ones(name: object, models: list, condition: str) -> None:
    doc = {"name": name, "generation": "g", "priority": 1, "target_condition": condition, "models": models}
    try:
        dep = parse_manifest(json.dumps(doc).encode())
    except ManifestError:
        return
    for a in dep.models:  # what got through is safe to join to a path
        for f in a.files:
            assert not f["path"].startswith("/") and ".." not in f["path"].split("/")
