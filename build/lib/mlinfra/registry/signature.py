"""Validation and signatures of model files (ONNX first; anything else is stored as opaque files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlinfra.errors import InvalidModel

# ONNX TensorProto element types -> Open Inference Protocol datatypes.
ONNX_TO_OIP = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


def onnx_file(path: Path) -> Path:
    """The .onnx file of a model path (the file itself, or the single .onnx file in a folder)."""
    if path.is_file():
        return path
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise InvalidModel(
            f"{path} is a folder with {len(found)} .onnx files; an ONNX model folder must hold exactly one "
            "(or pass framework='custom' to store the folder as opaque files)"
        )
    return found[0]


def _tensor_spec(value_info: Any) -> dict[str, Any]:
    t = value_info.type.tensor_type
    shape = (
        [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim] if t.HasField("shape") else []
    )
    return {
        "name": value_info.name,
        "datatype": ONNX_TO_OIP.get(t.elem_type, f"ONNX_TYPE_{t.elem_type}"),
        "shape": shape,
    }


def onnx_signature(path: Path) -> dict[str, Any]:
    """Validate an ONNX model and return its signature: inputs/outputs with OIP datatypes and shapes (-1 for
    dynamic dimensions). Raises InvalidModel with the checker's reason."""
    import onnx

    model_path = onnx_file(path)
    if model_path.stat().st_size == 0:
        raise InvalidModel(f"{model_path} is empty (0 bytes): point path at the exported model file")
    try:
        onnx.checker.check_model(str(model_path))
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # onnx raises several types (DecodeError, ValidationError, ...)
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InvalidModel(
            f"{model_path} is not a valid ONNX model ({reason}); re-export it, or pass framework='custom' to "
            "store it as opaque files"
        ) from None
    initializers = {i.name for i in model.graph.initializer}
    return {
        "inputs": [_tensor_spec(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_tensor_spec(v) for v in model.graph.output],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }
