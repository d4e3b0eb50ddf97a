"""The scoring server's HTTP layer: aiohttp on one event loop (uvloop when installed). It authenticates (bearer
keys), decodes bodies, maps the data plane's errors to status codes, counts every request in the Prometheus
metrics and writes a JSON access log. What a request asks of the models is the data plane's (dataplane.py); which
models are served, the model repository's (repository.py) — the split KServe's model server uses."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from mlinfra_scoring import __version__, collector, otel
from mlinfra_scoring.dataplane import DataPlane, Hook
from mlinfra_scoring.metrics import Metrics
from mlinfra_scoring.models import LoadedModel, RequestError
from mlinfra_scoring.repository import ModelRepository, ModelSpec

loads: Callable[[Any], Any]

try:  # orjson serializes numpy arrays natively and parses 2-3x faster; optional
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    loads = orjson.loads
except ImportError:  # pragma: no cover - exercised only without orjson

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)).encode()

    loads = json.loads

JSON = "application/json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

__all__ = ["ModelSpec", "ScoringServer", "ServerConfig", "run"]


@dataclass
class ServerConfig:
    models: list[ModelSpec]
    host: str = "127.0.0.1"
    port: int = 8080
    keys: list[str] = field(default_factory=list)
    script: str | None = None
    max_batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    max_body_mb: float = 10.0
    access_log: bool = True
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 1
    drain_timeout_s: float = 30.0


class ScoringServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self._log = sys.stdout
        self.repository = ModelRepository(
            config.providers,
            config.threads,
            config.max_batch_size,
            config.max_batch_delay_ms,
            on_batch=lambda labels, rows: self.metrics.batch.observe(rows, labels),
        )
        self.dataplane = DataPlane(self.repository, self.metrics, self._log)
        self.collector: Any = None  # mlinfra_scoring.collector.Collector when MLINFRA_SERVE_COLLECT is set
        self.otlp: Any = None  # mlinfra_scoring.otel.Exporter when MLINFRA_SERVE_OTLP_ENDPOINT is set
        self.in_flight = 0
        self._keys = [k.encode() for k in config.keys if k]

    # -- what the edge agent and tests reach: the repository and the data plane ------------------------------

    @property
    def models(self) -> dict[str, LoadedModel]:
        return self.repository.models

    @property
    def ready(self) -> bool:
        return self.dataplane.ready

    def add_hook(self, hook: Hook) -> None:
        """Register a data-collection hook: called with each scored record; must not block (enqueue and return)."""
        self.dataplane.add_hook(hook)

    def load(self) -> None:
        """Load every model (and the user script); readiness turns true only when all succeeded."""
        self.dataplane.load(self.config.models, self.config.script, self.config.providers)

    def swap_model(self, name: str, version: str, path: str) -> LoadedModel:
        """Serve another model under NAME atomically (see ModelRepository.swap)."""
        return self.repository.swap(name, version, path)

    def remove_model(self, name: str) -> None:
        self.repository.remove(name)

    def start_in_thread(self) -> tuple[int, Callable[[], None]]:
        """Serve from a background thread (for embedding, e.g. the edge agent). Returns (port, stop)."""
        import threading

        loop = asyncio.new_event_loop()
        started = threading.Event()
        state: dict[str, Any] = {}

        async def start() -> None:
            runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
            await site.start()
            state["runner"] = runner
            state["port"] = runner.addresses[0][1]

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(start())
            except Exception as e:
                state["error"] = e
            started.set()
            if "error" not in state:
                loop.run_forever()

        thread = threading.Thread(target=run, name="scoring-server", daemon=True)
        thread.start()
        started.wait(30)
        if "error" in state:
            raise state["error"]
        self.dataplane.set_ready(True)

        def stop() -> None:
            async def cleanup() -> None:
                await state["runner"].cleanup()

            asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        return int(state["port"]), stop

    # -- transport helpers -----------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if not self._keys:
            return True
        header = request.headers.get("Authorization", "")
        if header[:7].lower() != "bearer ":  # the scheme is case-insensitive (RFC 9110 §11.1)
            return False
        given = header[7:].strip().encode()
        ok = False
        for key in self._keys:  # compare with every key: constant time whichever matches
            ok |= hmac.compare_digest(given, key)
        return ok

    async def _raw_body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 past --max-body-mb (announced or streamed)."""
        limit = int(self.config.max_body_mb * 1024 * 1024)
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(
                f"request body is {request.content_length} bytes; the limit is {limit} "
                f"({self.config.max_body_mb:g} MB, --max-body-mb)",
                413,
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(
                f"request body exceeds the limit of {limit} bytes (--max-body-mb)", 413
            ) from None
        except RequestPayloadError as e:  # e.g. Content-Encoding: gzip over bytes that are not gzip
            encoding = request.headers.get("Content-Encoding", "")[:40]
            raise RequestError(
                f"request body could not be read (Content-Encoding {encoding!r}): {str(e).splitlines()[-1].strip()[:200]}"
            ) from None
        if len(raw) > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes (--max-body-mb)", 413)
        return raw

    async def _body(self, request: web.Request) -> Any:
        raw = await self._raw_body(request)
        try:
            return loads(raw)
        except (ValueError, TypeError) as e:
            raise RequestError(f"request body is not valid JSON: {str(e)[:200]}") from None

    def _model(self, request: web.Request) -> LoadedModel:
        m = self.repository.get(request.match_info["name"], request.match_info.get("version"))
        request["version"] = m.version
        return m

    # -- middleware ------------------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.perf_counter()
        rid = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID.fullmatch(rid):  # a client's id is kept only if it is a short token (log safety)
            rid = uuid.uuid4().hex
        request["rid"] = rid
        self.in_flight += 1
        self.metrics.in_flight.set((), self.in_flight)
        status = 500
        try:
            route = request.match_info.route.name or "other"
            if route not in ("live", "ready", "metrics", "openapi") and not self._authorized(request):
                raise RequestError("missing or wrong key: send 'Authorization: Bearer <key>'", 401)
            resp = await handler(request)
            status = resp.status
        except RequestError as e:
            status = e.status
            resp = web.Response(body=dumps({"error": str(e)}), status=status, content_type=JSON)
        except web.HTTPException as e:
            status = e.status
            kept = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}  # 405: Allow
            resp = web.Response(
                body=dumps({"error": e.reason}), status=status, content_type=JSON, headers=kept
            )
        except Exception as e:  # a bug or a user-script failure: 500 with the message, server stays up
            status = 500
            resp = web.Response(
                body=dumps({"error": f"{type(e).__name__}: {e}"}), status=500, content_type=JSON
            )
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set((), self.in_flight)
        resp.headers["X-Request-Id"] = rid
        dt = time.perf_counter() - t0
        # Label values come only from served models: a name from the URL that is not served (or a request that was
        # not authorized) counts under "unknown", so no client can grow /metrics.
        model = request.match_info.get("name") or request.get(
            "model", ""
        )  # /score names no model in its path
        if model and (model not in self.repository.models or status == 401):
            model = "unknown"
        version = request.get("version", "") if model != "unknown" else ""
        route = request.match_info.route.name or "other"
        self.metrics.requests.inc((route, model, version, str(status)))
        self.metrics.latency.observe(dt, (route, model, version))
        if self.config.access_log:
            entry = {
                "ts": round(time.time(), 3),
                "request_id": rid,
                "method": request.method,
                "path": request.path[:512],
                "status": status,
                "ms": round(dt * 1000, 3),
            }
            self._log.write(dumps(entry).decode() + "\n")  # a JSON encoder: no client value can forge a field
        return resp

    # -- handlers: HTTP in, data plane, HTTP out -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"live":true}', content_type=JSON)

    async def ready_h(self, request: web.Request) -> web.Response:
        ok, body = self.dataplane.health()
        return web.Response(body=dumps(body), status=200 if ok else 503, content_type=JSON)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(self.dataplane.server_metadata()), content_type=JSON)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(self._model(request).metadata()), content_type=JSON)

    async def model_ready(self, request: web.Request) -> web.Response:
        m = self.repository.get(request.match_info["name"], request.match_info.get("version"))
        ok = self.dataplane.model_ready(m)
        return web.Response(
            body=dumps({"name": m.name, "ready": ok}), status=200 if ok else 503, content_type=JSON
        )

    async def infer(self, request: web.Request) -> web.Response:
        m = self._model(request)
        self.dataplane.require_ready()
        body = await self._body(request)
        resp = await self.dataplane.infer(m, body, request["rid"], request.headers)
        return web.Response(body=dumps(resp), content_type=JSON)

    async def score(self, request: web.Request) -> web.Response:
        """Azure ML-style /score: the user script's run(raw_data), else the first model's first output."""
        self.dataplane.require_ready()
        if self.dataplane.script is not None:
            result = await self.dataplane.score_script(await self._raw_body(request))
            if isinstance(result, bytes | str):
                return web.Response(body=result, content_type=JSON)
            return web.Response(body=dumps(result), content_type=JSON)
        body = await self._body(request)
        m = self.repository.first()
        request["model"], request["version"] = m.name, m.version
        out, non_finite = await self.dataplane.score(m, body, request["rid"], request.headers)
        headers = {"X-Non-Finite-Values": str(non_finite)} if non_finite else None
        return web.Response(body=dumps(out), content_type=JSON, headers=headers)

    async def metrics_h(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(openapi_doc(self)), content_type=JSON)

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.middleware], client_max_size=int(self.config.max_body_mb * 1024 * 1024) + 1
        )
        r = app.router
        r.add_get("/v2/health/live", self.live, name="live")
        r.add_get("/v2/health/ready", self.ready_h, name="ready")
        r.add_get("/v2", self.server_metadata, name="server")
        r.add_get("/v2/models/{name}", self.model_metadata, name="model")
        r.add_get("/v2/models/{name}/versions/{version}", self.model_metadata, name="model_version")
        r.add_get("/v2/models/{name}/ready", self.model_ready, name="model_ready")
        r.add_get("/v2/models/{name}/versions/{version}/ready", self.model_ready, name="model_version_ready")
        r.add_post("/v2/models/{name}/infer", self.infer, name="infer")
        r.add_post("/v2/models/{name}/versions/{version}/infer", self.infer, name="infer_version")
        r.add_post("/score", self.score, name="score")
        r.add_get("/metrics", self.metrics_h, name="metrics")
        r.add_get("/openapi.json", self.openapi, name="openapi")
        return app

    # -- running ---------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen, load models in the background, and on SIGTERM/SIGINT drain in-flight requests and return."""
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=self.config.drain_timeout_s
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, backlog=1024, reuse_address=True)
        await site.start()
        print(
            json.dumps(
                {
                    "event": "listening",
                    "host": self.config.host,
                    "port": self.config.port,
                    "models": [m.name for m in self.config.models],
                    "auth": bool(self._keys),
                    "max_batch_size": self.config.max_batch_size,
                }
            ),
            file=self._log,
            flush=True,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await loop.run_in_executor(None, self.load)
        flusher = asyncio.create_task(self._flush_logs())
        await stop.wait()
        self.dataplane.start_draining()
        print(json.dumps({"event": "draining", "in_flight": self.in_flight}), file=self._log, flush=True)
        await site.stop()
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await runner.cleanup()
        if self.collector is not None:  # queue → spool, then a few seconds to upload; the rest waits on disk
            await loop.run_in_executor(None, self.collector.close)
            print(
                json.dumps({"event": "collector_closed", **self.collector.counts}), file=self._log, flush=True
            )
        if self.otlp is not None:
            await loop.run_in_executor(None, self.otlp.close)
        flusher.cancel()
        print(json.dumps({"event": "stopped", "in_flight": self.in_flight}), file=self._log, flush=True)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._log.flush()


def openapi_doc(server: ScoringServer) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "liveness"}},
        "/v2/health/ready": {"get": {"summary": "readiness"}},
        "/v2": {"get": {"summary": "server metadata"}},
        "/score": {"post": {"summary": 'Azure ML-style scoring: {"data": [[...]]}'}},
        "/metrics": {"get": {"summary": "Prometheus metrics"}},
    }
    for m in server.repository:
        paths[f"/v2/models/{m.name}"] = {"get": {"summary": f"metadata of {m.name}"}}
        paths[f"/v2/models/{m.name}/infer"] = {
            "post": {
                "summary": f"Open Inference Protocol v2 inference on {m.name}",
                "requestBody": {
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "inputs": {"type": "array", "items": {"type": "object"}},
                                    "outputs": {"type": "array"},
                                    "id": {"type": "string"},
                                },
                            }
                        }
                    }
                },
                "x-mlinfra-signature": {
                    "inputs": [i.to_json() for i in m.inputs],
                    "outputs": [o.to_json() for o in m.outputs],
                },
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlinfra scoring server", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}] if server.config.keys else [],
        "paths": paths,
    }


def run(config: ServerConfig, hooks: list[Hook] | None = None) -> int:
    server = ScoringServer(config)
    for h in hooks or []:
        server.add_hook(h)
    server.collector = collector.from_env(
        on_drop=lambda model: server.metrics.collector_dropped.inc((model,)),
        on_upload_error=lambda: server.metrics.collector_upload_errors.inc(),
        log=lambda event: print(json.dumps(event), file=server._log, flush=True),
    )
    server.otlp = otel.from_env(
        server.metrics, log=lambda event: print(json.dumps(event), file=server._log, flush=True)
    )
    if server.collector is not None:
        server.add_hook(server.collector)
        c = server.collector.config
        print(
            json.dumps(
                {
                    "event": "collecting",
                    "sink": server.collector.sink.describe(),
                    "sample_rate": c.sample_rate,
                    "capture": c.capture,
                    "spooled": len(server.collector.pending()),
                }
            ),
            file=server._log,
            flush=True,
        )
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve())
    else:
        uvloop.run(server.serve())
    return 0
