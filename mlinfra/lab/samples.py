"""Small, deterministic ONNX models for examples, tests and benchmarks (no training framework needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def mlp_model(
    inputs: int = 64,
    hidden: int = 256,
    outputs: int = 10,
    seed: int = 0,
    opset: int = 17,
    batch: int | str = "batch",
):
    """An MLP inputs→hidden→outputs (ReLU, then softmax) as an onnx.ModelProto; same seed → same bytes. BATCH: the
    first axis, a name (dynamic, the default) or a fixed size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.01).astype(np.float32)
    w2 = (rng.standard_normal((hidden, outputs)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (rng.standard_normal(outputs) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"]),
        helper.make_node("Add", ["h4", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, inputs])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, outputs])],
        initializer=[
            numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mlinfra")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_mlp(path: Path | str, **kwargs: Any) -> Path:
    """Write mlp_model(**kwargs) to PATH (parents created) and return it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp_model(**kwargs), str(path))
    return path


def types_model():
    """An ONNX model with one Identity per OIP datatype mlinfra serves (FP32, FP64, INT32, INT64, BOOL, BYTES):
    input `x_<type>` → output `y_<type>`, each of shape [batch, 2]."""
    import onnx
    from onnx import TensorProto, helper

    types = {
        "fp32": TensorProto.FLOAT,
        "fp64": TensorProto.DOUBLE,
        "int32": TensorProto.INT32,
        "int64": TensorProto.INT64,
        "bool": TensorProto.BOOL,
        "bytes": TensorProto.STRING,
    }
    nodes = [helper.make_node("Identity", [f"x_{t}"], [f"y_{t}"]) for t in types]
    graph = helper.make_graph(
        nodes,
        "types",
        [helper.make_tensor_value_info(f"x_{t}", et, ["batch", 2]) for t, et in types.items()],
        [helper.make_tensor_value_info(f"y_{t}", et, ["batch", 2]) for t, et in types.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mlinfra")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_types_model(path: Path | str) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(types_model(), str(path))
    return path


def write_sklearn_classifier(
    folder: Path | str, features: int = 16, classes: int = 4, seed: int = 0
) -> dict[str, Path]:
    """Train a small scikit-learn MLPClassifier on synthetic blobs and convert it to ONNX with skl2onnx (no ZipMap,
    so every operator is a standard one). Writes model.onnx, calibration.npy (256 rows), validation.npy and
    labels.npy (512 held-out rows) into FOLDER and returns their paths. Needs the dev extras (scikit-learn,
    skl2onnx)."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import make_blobs
    from sklearn.neural_network import MLPClassifier

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_blobs(
        n_samples=2000, n_features=features, centers=classes, cluster_std=4.0, random_state=seed
    )
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=seed).fit(x[:1488], y[:1488])
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    paths = {
        "model": folder / "model.onnx",
        "calibration": folder / "calibration.npy",
        "validation": folder / "validation.npy",
        "labels": folder / "labels.npy",
    }
    paths["model"].write_bytes(onx.SerializeToString())
    np.save(paths["calibration"], x[1232:1488])
    np.save(paths["validation"], x[1488:])
    np.save(paths["labels"], y[1488:].astype(np.int64))
    return paths


def scoring_image(
    registry: str, repository: str, model: Path | str, name: str = "mlp", script: Path | None = None
) -> str:
    """Register MODEL as NAME in the model REGISTRY (a URI) and build the scoring image serving it (with SCRIPT, an
    Azure ML-style scoring script, when given) into REPOSITORY on the local registry's default base: its digest
    reference (``host/repo@sha256:…``). For tests and benchmarks."""
    from mlinfra import defaults
    from mlinfra.images.builder import ImageSpec, ModelInput, build_and_push
    from mlinfra.registry import ModelRegistry

    mv, _ = ModelRegistry(registry).register(name, Path(model))
    spec = ImageSpec(
        repository=repository,
        models=[ModelInput(name, mv.version, mv.sha256, registry)],
        base=defaults.base_image_ref(),
        script=script,
    )
    return build_and_push(spec).image_ref
