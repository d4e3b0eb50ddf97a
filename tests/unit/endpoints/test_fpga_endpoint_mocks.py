"""FpgaEndpoint under mocks: the quantized model (its gate inputs hashed by content), its image, and pods that ask
for the accelerator (Kubernetes), with execution providers tried in order and CPU last."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import mlinfra
from mlinfra.errors import QuantizeError
from tests.unit.mocks import install, registered_model, resolve

DIGEST = "sha256:" + "d" * 64
COMPUTED = {
    "-version": {"version": 1.0, "size_bytes": 100.0, "uri": "u"},
    "-int8": {
        "version": 2.0,
        "sha256": "e" * 64,
        "accuracy": {"fp32": 0.91, "quantized": 0.905, "drop": 0.005},
        "size_ratio": 0.3,
    },
    "-image-image": {
        "image_ref": f"127.0.0.1:5000/mlinfra/fpga-image@{DIGEST}",
        "digest": DIGEST,
        "models": [],
    },
}


def _model(tmp_path: Path) -> mlinfra.RegisteredModel:
    return registered_model(tmp_path, "clf")


def _calibration(tmp_path: Path) -> Path:
    p = tmp_path / "calibration.npy"
    np.save(p, np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32))
    return p


def test_quantized_model_image_and_accelerator_pods(tmp_path: Path) -> None:
    mocks = install(COMPUTED)
    calibration = _calibration(tmp_path)

    def build() -> dict:
        model = _model(tmp_path)
        ep = mlinfra.FpgaEndpoint(
            "fpga",
            mlinfra.FpgaEndpointArgs(
                model=model,
                calibration_data=str(calibration),
                quantization=mlinfra.Quantization(method="static"),
                target=mlinfra.Kubernetes(namespace="fpga"),
            ),
        )
        return {"version": ep.quantized_model_version, "drop": ep.accuracy_drop, "ratio": ep.size_ratio}

    outs = resolve(build)
    q = mocks.inputs("fpga-int8")
    assert (
        q["method"] == "static"
        and q["calibration_sha256"] == hashlib.sha256(calibration.read_bytes()).hexdigest()
    )
    assert q["max_accuracy_drop"] == 0.01
    assert outs == {"version": 2, "drop": 0.005, "ratio": 0.3}
    roll = next(
        i for _t, n, i in mocks.created if n.endswith("-rollout")
    )  # the pods are the rollout engine's
    container = next(iter(roll["templates"].values()))["spec"]["containers"][0]
    assert container["resources"]["limits"]["xilinx.com/fpga"] == "1", container["resources"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLINFRA_SERVE_PROVIDERS"] == "VitisAIExecutionProvider,CPUExecutionProvider"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"quantization": mlinfra.Quantization(method="fp16")}, "quantization.method = 'fp16'"),
        ({"max_accuracy_drop": 2}, "max_accuracy_drop = 2 must be a fraction in 0..1"),
        ({"calibration_data": "/nonexistent.npy"}, "calibration_data = '/nonexistent.npy' is not a file"),
        ({"accelerator": mlinfra.Accelerator(resource="fpga", count=1)}, "accelerator 'fpga'"),
    ],
)
def test_bad_input_names_the_value(tmp_path: Path, kw: dict, message: str) -> None:
    mocks = install(COMPUTED)
    calibration = _calibration(tmp_path)

    def build() -> dict:
        model = _model(tmp_path)
        args = {"model": model, "calibration_data": str(calibration), **kw}
        return {"v": mlinfra.FpgaEndpoint("fpga", mlinfra.FpgaEndpointArgs(**args)).quantized_model_version}

    with pytest.raises(QuantizeError) as e:
        resolve(build)
    assert message in str(e.value)
    assert not any(n == "fpga-int8" for _t, n, _i in mocks.created)
