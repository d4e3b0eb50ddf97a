"""Ceiling of a native HTTP front end: granian (Rust, hyper) calling a Python RSGI app that reads the body and answers
the same constant OIP response as constant_aiohttp.py. Run by bench.py as `granian --interface rsgi` (one worker,
single-threaded runtime, uvloop) — what mlinfra's HTTP layer could reach on granian (issue 19)."""

import json

BODY = json.dumps(
    {
        "model_name": "mlp",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}],
    }
).encode()
HEADERS = [("content-type", "application/json")]


async def app(scope, proto):
    if scope.proto == "http" and scope.method == "POST":
        await proto()
    proto.response_bytes(200, HEADERS, BODY if scope.method == "POST" else b"{}")
