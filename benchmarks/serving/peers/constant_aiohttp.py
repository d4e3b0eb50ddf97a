"""Ceiling: the same HTTP stack as mlinfra (aiohttp + uvloop) answering a constant OIP response; reads the body."""

import json
import os

import uvloop
from aiohttp import web

BODY = json.dumps(
    {
        "model_name": "mlp",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}],
    }
).encode()


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="{}")


app = web.Application()
app.router.add_post("/v2/models/mlp/infer", infer)
app.router.add_get("/v2/health/ready", ready)
uvloop.install() if hasattr(uvloop, "install") else None
web.run_app(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), access_log=None, print=None)
