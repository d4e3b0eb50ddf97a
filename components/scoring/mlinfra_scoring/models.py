"""Loaded models: ONNX sessions, their signatures, and OIP tensor validation/conversion."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# OIP datatype -> numpy dtype. BYTES are object arrays of bytes/str.
OIP_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(float16)": "FP16",
    "tensor(int16)": "INT16",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
}
NUMPY_TO_OIP = {np.dtype(v).name: k for k, v in OIP_TO_NUMPY.items() if k != "BYTES"}
_OIP_OF_DTYPE = {np.dtype(v): k for k, v in OIP_TO_NUMPY.items() if k != "BYTES"}


def oip_datatype(dtype: np.dtype) -> str | None:
    """The OIP datatype of a numpy dtype (None: none). A dict lookup by dtype first: `dtype.name` costs a
    microsecond on every response."""
    return _OIP_OF_DTYPE.get(dtype) or NUMPY_TO_OIP.get(dtype.name)


class RequestError(Exception):
    """A request the client must fix; becomes HTTP `status` with a JSON {"error": message}."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        """Seconds a client should wait before trying again (HTTP Retry-After), for a request refused under load."""


@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 = dynamic

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass
class LoadedModel:
    name: str
    version: str
    path: Path
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    session: Any = None
    ready: bool = False
    max_batch_size: int = 1
    """Rows the server merges concurrent requests into (dynamic batching; 1: each request runs alone)."""

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "parameters": {"execution_providers": self.providers, "max_batch_size": self.max_batch_size},
        }

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or [o.name for o in self.outputs]
        results = self.session.run(names, feeds)
        return dict(zip(names, results, strict=True))


def resolve_model_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.rglob("*.onnx"))
        if len(found) == 1:
            return found[0]
        raise ValueError(f"model folder {path} holds {len(found)} .onnx files; expected exactly one")
    raise ValueError(f"model path {path} does not exist")


def load_onnx(
    name: str, version: str, path: Path, providers: list[str] | None = None, threads: int = 1
) -> LoadedModel:
    import onnxruntime as ort

    model_file = resolve_model_file(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 1 on small machines: default threading triples batch p99
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or [
        "CPUExecutionProvider"
    ]
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    session = ort.InferenceSession(str(model_file), sess_options=opts, providers=wanted)

    def spec(arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        return TensorSpec(arg.name, ORT_TO_OIP.get(arg.type, arg.type), shape)

    return LoadedModel(
        name=name,
        version=version,
        path=model_file,
        inputs=[spec(i) for i in session.get_inputs()],
        outputs=[spec(o) for o in session.get_outputs()],
        providers=session.get_providers(),
        session=session,
        ready=True,
    )


def decode_input(spec: TensorSpec, tensor: Any) -> np.ndarray:
    """One OIP request input -> a numpy array of the spec's shape, or RequestError naming what is wrong."""
    shape = check_tensor(spec, tensor)
    if "data" not in tensor:
        raise RequestError(f"input {spec.name!r} has no data")
    count = math.prod(shape)
    data = tensor["data"]
    return _decode_json(spec, shape, count, data)


def check_tensor(spec: TensorSpec, tensor: Any) -> list[int]:
    """An input's name-independent header (datatype, shape) against the model's SPEC → its shape."""
    if not isinstance(tensor, dict):
        raise RequestError(f"input {spec.name!r}: expected an object with name, shape, datatype and data")
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise RequestError(
            f"input {spec.name!r} has datatype {datatype!r}; the model expects {spec.datatype}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise RequestError(
            f"input {spec.name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) != len(spec.shape) or any(s not in (-1, d) for s, d in zip(spec.shape, shape, strict=True)):
        raise RequestError(
            f"input {spec.name!r} has shape {shape}; the model expects {spec.shape} (-1 = any)"
        )
    return shape


def _decode_json(spec: TensorSpec, shape: list[int], count: int, data: Any) -> np.ndarray:
    dtype = OIP_TO_NUMPY[spec.datatype]
    try:
        arr = (
            np.array(data, dtype=object) if spec.datatype == "BYTES" else _strict(spec, data, np.dtype(dtype))
        )
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            f"input {spec.name!r}: data is not a rectangular list of {spec.datatype} values"
        ) from None
    if arr.size != count:
        raise RequestError(f"input {spec.name!r}: data has {arr.size} values; shape {shape} needs {count}")
    if arr.dtype == object and spec.datatype != "BYTES":
        raise RequestError(f"input {spec.name!r}: data is not a rectangular list of {spec.datatype} values")
    return arr.reshape(shape)


def _strict(spec: TensorSpec, data: Any, want: np.dtype) -> np.ndarray:
    """Numbers as the protocol has them: no null, no strings, no value the datatype cannot hold, no fraction in an
    integer tensor — each a 400 naming the first offending element (flat index). Vectorized: numpy infers the JSON
    values' type once, the checks are array operations."""
    raw = np.asarray(data)
    kind = raw.dtype.kind
    if spec.datatype == "BOOL":
        if kind != "b":
            _reject(spec, data, lambda v: not isinstance(v, bool), "is not true or false")
        return raw
    if kind not in "iuf":  # strings, null, mixed or huge integers (object)
        _reject(
            spec,
            data,
            lambda v: (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or (isinstance(v, int) and not -(2**63) <= v < 2**64)
            ),
            "is not a number the datatype can hold",
        )
    if raw.size == 0:
        return raw.astype(want)
    if want.kind in "iu":
        if kind == "f":
            frac = raw != np.trunc(raw)
            if frac.any():
                i = int(np.flatnonzero(frac)[0])
                raise RequestError(
                    f"input {spec.name!r}: data[{i}] = {raw.ravel()[i].item()!r} is not an integer ({spec.datatype})"
                )
        lo, hi = np.iinfo(want).min, np.iinfo(want).max
    elif kind == "f" and want.itemsize < 8:  # FP64 holds any JSON number; integers fit every float type
        # JSON has no NaN or ±Inf (orjson refuses them), so a value out of range is one that becomes ±Inf in the
        # narrower type: one reduction over the converted values finds out (a float64 sum is finite only if every
        # value is; a sum that overflows goes the long way).
        out = raw.astype(want)
        if math.isfinite(np.add.reduce(out, axis=None, dtype=np.float64)):
            return out
        lo, hi = -np.finfo(want).max, np.finfo(want).max
    else:
        return raw.astype(want, copy=False)
    if np.minimum.reduce(raw, axis=None) < lo or np.maximum.reduce(raw, axis=None) > hi:  # no temporaries
        outside = (raw < lo) | (raw > hi)
        i = int(np.flatnonzero(outside)[0])
        raise RequestError(
            f"input {spec.name!r}: data[{i}] = {raw.ravel()[i].item()!r} is out of range for {spec.datatype}"
        )
    return raw.astype(want, copy=False)


def _flat(data: Any) -> Iterator[Any]:
    """The JSON values in order (nested lists flattened), as the client sent them."""
    if isinstance(data, list):
        for x in data:
            yield from _flat(x)
    else:
        yield data


def _reject(spec: TensorSpec, data: Any, bad: Any, what: str) -> None:
    for i, v in enumerate(_flat(data)):
        if bad(v):
            text = repr(v)
            raise RequestError(
                f"input {spec.name!r}: data[{i}] = {text[:40]}{'…' if len(text) > 40 else ''} {what} "
                f"({spec.datatype})"
            )
    raise RequestError(f"input {spec.name!r}: data is not a rectangular list of {spec.datatype} values")


def non_finite(arr: np.ndarray, values: list[Any] | None = None) -> tuple[int, int]:
    """(how many NaN/±Inf values ARR holds, the flat index of the first; -1 when none). JSON has no NaN or Inf.
    VALUES: ARR's flat values as a list, when the caller has made it already."""
    kind = arr.dtype.kind
    if kind not in "fc":
        return 0, -1
    # One pass in the usual case: a sum is finite only if every value is (an overflow goes the long way). Small
    # arrays (or a list already made) are summed as a list, which costs less than a numpy reduction's set-up.
    if values is None and arr.size <= 256:
        values = arr.ravel().tolist()
    if kind == "f" and math.isfinite(
        sum(values) if values is not None else np.add.reduce(arr, axis=None, dtype=np.float64)
    ):
        return 0, -1
    bad = ~np.isfinite(arr.ravel())
    if not bad.any():  # finite values whose sum overflowed
        return 0, -1
    return int(bad.sum()), int(np.argmax(bad))


def encode_output(name: str, arr: np.ndarray) -> dict[str, Any]:
    """One OIP output tensor. NaN and ±Inf (which JSON cannot carry) are sent as null and reported in the output's
    ``parameters`` (``non_finite_values``, ``first_non_finite_index``) — never silently."""
    out: dict[str, Any] = {"name": name, "shape": list(arr.shape)}
    if arr.dtype == object or arr.dtype.kind in "SU":
        out["datatype"] = "BYTES"
        out["data"] = [x.decode() if isinstance(x, bytes) else str(x) for x in arr.ravel().tolist()]
        return out
    out["datatype"] = oip_datatype(arr.dtype) or "FP32"
    data = arr.ravel().tolist()  # the list JSON needs anyway: the finiteness check sums it, unless it is long
    count, first = non_finite(arr, data if arr.size <= 4096 else None)
    if count:
        flat = arr.ravel()
        ok = np.isfinite(flat)
        out["data"] = [v if good else None for v, good in zip(flat.tolist(), ok.tolist(), strict=True)]
        out["parameters"] = {"non_finite_values": count, "first_non_finite_index": first}
    else:
        out["data"] = data
    return out


def model_dir_env(model: LoadedModel) -> dict[str, str]:
    """Environment a user scoring script sees (Azure ML's AZUREML_MODEL_DIR convention)."""
    return {
        "AZUREML_MODEL_DIR": str(model.path.parent),
        "MLINFRA_MODEL_PATH": str(model.path),
        "MLINFRA_MODEL_NAME": model.name,
        "MLINFRA_MODEL_VERSION": model.version,
        **{k: v for k, v in os.environ.items() if k.startswith("MLINFRA_")},
    }
