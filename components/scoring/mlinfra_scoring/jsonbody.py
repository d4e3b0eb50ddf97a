"""Large JSON request bodies parsed in C: tensor data becomes a numpy array without Python floats (issue 19).

Parsed by orjson, a 64 x 64 FP32 request is 4,100 Python objects (≈ 150 µs), and numpy then reads the floats one by
one (≈ 100 µs more): half the server's CPU on that workload. simdjson (pysimdjson) parses the document lazily and
copies a homogeneous array of numbers straight into a buffer (`Array.as_buffer`), so a tensor's ``data`` arrives as
a numpy array of its nested shape. The rest of the body is converted to Python as orjson would.

The result is the one orjson gives, except that such ``data`` lists are numpy arrays. Anything else takes the
orjson path, so its answer is the one it always was: a small body, a document that is not an object, duplicate
keys (orjson keeps the last, simdjson the first), data that is not a rectangular array of numbers (strings, null,
booleans, ragged rows, numbers out of range), integer data with a fraction, and invalid JSON.
One leniency: nested rows are checked level by level for equal lengths, but not element by element in the last
level, so a value wrapped in a one-element list there (``[1, [2]]``) is read as its value.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import simdjson
except ImportError:  # pragma: no cover - the images and the dev install have it; a device may not
    simdjson = None  # type: ignore[assignment]

MIN_BYTES = 4096
"""Smaller bodies go to orjson: parsing them costs a few µs either way, and the lazy proxies cost more than they save."""
REUSE_BYTES = 1 << 20
"""Bodies up to this size are parsed by one parser per thread, reused: a new parser sizes its buffers for each
document, which cost as much as the parse itself (a 42 KB body: ≈ 125 µs with a new parser, ≈ 58 µs reused,
2026-12-03). Larger ones get a parser of their own, so no thread keeps a buffer for the largest body it ever saw."""
_parsers = threading.local()


def _parse(raw: bytes) -> Any:
    if len(raw) > REUSE_BYTES:
        return _convert(simdjson.Parser().parse(raw))
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:
        doc = parser.parse(raw)
    except (
        RuntimeError
    ):  # the last document's proxies are still alive (pysimdjson refuses): a parser for this one
        doc = simdjson.Parser().parse(raw)
    return _convert(doc)


# The buffer type a tensor's numbers are read as: doubles for floats (FP16/32 are narrowed and range-checked by
# models.decode_input), 64-bit integers for integers (exact: a double would round values past 2**53).
_KIND = {
    "FP16": "d",
    "FP32": "d",
    "FP64": "d",
    "INT8": "i",
    "INT16": "i",
    "INT32": "i",
    "INT64": "i",
    "UINT8": "i",
    "UINT16": "i",
    "UINT32": "i",
    "UINT64": "u",
}
_DTYPE = {"d": np.float64, "i": np.int64, "u": np.uint64}


class _Fallback(Exception):
    """The fast path declines: parse the body with orjson."""


def loads(raw: bytes, fallback: Callable[[bytes], Any]) -> Any:
    """RAW's JSON: FALLBACK(RAW) (orjson.loads), except that numeric tensor data in an Open Inference Protocol
    request (``inputs[i].data`` with a numeric ``datatype``) or an Azure ML-style body (``data``) is a numpy array.
    Raises what FALLBACK raises on invalid JSON."""
    if simdjson is None or len(raw) < MIN_BYTES:
        return fallback(raw)
    try:
        return _parse(raw)
    except Exception:  # _Fallback, and simdjson's errors on what orjson answers best
        return fallback(raw)


def _convert(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, simdjson.Object):
        raise _Fallback
    out: dict[str, Any] = {}
    for key in _keys(doc):
        value = doc[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            out[key] = [_tensor(t) for t in value]
        elif key == "data" and isinstance(value, simdjson.Array):  # /score: {"data": [[...], ...]}
            out[key] = _numbers(value, None)
        else:
            out[key] = _python(value)
    return out


def _tensor(t: Any) -> Any:
    if not isinstance(t, simdjson.Object):
        return _python(t)
    keys = _keys(t)
    out = {key: _python(t[key]) for key in keys if key != "data"}
    if "data" not in keys:
        return out
    data = t["data"]
    kind = _KIND.get(out.get("datatype"))  # type: ignore[arg-type]
    out["data"] = _numbers(data, kind) if kind and isinstance(data, simdjson.Array) else _python(data)
    return out


def _keys(obj: Any) -> list[str]:
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Fallback
    return keys


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _numbers(data: Any, kind: str | None) -> np.ndarray:
    """A nested array of numbers → a numpy array of its shape; _Fallback unless it is rectangular and every value
    fits KIND (simdjson raises on a string, null, boolean or number out of range). KIND None: as numpy would infer
    from the Python values, 64-bit integers when the first value is an integer (a later fraction falls back)."""
    shape: list[int] = []
    x = data
    while isinstance(x, simdjson.Array):
        shape.append(len(x))
        if not shape[-1]:
            break
        x = x[0]
    if kind is None:
        kind = "i" if isinstance(x, int) and not isinstance(x, bool) else "d"
    if not _rectangular(data, shape, 0):
        raise _Fallback
    values = np.frombuffer(data.as_buffer(of_type=kind), dtype=_DTYPE[kind])
    if values.size != math.prod(shape):  # a list nested deeper than the first row
        raise _Fallback
    return values.reshape(shape)


def _rectangular(arr: Any, shape: list[int], depth: int) -> bool:
    """Every array above the last level of ARR has SHAPE's length at its depth (rows of equal length)."""
    if depth + 1 >= len(shape):
        return True
    want = shape[depth + 1]
    for row in arr:
        if not isinstance(row, simdjson.Array) or len(row) != want or not _rectangular(row, shape, depth + 1):
            return False
    return True
