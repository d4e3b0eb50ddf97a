"""The binary tensor data extension of the Open Inference Protocol's REST API, as Triton and KServe define it.

A request (or response) body is a JSON header followed by raw tensor bytes; the HTTP header
``Inference-Header-Content-Length`` says how long the JSON part is. In the JSON, a tensor whose bytes follow carries
``parameters.binary_data_size`` instead of ``data``; the binary parts follow in the order of those tensors. Numbers
are little-endian, one element after another in row-major order (BOOL: one byte each); a BYTES tensor is each
element as a 4-byte little-endian length and that many bytes.

A client asks for binary outputs with ``parameters.binary_data_output: true`` on the request (all outputs) or
``parameters.binary_data: true`` on a requested output (that one; it overrides the request-wide setting).

Everything here is pure: bytes and numpy in, bytes and numpy out, RequestError (400) naming what is wrong.
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any

import numpy as np

from mlinfra_scoring.models import OIP_TO_NUMPY, RequestError, oip_datatype

HEADER = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"
CONTENT_TYPE = "application/octet-stream"

_LEN = struct.Struct("<I")


def split(raw: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """BODY → (its JSON header, the binary part after it), as the request's ``Inference-Header-Content-Length``
    says."""
    if not header_length.isdigit() or len(header_length) > 12:
        raise RequestError(
            f"{HEADER}: {header_length[:40]!r} is not a byte count: send the length of the JSON part of the body"
        )
    n = int(header_length)
    if n == 0 or n > len(raw):
        raise RequestError(
            f"{HEADER} is {n}, but the body has {len(raw)} bytes: it must be the length of the JSON part (1 to "
            f"{len(raw)})"
        )
    return raw[:n], memoryview(raw)[n:]


_WIRE = {k: np.dtype(v).newbyteorder("<") for k, v in OIP_TO_NUMPY.items() if k != "BYTES"}
"""Each fixed-size OIP datatype as the extension lays it out (little-endian), made once."""


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size OIP datatype."""
    return int(_WIRE[datatype].itemsize)


def decode(name: str, datatype: str, shape: list[int], chunk: memoryview) -> np.ndarray:
    """One tensor's raw bytes → an array of SHAPE (a view for numbers; BYTES elements as str, UTF-8 decoded)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = _bytes_elements(name, chunk, count)
        return arr.reshape(shape)
    want = count * element_size(datatype)
    if len(chunk) != want:
        raise RequestError(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes, but shape {shape} of {datatype} is {count} "
            f"elements × {element_size(datatype)} bytes = {want}"
        )
    arr = np.frombuffer(chunk, dtype=_WIRE[datatype])
    if datatype == "BOOL" and count and int(np.frombuffer(chunk, dtype=np.uint8).max()) > 1:
        raise RequestError(f"input {name!r}: a BOOL element is a byte 0 or 1")
    return arr.reshape(shape)


def _bytes_elements(name: str, chunk: memoryview, count: int) -> list[str]:
    items: list[str] = []
    pos, end = 0, len(chunk)
    while pos < end:
        if end - pos < 4:
            raise RequestError(
                f"input {name!r}: BYTES element {len(items)} is cut short: {end - pos} bytes left where its 4-byte "
                "length should be"
            )
        (n,) = _LEN.unpack_from(chunk, pos)
        pos += 4
        if n > end - pos:
            raise RequestError(
                f"input {name!r}: BYTES element {len(items)} says {n} bytes, but only {end - pos} remain in its "
                "binary_data_size"
            )
        try:  # ONNX string tensors hold text (onnxruntime takes str), as JSON's strings are
            items.append(str(chunk[pos : pos + n], "utf-8"))
        except UnicodeDecodeError as e:
            raise RequestError(
                f"input {name!r}: BYTES element {len(items)} is not UTF-8 text (byte {e.start}): the model's string "
                "tensors hold text"
            ) from None
        pos += n
        if len(items) > count:
            break
    if len(items) > count:
        raise RequestError(
            f"input {name!r}: its binary data holds more than the {count} BYTES elements its shape needs"
        )
    if len(items) < count:
        raise RequestError(
            f"input {name!r}: its binary data holds {len(items)} BYTES elements; its shape needs {count}"
        )
    return items


def encode(arr: np.ndarray) -> tuple[str, bytes]:
    """An output array → (its OIP datatype, its raw bytes as the extension lays them out)."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        parts = []
        for x in arr.ravel().tolist():
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return "BYTES", b"".join(parts)
    datatype = oip_datatype(arr.dtype)
    if datatype is None:  # e.g. a model output type the protocol has no name for
        arr, datatype = arr.astype(np.float32), "FP32"
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return datatype, arr.tobytes()  # C order, whatever ARR's strides


def wanted_outputs(body: dict[str, Any]) -> tuple[bool, dict[str, bool]]:
    """(the request-wide ``binary_data_output``, each requested output's own ``binary_data``)."""
    params = body.get("parameters")
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    per: dict[str, bool] = {}
    for o in body.get("outputs") or []:
        p = o.get("parameters") if isinstance(o, dict) else None
        if isinstance(p, dict) and isinstance(p.get("binary_data"), bool):
            per[str(o.get("name"))] = p["binary_data"]
    return default, per


def output(name: str, arr: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """One output as a binary tensor: its JSON entry (``parameters.binary_data_size``, no ``data``; NaN and ±Inf
    travel as they are) and its bytes."""
    datatype, raw = encode(arr)
    entry = {
        "name": name,
        "datatype": datatype,
        "shape": list(arr.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    return entry, raw


def data_size(name: str, tensor: dict[str, Any]) -> int | None:
    """The input's ``parameters.binary_data_size`` (None: its values are in ``data``)."""
    params = tensor.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RequestError(
            f"input {name!r}: binary_data_size must be a byte count (an integer ≥ 0), got {size!r}"
        )
    if "data" in tensor:
        raise RequestError(
            f"input {name!r} has both data and binary_data_size: send its values one way (remove one of them)"
        )
    return size
