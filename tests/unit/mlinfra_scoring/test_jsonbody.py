"""jsonbody: large request bodies parsed in C give the answers (and the 400s) orjson's path gives."""

from __future__ import annotations

import orjson
import pytest

np = pytest.importorskip("numpy")
pytest.importorskip(
    "simdjson"
)  # a dev-install dependency (pyproject); the import is optional only on devices

from mlinfra_scoring import jsonbody  # noqa: E402
from mlinfra_scoring.models import RequestError, TensorSpec, decode_input  # noqa: E402

ROWS = np.random.default_rng(3).standard_normal((64, 64))


def body(datatype: str, data, shape=(64, 64), **extra) -> bytes:
    raw = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "data": data}], **extra}
    )
    return (
        raw if len(raw) >= jsonbody.MIN_BYTES else raw + b" " * jsonbody.MIN_BYTES
    )  # trailing space is JSON


def decoded(raw: bytes, parse, spec: TensorSpec):
    """(array or the 400's text) for RAW parsed by PARSE, then decoded as the data plane does."""
    try:
        return decode_input(spec, parse(raw)["inputs"][0])
    except (RequestError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def fast(raw: bytes):
    return jsonbody.loads(raw, orjson.loads)


@pytest.mark.parametrize(
    ("datatype", "data", "array_type"),
    [
        ("FP32", ROWS.tolist(), np.float64),
        ("FP32", ROWS.ravel().tolist(), np.float64),  # flat data, as the protocol also allows
        ("FP16", ROWS.tolist(), np.float64),
        ("FP64", ROWS.tolist(), np.float64),
        ("FP32", (ROWS * 100).astype(int).tolist(), np.float64),  # integers in a float tensor
        ("INT64", [[2**62 + i for i in range(64)]] * 64, np.int64),  # exact past 2**53
        ("INT32", (ROWS * 1000).astype(int).tolist(), np.int64),
        ("UINT64", [[2**64 - 1 - i for i in range(64)]] * 64, np.uint64),
        ("UINT8", [[i % 256 for i in range(64)]] * 64, np.int64),
    ],
)
def test_numeric_data_arrives_as_an_array_and_decodes_as_the_python_path_does(
    datatype, data, array_type
) -> None:
    raw = body(datatype, data)
    got = fast(raw)
    tensor = got["inputs"][0]
    assert isinstance(tensor["data"], np.ndarray), "large numeric data must skip Python's numbers"
    assert tensor["data"].dtype == array_type
    assert {k: v for k, v in tensor.items() if k != "data"} == {
        "name": "x",
        "datatype": datatype,
        "shape": [64, 64],
    }
    spec = TensorSpec("x", datatype, [-1, 64])
    a, b = decoded(raw, fast, spec), decoded(raw, orjson.loads, spec)
    assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape == (64, 64)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", [[0.5] * 64] * 63 + [[0.5] * 3], "rectangular"),  # ragged rows
        ("FP32", [[0.5] * 64] * 63 + [[0.5] * 63 + ["a"]], "data[4095] = 'a' is not a number"),
        ("FP32", [[0.5] * 64] * 63 + [[0.5] * 63 + [None]], "data[4095] = None is not a number"),
        ("FP32", [[0.5] * 64] * 63 + [[0.5] * 63 + [1e39]], "data[4095] = 1e+39 is out of range for FP32"),
        ("INT32", [[1] * 64] * 63 + [[1] * 63 + [2.5]], "data[4095] = 2.5 is not an integer"),
        ("INT32", [[1] * 64] * 63 + [[1] * 63 + [2**40]], "is out of range for INT32"),
        ("UINT8", [[1] * 64] * 63 + [[1] * 63 + [-1]], "data[4095] = -1 is out of range for UINT8"),
        ("FP32", [[0.5] * 64] * 63, "data has 4032 values; shape [64, 64] needs 4096"),
        ("FP32", [[[0.5] * 64]] * 64, "has shape"),  # nested one level deeper than rows: shape checked below
    ],
)
def test_bad_data_gets_the_same_400(datatype, data, fragment) -> None:
    raw = body(datatype, data, shape=(64, 64) if fragment != "has shape" else (64, 1, 64))
    spec = TensorSpec("x", datatype, [-1, 64])
    a, b = decoded(raw, fast, spec), decoded(raw, orjson.loads, spec)
    assert a == b, (a, b)
    assert isinstance(a, str) and fragment in a, a


def test_what_the_fast_path_leaves_to_orjson_is_answered_as_before() -> None:
    data = ROWS.tolist()
    dup = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 64], "data": data}]})
    dup = dup.replace(b'"data":', b'"data":[[1]],"data":', 1)  # orjson keeps the last of duplicate keys
    assert isinstance(fast(dup)["inputs"][0]["data"], list)
    spec = TensorSpec("x", "FP32", [-1, 64])
    np.testing.assert_array_equal(decoded(dup, fast, spec), ROWS.astype(np.float32))
    # Invalid JSON raises orjson's own error (the server words it as "request body is not valid JSON: ...").
    for bad in (body("FP32", data)[:-200], body("FP32", data).replace(b"]]", b"]],", 1), b"[" * 5000):
        with pytest.raises(orjson.JSONDecodeError):
            fast(bad)
    # Numbers no double holds: orjson refuses them as JSON, and so does the fast path.
    with pytest.raises(orjson.JSONDecodeError):
        fast(body("FP64", [[1.5] * 64] * 64).replace(b"1.5", b"1e400", 1))
    # A body that is not an object, BYTES and BOOL tensors, and small bodies are plain Python.
    assert fast(orjson.dumps([data]))[0] == data
    bools = fast(body("BOOL", [[True] * 64] * 64))
    assert bools["inputs"][0]["data"] == [[True] * 64] * 64
    small = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2]}]})
    assert fast(small) == orjson.loads(small)


def test_score_bodies_keep_their_nested_shape_and_integer_type() -> None:
    got = fast(orjson.dumps({"data": ROWS.tolist()}))["data"]
    assert isinstance(got, np.ndarray) and got.shape == (64, 64) and got.dtype == np.float64
    np.testing.assert_array_equal(got, ROWS)
    ints = fast(orjson.dumps({"data": [[i for i in range(64)]] * 64}))["data"]
    assert ints.dtype == np.int64 and ints.shape == (64, 64)
    mixed = fast(orjson.dumps({"data": [[1] + [0.5] * 63] * 64}))["data"]  # first an int, then fractions
    assert np.asarray(mixed).dtype == np.float64 and np.asarray(mixed).shape == (64, 64)


def test_the_reused_parser_gives_each_body_its_own_answer(monkeypatch) -> None:
    """Bodies up to REUSE_BYTES share one parser per thread: documents parsed one after another — valid, falling
    back (duplicate keys, strings), invalid, and one over the limit that gets a parser of its own — each come out as
    orjson reads them, and none leaks into the next."""
    monkeypatch.setattr(jsonbody, "REUSE_BYTES", 120_000)
    bodies = [
        body("FP32", ROWS.tolist()),
        body("FP32", (ROWS * 2).tolist(), shape=(64, 64), id="second"),
        body("FP32", [["x"] * 64] * 64),  # strings: orjson's path
        b'{"inputs": [], "inputs": [1]}' + b" " * jsonbody.MIN_BYTES,  # duplicate keys: orjson's path
        body(
            "FP64", np.tile(ROWS, (2, 1)).tolist(), shape=(128, 64)
        ),  # over REUSE_BYTES: a parser of its own
        body("FP32", (ROWS * 3).tolist()),
    ]
    assert len(bodies[4]) > jsonbody.REUSE_BYTES > len(bodies[0])
    for raw in bodies * 2:
        got, want = fast(raw), orjson.loads(raw)
        for t_got, t_want in zip(got.get("inputs") or [], want.get("inputs") or [], strict=True):
            data = t_got.get("data") if isinstance(t_got, dict) else None
            if isinstance(data, np.ndarray):
                np.testing.assert_array_equal(data, np.asarray(t_want["data"]))
            else:
                assert t_got == t_want
        assert {k: v for k, v in got.items() if k != "inputs"} == {
            k: v for k, v in want.items() if k != "inputs"
        }
    with pytest.raises(orjson.JSONDecodeError):
        fast(b'{"inputs": [' + b" " * jsonbody.MIN_BYTES)
    np.testing.assert_array_equal(fast(bodies[0])["inputs"][0]["data"], ROWS)  # and the parser still works
    assert getattr(jsonbody._parsers, "parser", None) is not None  # one kept for this thread
