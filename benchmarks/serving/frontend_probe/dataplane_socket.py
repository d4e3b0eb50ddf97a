"""The Python side of the front-end probe (main.go): serves frames from one Unix socket, without HTTP.

--mode minimal: orjson → numpy → ONNX Runtime → orjson, nothing else (the floor of the architecture).
--mode dataplane: what mlinfra's infer route does after HTTP — the same ScoringServer's body parsing, DataPlane.infer
(validation, dynamic batching, encoding), admission, metrics and a JSON access-log line — so its figures estimate a
native front end in front of today's data plane.

    python dataplane_socket.py --model mlp.onnx --socket /tmp/dp.sock --mode dataplane
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

HEAD = struct.Struct("<IIH")


def minimal(model: Path):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])

    async def handle(path: bytes, raw: bytes) -> tuple[int, bytes]:
        t = orjson.loads(raw)["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        (y,) = s.run(None, {"input": x})
        out = {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": list(y.shape),
            "data": y.ravel().tolist(),
        }
        return 200, orjson.dumps({"model_name": "mlp", "outputs": [out]})

    return handle, None


def dataplane(model: Path):
    from mlinfra_scoring.models import RequestError
    from mlinfra_scoring.repository import ModelSpec
    from mlinfra_scoring.server import ScoringServer, ServerConfig, dumps, new_request_id

    srv = ScoringServer(ServerConfig(models=[ModelSpec(path=str(model), name="mlp")]))
    srv.load()
    for b in srv.repository.batchers.values():  # requests in progress: frames received and not answered
        b._in_progress = lambda: Channel.in_progress
    log = sys.stdout

    async def handle(path: bytes, raw: bytes) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        rid = new_request_id()
        status, version, admitted = 500, "", False
        name = path.split(b"/")[3].decode() if path.count(b"/") >= 4 else ""
        try:
            m = srv.repository.get(name)
            version = m.version
            srv.admit()
            admitted = True
            body = srv._json(raw, "the body")
            resp, _chunks = await srv.dataplane.infer(m, body, rid, {})
            status, out = 200, dumps(resp)
        except RequestError as e:
            status, out = e.status, dumps({"error": str(e)})
        finally:
            if admitted:
                srv.release()
        dt = time.perf_counter() - t0
        srv.metrics.requests.inc(("infer", name, version, str(status)))
        srv.metrics.latency.observe(dt, ("infer", name, version))
        entry = {
            "ts": round(time.time(), 3),
            "request_id": rid,
            "method": "POST",
            "path": path.decode()[:512],
        }
        entry |= {"status": status, "ms": round(dt * 1000, 3)}
        log.write(dumps(entry).decode() + "\n")
        return status, out

    return handle, srv


class Channel(asyncio.Protocol):
    in_progress = 0
    """Frames received and not answered yet: what the server counts as requests whose bytes arrived (the dynamic
    batcher merges only when there are others)."""

    def __init__(self, handle):
        self.handle = handle
        self.buf = bytearray()
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            n, fid = struct.unpack_from("<II", self.buf)
            if len(self.buf) < 4 + n:
                break
            (plen,) = struct.unpack_from("<H", self.buf, 8)
            path, raw = bytes(self.buf[10 : 10 + plen]), bytes(self.buf[10 + plen : 4 + n])
            del self.buf[: 4 + n]
            Channel.in_progress += 1
            task = asyncio.get_running_loop().create_task(self.serve(fid, path, raw))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def serve(self, fid: int, path: bytes, raw: bytes) -> None:
        try:
            status, out = await self.handle(path, raw)
        finally:
            Channel.in_progress -= 1
        self.transport.write(HEAD.pack(len(out), fid, status) + out)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--mode", choices=("minimal", "dataplane"), default="dataplane")
    p.add_argument("--front", help="the Go front end (main.go) to start once the socket listens")
    p.add_argument("--port", type=int, default=8080, help="its HTTP port")
    a = p.parse_args()
    handle, _ = (minimal if a.mode == "minimal" else dataplane)(a.model)
    if os.path.exists(a.socket):
        os.unlink(a.socket)
    server = await asyncio.get_running_loop().create_unix_server(lambda: Channel(handle), a.socket)
    if a.front:  # a child: it shares this process's CPU pinning and process group (stopped with it)
        subprocess.Popen([a.front, "-listen", f"127.0.0.1:{a.port}", "-socket", a.socket])
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
