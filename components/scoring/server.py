"""The scoring server: aiohttp on one event loop (uvloop when installed), ONNX Runtime sessions, optional dynamic
batching, an Azure ML-style user script, Prometheus metrics, JSON access logs and data-collection hooks."""

from __future__ import annotations

import asyncio
import functools
import hmac
import importlib.util
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from components.scoring import __version__, collector, otel
from components.scoring.batching import Batcher
from components.scoring.metrics import Metrics
from components.scoring.models import (
    LoadedModel,
    RequestError,
    decode_input,
    encode_output,
    load_onnx,
    model_dir_env,
)

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
Hook = Callable[[dict[str, Any]], None]


@dataclass
class ModelSpec:
    path: str
    name: str
    version: str = "1"


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
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.metrics = Metrics()
        self.hooks: list[Hook] = []
        self.collector: Any = None  # components.scoring.collector.Collector when MLINFRA_SERVE_COLLECT is set
        self.otlp: Any = None  # components.scoring.otel.Exporter when MLINFRA_SERVE_OTLP_ENDPOINT is set
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.script: Any = None
        self._keys = [k.encode() for k in config.keys if k]
        self._script_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="score-script")
        self._log = sys.stdout

    # -- lifecycle -------------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        """Register a data-collection hook: called with each scored record; must not block (enqueue and return)."""
        self.hooks.append(hook)

    def load(self) -> None:
        """Load every model (and the user script); readiness turns true only when all succeeded."""
        try:
            for spec in self.config.models:
                m = load_onnx(
                    spec.name, spec.version, Path(spec.path), self.config.providers, self.config.threads
                )
                self.models[spec.name] = m
                if self.config.max_batch_size > 1:
                    labels = (m.name, m.version)
                    self.batchers[spec.name] = Batcher(
                        m.run,
                        self.config.max_batch_size,
                        self.config.max_batch_delay_ms / 1000.0,
                        functools.partial(self._observe_batch, labels),
                    )
                print(
                    json.dumps(
                        {
                            "event": "model_loaded",
                            "model": m.name,
                            "version": m.version,
                            "execution_providers": m.providers,
                            "note": "no accelerator provider available: running on CPU"
                            if m.providers == ["CPUExecutionProvider"]
                            and self.config.providers != ["CPUExecutionProvider"]
                            else "",
                        }
                    ),
                    file=self._log,
                    flush=True,
                )
            if self.config.script:
                self.script = _load_script(self.config.script)
                if self.models:
                    os.environ.update(model_dir_env(next(iter(self.models.values()))))
                if hasattr(self.script, "init"):
                    self.script.init()
            self.ready = True
            self.metrics.ready.set((), 1)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            print(json.dumps({"event": "load_failed", "error": self.load_error}), file=self._log, flush=True)

    # -- hot swap (edge agent) ------------------------------------------------------------------------------

    def swap_model(self, name: str, version: str, path: str) -> LoadedModel:
        """Load a model, then replace the served one under NAME in one step: requests keep going to the old model
        until the new one is loaded; a model that fails to load raises and leaves the old one serving."""
        m = load_onnx(name, version, Path(path), self.config.providers, self.config.threads)
        if self.config.max_batch_size > 1:
            self.batchers[name] = Batcher(
                m.run,
                self.config.max_batch_size,
                self.config.max_batch_delay_ms / 1000.0,
                functools.partial(self._observe_batch, (m.name, m.version)),
            )
        self.models[name] = m  # a single dict assignment: atomic for the event loop thread
        return m

    def remove_model(self, name: str) -> None:
        self.models.pop(name, None)
        self.batchers.pop(name, None)

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
        self.ready = True
        self.metrics.ready.set((), 1)

        def stop() -> None:
            async def cleanup() -> None:
                await state["runner"].cleanup()

            asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        return int(state["port"]), stop

    # -- helpers ---------------------------------------------------------------------------------------------

    def _observe_batch(self, labels: tuple[str, str], rows: int) -> None:
        self.metrics.batch.observe(rows, labels)

    def _authorized(self, request: web.Request) -> bool:
        if not self._keys:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[7:].strip().encode()
        ok = False
        for key in self._keys:  # compare with every key: constant time whichever matches
            ok |= hmac.compare_digest(given, key)
        return ok

    def _model(self, name: str, version: str | None) -> LoadedModel:
        m = self.models.get(name)
        if m is None:
            known = ", ".join(sorted(self.models)) or "none loaded"
            raise RequestError(f"model {name!r} is not served here (models: {known})", 404)
        if version is not None and version != m.version:
            raise RequestError(f"model {name!r} has no version {version!r} here (serving {m.version})", 404)
        return m

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
        if len(raw) > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes (--max-body-mb)", 413)
        return raw

    async def _body(self, request: web.Request) -> Any:
        raw = await self._raw_body(request)
        try:
            return loads(raw)
        except (ValueError, TypeError) as e:
            raise RequestError(f"request body is not valid JSON: {str(e)[:200]}") from None

    def _collect(
        self,
        request: web.Request,
        m: LoadedModel,
        feeds: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
    ) -> None:
        self._emit(
            {
                "request_id": request["rid"],
                "model": m.name,
                "version": m.version,
                "inputs": feeds,
                "outputs": results,
                "headers": request.headers,  # read-only per request; the collector copies what it keeps
                "ts": time.time(),
            }
        )

    def _emit(self, record: dict[str, Any]) -> None:
        for hook in self.hooks:
            try:
                hook(record)
            except Exception:  # a collector must never break scoring
                self.metrics.collector_dropped.inc((record.get("model", ""),))

    # -- middleware ------------------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.perf_counter()
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
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
            resp = web.Response(body=dumps({"error": e.reason}), status=status, content_type=JSON)
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
        model = request.match_info.get("name") or request.get(
            "model", ""
        )  # /score names no model in its path
        version = request.get("version", "")
        route = request.match_info.route.name or "other"
        self.metrics.requests.inc((route, model, version, str(status)))
        self.metrics.latency.observe(dt, (route, model, version))
        if self.config.access_log:
            self._log.write(
                f'{{"ts":{time.time():.3f},"request_id":"{rid}","method":"{request.method}",'
                f'"path":{json.dumps(request.path)},"status":{status},"ms":{dt * 1000:.3f}}}\n'
            )
        return resp

    # -- handlers --------------------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"live":true}', content_type=JSON)

    async def ready_h(self, request: web.Request) -> web.Response:
        ok = self.ready and not self.draining
        body: dict[str, Any] = {"ready": ok}
        if self.load_error:
            body["error"] = self.load_error
        return web.Response(body=dumps(body), status=200 if ok else 503, content_type=JSON)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.Response(
            body=dumps(
                {
                    "name": "mlinfra",
                    "version": __version__,
                    "extensions": ["azureml_score", "dynamic_batching"],
                    "models": [
                        {"name": m.name, "version": m.version, "execution_providers": m.providers}
                        for m in self.models.values()
                    ],
                }
            ),
            content_type=JSON,
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        m = self._model(request.match_info["name"], request.match_info.get("version"))
        request["version"] = m.version
        return web.Response(body=dumps(m.metadata()), content_type=JSON)

    async def model_ready(self, request: web.Request) -> web.Response:
        m = self._model(request.match_info["name"], request.match_info.get("version"))
        ok = m.ready and self.ready and not self.draining
        return web.Response(
            body=dumps({"name": m.name, "ready": ok}), status=200 if ok else 503, content_type=JSON
        )

    async def infer(self, request: web.Request) -> web.Response:
        m = self._model(request.match_info["name"], request.match_info.get("version"))
        request["version"] = m.version
        if not self.ready:
            raise RequestError("models are still loading: retry when /v2/health/ready says ready", 503)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object with an 'inputs' list")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("'inputs' must be a non-empty list of tensors")
        specs = {s.name: s for s in m.inputs}
        feeds: dict[str, np.ndarray] = {}
        for t in inputs:
            name = t.get("name") if isinstance(t, dict) else None
            if name not in specs:
                raise RequestError(f"input {name!r} is not an input of {m.name} (inputs: {', '.join(specs)})")
            if name in feeds:
                raise RequestError(f"input {name!r} is given twice")
            feeds[name] = decode_input(specs[name], t)
        missing = [n for n in specs if n not in feeds]
        if missing:
            raise RequestError(f"missing input(s) {', '.join(missing)} for {m.name}")
        wanted = body.get("outputs")
        out_names: list[str] | None = None
        if wanted is not None:
            if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
                raise RequestError("'outputs' must be a list of objects with a 'name'")
            known = {o.name for o in m.outputs}
            out_names = [o["name"] for o in wanted]
            bad = [n for n in out_names if n not in known]
            if bad:
                raise RequestError(
                    f"output(s) {', '.join(map(repr, bad))} not produced by {m.name} "
                    f"(outputs: {', '.join(sorted(known))})"
                )
        batcher = self.batchers.get(m.name)
        try:
            results = await batcher.submit(feeds, out_names) if batcher else m.run(feeds, out_names)
        except RequestError:
            raise
        except Exception as e:
            raise RequestError(f"model {m.name} failed on this input: {str(e)[:300]}", 400) from None
        if not batcher:
            rows = next(iter(feeds.values())).shape[0] if next(iter(feeds.values())).ndim else 1
            self.metrics.batch.observe(rows, (m.name, m.version))
        resp: dict[str, Any] = {
            "model_name": m.name,
            "model_version": m.version,
            "outputs": [encode_output(k, v) for k, v in results.items()],
        }
        if "id" in body:
            resp["id"] = body["id"]
        if "parameters" in body and isinstance(body["parameters"], dict):
            resp["parameters"] = body["parameters"]
        if self.hooks:
            self._collect(request, m, feeds, results)
        return web.Response(body=dumps(resp), content_type=JSON)

    async def score(self, request: web.Request) -> web.Response:
        """Azure ML-style: {"data": [[...], ...]} -> the first output as a JSON list; a user script's run(raw_data)
        replaces the default ONNX call (it gets the raw body text, as in Azure ML)."""
        if not self.ready:
            raise RequestError("models are still loading: retry when /v2/health/ready says ready", 503)
        if self.script is not None:
            raw = (await self._raw_body(request)).decode("utf-8", errors="replace")
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(self._script_pool, self.script.run, raw)
            except Exception as e:
                raise RequestError(f"scoring script failed: {type(e).__name__}: {e}", 500) from None
            if isinstance(result, bytes | str):
                return web.Response(body=result, content_type=JSON)
            return web.Response(body=dumps(result), content_type=JSON)
        body = await self._body(request)
        if not isinstance(body, dict) or "data" not in body:
            raise RequestError('request body must be {"data": [[...], ...]}')
        m = next(iter(self.models.values()))
        request["model"], request["version"] = m.name, m.version
        spec = m.inputs[0]
        data = body["data"]
        try:
            arr = np.asarray(data, dtype=np.float32 if spec.datatype == "FP32" else None)
        except (ValueError, TypeError):
            raise RequestError("'data' must be a rectangular list of numbers") from None
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None, ...]
        if arr.ndim != len(spec.shape) or any(
            s not in (-1, d) for s, d in zip(spec.shape, arr.shape, strict=True)
        ):
            raise RequestError(f"'data' has shape {list(arr.shape)}; the model expects {spec.shape}")
        feeds = {spec.name: arr}
        batcher = self.batchers.get(m.name)
        results = await batcher.submit(feeds, None) if batcher else m.run(feeds)
        if self.hooks:
            self._collect(request, m, feeds, results)
        return web.Response(body=dumps(next(iter(results.values()))), content_type=JSON)

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
        self.draining = True
        self.metrics.ready.set((), 0)
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


def _load_script(path: str) -> Any:
    """Import a user scoring script; a syntax error is reported with file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scoring script {path} does not exist")
    source = p.read_text()
    try:
        compile(source, str(p), "exec")
    except SyntaxError as e:
        raise SyntaxError(f"scoring script {p}:{e.lineno}: {e.msg}") from None
    spec = importlib.util.spec_from_file_location("mlinfra_user_score", p)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "run"):
        raise AttributeError(f"scoring script {p} defines no run(raw_data) function")
    return module


def openapi_doc(server: ScoringServer) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "liveness"}},
        "/v2/health/ready": {"get": {"summary": "readiness"}},
        "/v2": {"get": {"summary": "server metadata"}},
        "/score": {"post": {"summary": 'Azure ML-style scoring: {"data": [[...]]}'}},
        "/metrics": {"get": {"summary": "Prometheus metrics"}},
    }
    for m in server.models.values():
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
