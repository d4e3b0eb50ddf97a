"""The direct path (mlinfra_scoring/direct.py) answers what aiohttp's handler answers, byte for byte.

Two real servers on the same models and keys, one with the direct path (the default) and one with
``--no-direct-path``, get the same raw bytes over sockets: well-formed requests, errors, and every kind of request the
direct path must leave to aiohttp (chunked, HTTP/1.0, pipelined, split, oversized, malformed, …). Their responses
must be equal but for Date and generated request ids; so must their metrics and access logs. The direct server's
``mlinfra_direct_requests_total`` says which requests it answered itself: the ones it should, and no others.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from tests.scoring_helpers import Server, metric, model_args, reference, start_server

KEY = "direct-key-1"
AUTH = f"Authorization: Bearer {KEY}\r\n"
ROW = [round(0.01 * i, 3) for i in range(64)]


def _json(rows: int = 1, **extra: object) -> bytes:
    return json.dumps(
        {
            "id": "r",
            "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": ROW * rows}],
            **extra,
        }
    ).encode()


def _binary() -> tuple[bytes, int]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 512},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + struct.pack("<128f", *(ROW * 2)), len(head)


def post(path: str, body: bytes, headers: str = AUTH, version: str = "HTTP/1.1") -> bytes:
    return (
        f"POST {path} {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


INFER = "/v2/models/mlp/infer"
BIN, BIN_HEAD = _binary()

# name: (the chunks a client sends, pause between chunks in s, responses expected, answered by the direct path)
CASES: dict[str, tuple[list[bytes], float, int, int]] = {
    "one-row": ([post(INFER, _json(), AUTH + "X-Request-Id: case-1\r\n")], 0, 1, 1),
    "64-rows": ([post(INFER, _json(64))], 0, 1, 1),
    "versioned": ([post("/v2/models/mlp/versions/7/infer", _json())], 0, 1, 1),
    "keep-alive-header": ([post(INFER, _json(), AUTH + "Connection: keep-alive\r\n")], 0, 1, 1),
    "lowercase-bearer": ([post(INFER, _json(), f"authorization: bearer {KEY}\r\n")], 0, 1, 1),
    "binary": (
        [post(INFER, BIN, AUTH + f"Inference-Header-Content-Length: {BIN_HEAD}\r\n")],
        0,
        1,
        1,
    ),
    "two-in-turn": ([post(INFER, _json()), post(INFER, _json(2))], 0.05, 2, 2),
    "headers-then-body": ([post(INFER, _json())[:-300], post(INFER, _json())[-300:]], 0.002, 1, 1),
    "invalid-json": ([post(INFER, b'{"inputs": [')], 0, 1, 1),
    "wrong-shape": ([post(INFER, _json().replace(b"[1, 64]", b"[1, 63]"))], 0, 1, 1),
    "bad-request-id": ([post(INFER, _json(), AUTH + "X-Request-Id: a;b\r\n")], 0, 1, 1),
    "wrong-version": ([post("/v2/models/mlp/versions/8/infer", _json())], 0, 1, 0),
    "unknown-model": ([post("/v2/models/nope/infer", _json())], 0, 1, 0),
    "no-key": ([post(INFER, _json(), "")], 0, 1, 0),
    "wrong-key": ([post(INFER, _json(), "Authorization: Bearer nope\r\n")], 0, 1, 0),
    "over-max-body": ([post(INFER, _json(200))], 0, 1, 0),
    "chunked": (
        [
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
            + AUTH.encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(_json())
            + _json()
            + b"\r\n0\r\n\r\n"
        ],
        0,
        1,
        0,
    ),
    "connection-close": ([post(INFER, _json(), AUTH + "Connection: close\r\n")], 0, 1, 0),
    "http-1.0": ([post(INFER, _json(), version="HTTP/1.0")], 0, 1, 0),
    "pipelined": ([post(INFER, _json()) + post(INFER, _json(3))], 0, 2, 0),
    "body-much-later": ([post(INFER, _json())[:-10], post(INFER, _json())[-10:]], 0.3, 1, 0),
    "query": ([post(INFER + "?x=1", _json())], 0, 1, 0),
    "escaped-name": ([post("/v2/models/ml%70/infer", _json())], 0, 1, 0),
    "dot-segment": ([post("/v2/models/x/../mlp/infer", _json())], 0, 1, 0),
    "expect-continue": ([post(INFER, _json(), AUTH + "Expect: 100-continue\r\n")], 0, 2, 0),
    "get-infer": ([b"GET /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n\r\n"], 0, 1, 0),
    "then-metadata-then-infer": (
        [b"GET /v2/models/mlp HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"\r\n", post(INFER, _json())],
        0.05,
        2,
        0,
    ),
    "infer-then-metadata": (
        [post(INFER, _json()), b"GET /v2/models/mlp HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"\r\n"],
        0.05,
        2,
        1,
    ),
    "duplicate-content-length": (
        [post(INFER, _json(), AUTH + f"Content-Length: {len(_json())}\r\n")],
        0,
        1,
        0,
    ),
    "short-content-length": (
        [post(INFER, _json()).replace(f"Content-Length: {len(_json())}".encode(), b"Content-Length: 20")],
        0,
        1,
        0,
    ),
    "long-header": ([post(INFER, _json(), AUTH + "X-Pad: " + "p" * 9000 + "\r\n")], 0, 1, 0),
    "lowercase-method": ([post(INFER, _json()).replace(b"POST", b"post", 1)], 0, 1, 0),
    "content-encoding": ([post(INFER, _json(), AUTH + "Content-Encoding: gzip\r\n")], 0, 1, 0),
}


def exchange(
    port: int, chunks: list[bytes], pause: float, responses: int
) -> list[tuple[bytes, list[bytes], bytes]]:
    """Send CHUNKS (PAUSE apart) on one connection and read RESPONSES responses (or until it closes): each as
    (status line, header lines, body)."""
    got: list[tuple[bytes, list[bytes], bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(pause)
            s.sendall(chunk)
        buf = b""
        while len(got) < responses:
            while b"\r\n\r\n" not in buf:
                more = s.recv(65536)
                if not more:
                    return got
                buf += more
            head, buf = buf.split(b"\r\n\r\n", 1)
            status, *lines = head.split(b"\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(b": ") for h in lines) if k.lower() == b"content-length"),
                0,
            )
            while len(buf) < length:
                more = s.recv(65536)
                if not more:
                    break
                buf += more
            got.append((status, lines, buf[:length]))
            buf = buf[length:]
    return got


def normal(responses: list[tuple[bytes, list[bytes], bytes]]) -> list[tuple[bytes, list[bytes], bytes]]:
    """Without what differs between any two servers: the Date, generated request ids (checked for their form)."""
    out = []
    for status, lines, body in responses:
        kept = []
        for line in lines:
            name, _, value = line.partition(b": ")
            if name == b"Date":
                continue
            if name == b"X-Request-Id" and re.fullmatch(rb"[0-9a-f]{32}", value):
                line = b"X-Request-Id: <generated>"
            kept.append(line)
        out.append((status, kept, body))
    return out


@pytest.fixture(scope="module")
def servers(models: dict[str, Path], tmp_path_factory) -> dict[str, Server]:
    tmp = tmp_path_factory.mktemp("direct")
    args = [*model_args(models, "7"), "--key", KEY, "--max-body-mb", "0.05"]
    started = {
        "direct": start_server(tmp, *args),
        "aiohttp": start_server(tmp, *args, "--no-direct-path"),
    }
    yield started
    for srv in started.values():
        srv.stop()


def _direct_count(srv: Server) -> float:
    return metric(srv.request("GET", "/metrics")[1], "mlinfra_direct_requests_total") or 0


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_answer_either_way(servers: dict[str, Server], case: str) -> None:
    chunks, pause, responses, direct = CASES[case]
    before = _direct_count(servers["direct"])
    got = {name: exchange(srv.port, chunks, pause, responses) for name, srv in servers.items()}
    assert len(got["aiohttp"]) == responses, got["aiohttp"]
    assert normal(got["direct"]) == normal(got["aiohttp"])
    assert _direct_count(servers["direct"]) - before == direct, "answered by the wrong path"
    assert _direct_count(servers["aiohttp"]) == 0


def test_the_same_metrics_and_access_log(servers: dict[str, Server]) -> None:
    """After the same requests (the cases above, run first in this module), both servers count the same requests
    under the same labels, and their access logs hold the same lines but for times and generated ids (both without
    the scrapes and readiness polls, which the test made more of on one)."""
    for srv in servers.values():
        for case in ("one-row", "no-key", "invalid-json"):
            exchange(srv.port, CASES[case][0], 0, 1)
    texts = {name: srv.request("GET", "/metrics")[1] for name, srv in servers.items()}
    counted = {
        name: sorted(
            line
            for line in text.splitlines()
            if line.startswith("mlinfra_requests_total{")
            and 'route="metrics"' not in line
            and 'route="ready"' not in line
        )
        for name, text in texts.items()
    }
    assert counted["direct"] == counted["aiohttp"]
    assert any('code="200",model="mlp",route="infer",version="7"' in line for line in counted["direct"])

    def log(srv: Server) -> list[str]:
        lines = [json.loads(x) for x in srv.log.read_text().splitlines() if x.startswith('{"ts"')]
        return sorted(
            repr((x.get("method"), x.get("path"), x.get("status"), x.get("event")))
            for x in lines
            if x.get("path") not in ("/metrics", "/v2/health/ready")
        )

    time.sleep(0.7)  # the access log is flushed every 0.5 s
    assert log(servers["direct"]) == log(servers["aiohttp"])
    assert len(log(servers["direct"])) >= 3


def test_answers_are_right(servers: dict[str, Server], models: dict[str, Path]) -> None:
    """Not only equal: the direct path's answer is the model's, for JSON and binary tensors."""
    [(status, lines, body)] = exchange(servers["direct"].port, CASES["one-row"][0], 0, 1)
    assert status == b"HTTP/1.1 200 OK" and b"X-Request-Id: case-1" in lines
    out = json.loads(body)
    assert out["id"] == "r" and out["model_version"] == "7"
    np.testing.assert_allclose(out["outputs"][0]["data"], reference(models["mlp"], [ROW])[0], rtol=1e-5)
    [(status, lines, body)] = exchange(servers["direct"].port, CASES["binary"][0], 0, 1)
    head_len = int(
        next(v for k, _, v in (h.partition(b": ") for h in lines) if k == b"Inference-Header-Content-Length")
    )
    values = np.frombuffer(body[head_len:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(values, reference(models["mlp"], [ROW, ROW]), rtol=1e-5)


def test_a_client_that_hangs_up_mid_answer_leaves_the_server_whole(servers: dict[str, Server]) -> None:
    """Requests on connections closed before their answer (and halves of requests) cost nothing lasting."""
    srv = servers["direct"]
    for chunk in (post(INFER, _json(64)), post(INFER, _json())[:-5], b"POST /v2/mo"):
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(chunk)
    time.sleep(0.3)
    [(status, _, _)] = exchange(srv.port, CASES["one-row"][0], 0, 1)
    assert status == b"HTTP/1.1 200 OK"
    text = srv.request("GET", "/metrics")[1]
    assert metric(text, "mlinfra_in_flight_requests") == 1  # this scrape only
    assert "Traceback" not in srv.log.read_text()
