"""FpgaEndpoint on the real engine: quantize at `up`, gate on accuracy, register the INT8 version with lineage,
serve it through a CloudEndpoint on local Docker (CPU fallback, said plainly), no change on a second `up`; a
too-strict gate fails before anything is deployed; Kubernetes pods request the accelerator."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.endpoints.local import find_containers
from mlinfra.lab.samples import write_mlp, write_sklearn_classifier
from mlinfra.registry import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sk(tmp_path_factory) -> dict:
    return write_sklearn_classifier(tmp_path_factory.mktemp("sk"))


def _infer(uri: str, key: str, model: str, rows: np.ndarray) -> dict:
    base = uri.rsplit("/score", 1)[0]
    body = {
        "inputs": [
            {"name": "X", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    req = urllib.request.Request(
        f"{base}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in json.loads(r.read())["outputs"]}


def test_quantize_gate_register_and_serve(local_services, sk, program, backend, tmp_path) -> None:
    local_services("docker", "registry", "python-base", "router-base")
    reg_uri = f"file://{tmp_path / 'registry'}"
    config = {
        "model": str(sk["model"]),
        "registry": reg_uri,
        "calibration": str(sk["calibration"]),
        "validation": str(sk["validation"]),
        "labels": str(sk["labels"]),
    }
    st = local_stack(program("fpga-endpoint"), "local", backend, config)
    try:
        res = st.up(on_output=lambda _l: None)
        out = {k: v.value for k, v in res.outputs.items()}
        assert out["quantized_model_name"] == "classifier-int8" and out["quantized_model_version"] == 1
        assert out["accuracy_fp32"] >= 0.95 and out["accuracy_fp32"] - out["accuracy_quantized"] <= 0.01
        assert 0 < out["size_ratio"] < 1
        # Lineage on the registered INT8 version.
        reg = ModelRegistry(reg_uri)
        mv = reg.resolve("classifier-int8:1")
        assert mv.properties["derived_from"] == "classifier:1"
        assert mv.properties["quantization"] == "static int8 qdq"
        assert len(mv.properties["calibration_sha256"]) == 64
        assert mv.tags["precision"] == "int8"
        assert "endpoint:fpga-local" in reg.users("classifier-int8", 1)
        # Scores through the endpoint within tolerance of the FP32 model.
        x = np.load(sk["validation"])[:32]
        got = _infer(out["scoring_uri"], out["primary_key"], "classifier-int8", x)
        want = ort.InferenceSession(str(sk["model"]), providers=["CPUExecutionProvider"]).run(None, {"X": x})
        assert np.mean(got["label"].reshape(-1) == want[0].reshape(-1)) >= 0.95
        assert np.max(np.abs(got["probabilities"] - want[1])) < 0.05
        # No FPGA here: the server asked for VitisAI first, runs on CPU, and says so.
        base = out["scoring_uri"].rsplit("/score", 1)[0]
        req = urllib.request.Request(
            f"{base}/v2/models/classifier-int8", headers={"Authorization": f"Bearer {out['primary_key']}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
        replica = next(
            c["name"] for c in find_containers("fpga-local") if c["labels"].get("mlinfra.io/deployment")
        )
        import subprocess

        logs = subprocess.run(["/usr/bin/docker", "logs", replica], capture_output=True, text=True).stdout
        assert "no accelerator provider available: running on CPU" in logs
        # Deterministic: a second up is no change (same inputs → same INT8 bytes).
        res = st.up(on_output=lambda _l: None)
        assert set(res.summary.resource_changes) == {"same"}, res.summary.resource_changes
        # Drift: the INT8 bytes deleted from the registry → refresh reports it → up quantizes again and restores
        # the very same bytes under version 1 (no new version) → nothing left to do.
        int8 = reg.get("classifier-int8", 1)
        blob = tmp_path / "registry" / "blobs" / "sha256" / int8.files[0]["sha256"]
        blob.unlink()
        r = st.refresh(on_output=lambda _l: None)
        assert "classifier-int8:1: drift: file classifier-int8.onnx missing" in r.stdout, r.stdout[-1500:]
        res = st.up(on_output=lambda _l: None)
        assert res.summary.resource_changes.get("update", 0) >= 1
        assert reg.check_version("classifier-int8", 1) == "present" and reg.versions("classifier-int8") == [1]
        assert res.outputs["quantized_model_version"].value == 1
        assert set(st.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}
    finally:
        st.destroy(on_output=lambda _l: None)


def test_too_strict_gate_fails_before_anything_is_deployed(
    local_services, program, backend, tmp_path
) -> None:
    """A random-weight MLP's near-uniform outputs flip under INT8: its argmax agreement drops well past 0.1 %."""
    local_services("docker", "registry", "python-base", "router-base")
    model = write_mlp(tmp_path / "mlp.onnx")
    rows = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    np.save(tmp_path / "cal.npy", rows)
    reg_uri = f"file://{tmp_path / 'registry'}"
    cfg = {
        "model": str(model),
        "registry": reg_uri,
        "calibration": str(tmp_path / "cal.npy"),
        "max_accuracy_drop": "0.001",
    }
    # write_mlp's input is named "input"; the program is shared with the sklearn test, which only matters for scoring.
    st = local_stack(program("fpga-endpoint"), "strict", backend, cfg)
    with pytest.raises(auto.CommandError) as err:
        st.up(on_output=lambda _l: None)
    msg = str(err.value)
    assert "accuracy gate failed: argmax agreement drops from 1.0000 (FP32) to" in msg, msg[-2000:]
    assert "max_accuracy_drop=0.001" in msg and "Nothing was registered or deployed" in msg
    assert ModelRegistry(reg_uri).versions("mlp-int8") == []
    assert find_containers("fpga-strict") == []
    st.destroy(on_output=lambda _l: None)


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("wrong_columns", "calibration data rows have shape [8] each, but model input 'X' expects [-1, 16]"),
        ("empty", "has no rows"),
        ("linear", "cannot handle operator(s)"),
    ],
)
def test_bad_quantization_input_fails_before_deploying(
    local_services, sk, program, backend, tmp_path, setup, needle
) -> None:
    local_services("docker", "registry", "python-base", "router-base")
    cfg = {
        "model": str(sk["model"]),
        "registry": f"file://{tmp_path / 'registry'}",
        "calibration": str(sk["calibration"]),
    }
    if setup == "wrong_columns":
        np.save(tmp_path / "c.npy", np.zeros((10, 8), dtype=np.float32))
        cfg["calibration"] = str(tmp_path / "c.npy")
    elif setup == "empty":
        np.save(tmp_path / "c.npy", np.zeros((0, 16), dtype=np.float32))
        cfg["calibration"] = str(tmp_path / "c.npy")
    else:  # a scikit-learn LogisticRegression exports as ai.onnx.ml.LinearClassifier: nothing to quantize
        from skl2onnx import to_onnx
        from sklearn.linear_model import LogisticRegression

        x = np.load(sk["calibration"])
        y = np.arange(len(x)) % 2
        onx = to_onnx(LogisticRegression().fit(x, y), x[:1], options={"zipmap": False}, target_opset=17)
        (tmp_path / "linear.onnx").write_bytes(onx.SerializeToString())
        cfg["model"] = str(tmp_path / "linear.onnx")
    st = local_stack(program("fpga-endpoint"), f"bad-{setup}", backend, cfg)
    with pytest.raises(auto.CommandError) as err:
        st.up(on_output=lambda _l: None)
    assert needle in str(err.value), str(err.value)[-2000:]
    assert find_containers(f"fpga-bad-{setup}") == []
    st.destroy(on_output=lambda _l: None)


def test_kubernetes_pods_request_the_accelerator(
    sk, program, backend, kube_cluster, tmp_path, local_services
) -> None:
    local_services("registry", "python-base")
    cfg = {
        "model": str(sk["model"]),
        "registry": f"file://{tmp_path / 'registry'}",
        "calibration": str(sk["calibration"]),
        "kubeconfig": str(kube_cluster.kubeconfig),
    }
    # kwok's fake nodes advertise no xilinx.com/fpga: give one node the resource and the label, as a device plugin would.
    node = kube_cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout
    kube_cluster.kubectl("label", "node", node, "mlinfra.io/accelerator=alveo-u250", "--overwrite")
    patch = json.dumps(
        {"status": {"capacity": {"xilinx.com/fpga": "2"}, "allocatable": {"xilinx.com/fpga": "2"}}}
    )
    kube_cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p", patch)
    st = local_stack(program("fpga-endpoint"), "k8s", backend, cfg)
    try:
        st.up(on_output=lambda _l: None)
        dep = json.loads(
            kube_cluster.kubectl("get", "deploy/fpga-k8s-blue-a", "-n", "fpga", "-o", "json").stdout
        )
        pod = dep["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["xilinx.com/fpga"] == "1"
        assert pod["nodeSelector"] == {"mlinfra.io/accelerator": "alveo-u250"}
        assert {"key": "xilinx.com/fpga", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MLINFRA_SERVE_PROVIDERS"] == "VitisAIExecutionProvider,CPUExecutionProvider"
        assert dep["status"].get("readyReplicas") == 1  # scheduled onto the node with the device
        assert dep["metadata"]["labels"]["mlinfra.io/model"] == "classifier-int8"
    finally:
        st.destroy(on_output=lambda _l: None)
