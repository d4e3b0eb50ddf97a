"""Quantization for FpgaEndpoint: FP32 ONNX → INT8 with onnxruntime.quantization, deterministically, and the
accuracy gate that compares the two on validation data.

- ``static`` (the default): INT8 weights and activations in QDQ format — the form FPGA/NPU toolchains such as
  Vitis AI take — calibrated (MinMax) on the given rows; ``per_channel`` for weights.
- ``dynamic``: INT8 weights, activations quantized at run time (no calibration data needed; MatMul/Gemm-heavy models).

Same model + same data + same settings → the same bytes (checked by a test), so an unchanged stack shows no diff.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.errors import QuantizeError
from mlinfra.rows import load_rows  # noqa: F401  (calibration and validation rows)


def input_spec(model_path: Path) -> tuple[str, list[int], str]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantizeError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): FpgaEndpoint quantizes "
            "single-input models"
        )
    t = inputs[0].type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise QuantizeError(f"input {inputs[0].name!r} is not FP32: quantize an FP32 model")
    return inputs[0].name, shape, onnx.TensorProto.DataType.Name(t.elem_type)


def check_rows(rows: np.ndarray, shape: list[int], name: str, what: str) -> np.ndarray:
    """ROWS must fit the input's shape after its batch dimension."""
    want = shape[1:]
    got = list(rows.shape[1:])
    if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=False)):
        raise QuantizeError(
            f"{what} rows have shape {got} each, but model input {name!r} expects {shape} (batch first): fix the "
            "file's columns"
        )
    if not np.all(np.isfinite(rows)):
        raise QuantizeError(f"{what} has NaN or infinite values: clean the file")
    return rows.astype(np.float32)


def check_ops(model_path: Path, method: str) -> list[str]:
    """Fail, naming the operators, when the method can quantize none of them (e.g. a scikit-learn
    LogisticRegression exported as ai.onnx.ml.LinearClassifier). Operators it cannot quantize next to ones it can
    stay in FP32 (onnxruntime leaves them as they are)."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    m = onnx.load(str(model_path), load_external_data=False)
    ops = sorted(
        {
            (n.domain if n.domain not in ("", "ai.onnx") else "")
            + ("." if n.domain not in ("", "ai.onnx") else "")
            + n.op_type
            for n in m.graph.node
        }
    )
    supported = set(IntegerOpsRegistry) if method == "dynamic" else set(QDQRegistry) | set(QLinearOpsRegistry)
    if not {o for o in ops if "." not in o} & supported:
        raise QuantizeError(
            f"{method} quantization cannot handle operator(s) {', '.join(ops)}: none of them is quantizable "
            f"({', '.join(sorted(supported)[:8])}, …). Export the model with standard ONNX operators (e.g. skl2onnx "
            "of an MLP gives MatMul/Gemm), or deploy it unquantized with CloudEndpoint"
        )
    return ops


class _Reader:
    """CalibrationDataReader over fixed rows, in order (deterministic)."""

    def __init__(self, name: str, rows: np.ndarray, batch: int = 32):
        self.batches = [{name: rows[i : i + batch]} for i in range(0, len(rows), batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def quantize(
    fp32: Path, out: Path, method: str, per_channel: bool, calibration: np.ndarray | None, input_name: str
) -> None:
    import logging

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    check_ops(fp32, method)
    root = logging.getLogger()
    level = root.level
    root.setLevel(
        logging.ERROR
    )  # onnxruntime's "consider pre-processing" advice, once per call, is noise here
    with tempfile.TemporaryDirectory(prefix="mlinfra-quantize-") as tmp:
        # onnxruntime writes its augmented calibration model next to the output unless told otherwise
        staged = Path(tmp) / "model.int8.onnx"
        try:
            if method == "dynamic":
                quantize_dynamic(str(fp32), str(staged), per_channel=per_channel, weight_type=QuantType.QInt8)
            else:
                assert calibration is not None
                quantize_static(
                    str(fp32),
                    str(staged),
                    _Reader(input_name, calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                )
        except Exception as e:  # onnxruntime's own message names the node
            raise QuantizeError(
                f"onnxruntime.quantization failed ({method}): {type(e).__name__}: {e}"
            ) from None
        finally:
            root.setLevel(level)
        _normalize(staged, out)


def _normalize(src: Path, dst: Path) -> None:
    """Drop what differs between identical runs (producer version strings are stable; metadata is not)."""
    import onnx

    m = onnx.load(str(src))
    del m.metadata_props[:]
    m.doc_string = ""
    dst.write_bytes(m.SerializeToString(deterministic=True))


@dataclass
class Accuracy:
    metric: str  # "accuracy" (labels) or "argmax agreement"
    fp32: float
    quantized: float
    mae: float
    rows: int

    @property
    def drop(self) -> float:
        return self.fp32 - self.quantized

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "fp32": self.fp32,
            "quantized": self.quantized,
            "drop": self.drop,
            "mae": self.mae,
            "rows": self.rows,
        }


def _scores(model: Path, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {name: x})
    floats = [o for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f" and o.ndim == 2]
    if not floats:
        raise QuantizeError("the model has no 2-D float output (scores/probabilities) to compare")
    return floats[-1]


def accuracy(fp32: Path, quantized: Path, name: str, x: np.ndarray, labels: np.ndarray | None) -> Accuracy:
    a, b = _scores(fp32, name, x), _scores(quantized, name, x)
    mae = float(np.mean(np.abs(a - b)))
    if labels is not None:
        y = labels.reshape(-1).astype(np.int64)
        if len(y) != len(x):
            raise QuantizeError(f"validation labels have {len(y)} rows but the validation data has {len(x)}")
        return Accuracy(
            "accuracy",
            float(np.mean(a.argmax(1) == y)),
            float(np.mean(b.argmax(1) == y)),
            mae,
            len(x),
        )
    return Accuracy("argmax agreement", 1.0, float(np.mean(a.argmax(1) == b.argmax(1))), mae, len(x))
