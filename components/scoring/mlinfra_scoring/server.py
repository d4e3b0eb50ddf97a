"""The scoring server's HTTP layer: aiohttp on one event loop (uvloop when installed). It authenticates (bearer
keys), decodes bodies, maps the data plane's errors to status codes, counts every request in the Prometheus
metrics and writes a JSON access log. What a request asks of the models is the data plane's (dataplane.py); which
models are served, the model repository's (repository.py) — the split KServe's model server uses."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from mlinfra_scoring import __version__, binary, collection, collector, jsonbody, otel
from mlinfra_scoring import direct as direct_path
from mlinfra_scoring.batching import EXECUTION_ROWS
from mlinfra_scoring.dataplane import DataPlane, Hook
from mlinfra_scoring.metrics import Metrics
from mlinfra_scoring.models import OIP_TO_NUMPY, LoadedModel, RequestError
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
INFERENCE_ROUTES = frozenset(("infer", "infer_version", "score"))
"""The routes admission control bounds (--max-queue); health, metadata and /metrics are always answered."""
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""A client's request id is kept only if it is a short token (log safety)."""

__all__ = ["ModelSpec", "ScoringServer", "ServerConfig", "new_request_id", "run"]

_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    """A request id for a request that brought none: 32 hex digits, a random prefix per process and a counter —
    unique across replicas and restarts, as a uuid4 would be, for a tenth of its cost on every request."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


@dataclass
class ServerConfig:
    models: list[ModelSpec]
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = None
    """Also serve the Open Inference Protocol's gRPC service here (grpc_server.py); None: REST only."""
    grpc_frontend: str | None = None
    """Who serves gRPC: the native front end at this path (mlinfra-grpcfront, components/grpcfront), or "grpcio" for
    the in-process service. None: mlinfra-grpcfront if it is on PATH (images carry it), else grpcio."""
    keys: list[str] = field(default_factory=list)
    script: str | None = None
    max_batch_size: int | None = None
    """Rows per merged batch for every model (1: dynamic batching off); None: 64 for each model whose batch axis is
    dynamic, off for the others (repository.AUTO_BATCH)."""
    max_batch_delay_ms: float = 0.0
    max_body_mb: float = 10.0
    access_log: bool = True
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 1
    drain_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0
    """A connection with no request being handled for this long is closed: idle keep-alive, a client that connects
    and sends nothing, or sends its headers too slowly (the request starts only once they are complete)."""
    body_timeout_s: float = 30.0
    """Reading a request's body may take this long; a client trickling it gets 408."""
    max_connections: int = 1024
    """Connections beyond this many are closed as they arrive."""
    max_queue: int = 256
    """Inference requests (REST infer and /score, gRPC ModelInfer) in progress at once; one more is refused at once
    with 503 and ``Retry-After`` (gRPC UNAVAILABLE) rather than queued behind the others: admission control, so a
    burst beyond what the server can answer promptly costs the callers past the bound a retry, not every caller a
    long wait."""
    direct_path: bool = True
    """Answer a whole one-read inference request from the connection's bytes (direct.py): the same answers as
    aiohttp's handler, for a fraction of its CPU. False: every request goes through aiohttp (for comparisons)."""
    busy_poll_us: float = 0.0
    """Spin-then-block (_BusyPoll): when a request is answered and none is waiting, the event loop polls its sockets
    without sleeping for up to this many microseconds, if the last idle gap was shorter (adaptive), so a caller that
    comes straight back is read by a running core. 0 (the default): sleep at once. It lifts one-connection
    throughput on a shared VM (benchmarks/serving/BUSYPOLL.md) and costs CPU in the gaps it spins through, which a
    CPU-based autoscaler counts as load: for replicas with cores of their own."""
    drain_linger_s: float = 0.0
    """On SIGTERM, wait up to this long for clients to close their connections, answering every request with
    ``Connection: close`` and closing only connections idle past ``idle_timeout_s``. A pooling proxy (nginx
    behind a Kubernetes Service, whose keep-alive connections stay with the old pod) then never sends a request on a
    connection the server is closing. 0: close idle connections at once (the Docker target's router has already
    forgotten a replica it stops)."""
    trust: str | None = None
    """A trust folder (mlinfra_scoring.provenance): every model must match a signature by a trusted key before it
    loads; None: models are not checked."""


class _Handler(RequestHandler):
    """aiohttp's connection handler, with a malformed request (a header line too long, a broken request line or
    header, a body whose framing does not parse) answered as every other bad request: a JSON error naming the problem
    and the fix, counted in the metrics, one access-log line — not a text/plain 400 and a traceback in the log for each
    one a client sends."""

    owner: ScoringServer

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or request.writer.output_size > 0:  # not a request aiohttp could not parse
            return super().handle_error(request, status, exc, message)
        reason = _malformed(exc, message)
        resp = web.Response(body=dumps({"error": reason}), status=400, content_type=JSON)
        resp.force_close()
        rid = new_request_id()
        resp.headers["X-Request-Id"] = rid
        self.owner.metrics.requests.inc(("malformed", "", "", "400"))
        self.owner.access_log(rid, "", "", 400, 0.0, error=reason[:200])
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A client's malformed bytes met after its answer (aiohttp reads what is left of a body, which may not
        decode): one JSON log line, not a traceback. Anything else is logged as aiohttp does."""
        exc = kw.get("exc_info")
        chain: list[BaseException] = []
        while isinstance(exc, BaseException) and len(chain) < 5:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        bad = next((e for e in chain if isinstance(e, http_exceptions.HttpProcessingError)), None)
        if bad is None:
            super().log_exception(*args, **kw)
            return
        reason = _malformed(bad, getattr(bad, "message", None))
        line = {"ts": round(time.time(), 3), "event": "client_error", "error": reason}
        self.owner._log.write(dumps(line).decode() + "\n")


def _malformed(exc: BaseException | None, message: str | None) -> str:
    """What is wrong with a request aiohttp's parser refused, and what to do (no client bytes are echoed)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return (
            "malformed request: its request line or a header line is longer than 8190 bytes; send large values in "
            "the body"
        )
    if isinstance(exc, http_exceptions.BadStatusLine | http_exceptions.BadHttpMethod):
        return "malformed request: the request line is not 'METHOD /path HTTP/1.1'"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "malformed request: a header is invalid (name: value, no control characters)"
    if isinstance(exc, http_exceptions.TransferEncodingError | http_exceptions.ContentLengthError):
        return "malformed request: the body does not match its Content-Length or chunked framing"
    if isinstance(exc, http_exceptions.ContentEncodingError) or "content-encoding" in (message or "").lower():
        return "malformed request: the body does not decode as its Content-Encoding says"
    # The parser's reason comes first (a fixed phrase, e.g. "Invalid header value char"); the client's bytes follow.
    reason = (message or "").split(":\n", 1)[0].split("\n", 1)[0][:100]
    if not reason.isascii() or not reason.isprintable() or "b'" in reason or '"' in reason:
        reason = type(exc).__name__ if exc else "unparsable"
    return f"malformed request ({reason}): see RFC 9112 for HTTP/1.1's syntax"


class _BusyPoll:
    """The event loop's spin-then-block (ServerConfig.busy_poll_us), as Linux's busy_poll and ONNX Runtime's spinning
    thread pools do it. When a request is answered and no other is waiting, a window opens during which a callback
    keeps rescheduling itself, so every loop turn polls the sockets with a zero timeout instead of sleeping in epoll.
    A sleeping vCPU wakes slowly and runs its first instructions cold (measured 2026-12-03: a one-row ONNX Runtime
    run takes ≈ 60 µs after the thread slept in epoll, ≈ 20 µs after it spun, ≈ 8 µs back to back).

    Adaptive: the window opens only if the server's last idle gap (from an answer, with nothing waiting, to the next
    request's first bytes) was shorter than the window, i.e. when spinning would have caught the request. A server
    whose requests come further apart never spins; one whose callers come back at once spins in each gap, and each
    gap at most one window. ``spent`` (a counter) gets the seconds each window stayed open: the CPU it cost."""

    __slots__ = ("idle_since", "loop", "opened", "predict", "spent", "until", "window")

    def __init__(self, window_s: float, spent: Any) -> None:
        self.window = window_s
        self.until = 0.0
        self.opened: float | None = None  # when the open window opened; None: closed
        # The last answer that left nothing waiting, until a request arrives.
        self.idle_since: float | None = None
        self.predict = False  # the last idle gap was shorter than the window: the next one likely is too
        self.loop: asyncio.AbstractEventLoop | None = None
        self.spent = spent

    def arrived(self) -> None:
        """A request's first bytes arrived."""
        if self.idle_since is not None:
            self.predict = time.perf_counter() - self.idle_since < self.window
            self.idle_since = None

    def idle(self) -> None:
        """A request was answered and no other is waiting: the loop would sleep now."""
        now = time.perf_counter()
        self.idle_since = now
        if not self.predict:
            return
        self.until = now + self.window
        if self.opened is None:
            self.opened = now
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        now = time.perf_counter()
        if now < self.until and self.idle_since is not None:  # open, and still nothing to do
            assert self.loop is not None
            self.loop.call_soon(self._spin)
        elif self.opened is not None:
            self.spent.inc((), now - self.opened)
            self.opened = None


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection so the server can bound connections and close idle ones (aiohttp
    has no header-read timeout: a connection that never completes its headers would stay open for good)."""

    def __init__(self, inner: Any, owner: ScoringServer) -> None:
        self.inner, self.owner = inner, owner
        self.transport: Any = None
        self.busy = 0  # requests being handled on this connection (the middleware counts)
        self.waiting = False  # a request's bytes arrived and its response is not made yet
        self.since = time.monotonic()  # connected, or the last request ended
        self.paused = False  # the client reads slower than the server writes (transport flow control)
        # Inference requests answered from the bytes (direct.py) until one is not: then aiohttp's for good.
        self.direct = direct_path.DirectConnection(owner, self) if owner.direct_path else None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.owner._conns[transport] = self
        self.inner.connection_made(transport)
        if len(self.owner._conns) > self.owner.config.max_connections:
            self.owner.metrics.connections_refused.inc()
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._conns.pop(self.transport, None)
        if self.direct is not None:
            self.direct.close()
        self.answered()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.waiting:
            self.waiting = True
            self.owner.waiting += 1
            if self.owner.busy_poll is not None:
                self.owner.busy_poll.arrived()
        direct = self.direct
        if direct is not None:
            if direct.busy is not None:  # its answer is being made: these bytes wait their turn
                direct.pending.append(data)
                return
            rest = direct.take(data)
            if rest is None:
                return
            self.to_aiohttp(rest)
            return
        self.inner.data_received(data)

    def to_aiohttp(self, data: bytes) -> None:
        """From now on this connection's bytes are aiohttp's, starting with DATA (all the direct path kept)."""
        self.direct = None
        self.inner.data_received(data)

    def answered(self) -> None:
        if self.waiting:
            self.waiting = False
            self.owner.waiting -= 1
            if self.owner.busy_poll is not None and self.owner.waiting == 0:  # the loop would sleep now
                self.owner.busy_poll.idle()

    def eof_received(self) -> Any:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        self.inner.resume_writing()


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
            in_progress=lambda: self.waiting + self.grpc_inferring,
        )
        self.dataplane = DataPlane(self.repository, self.metrics, self._log)
        self._conns: dict[Any, _Guard] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.collector: Any = None  # mlinfra_scoring.collector.Collector when MLINFRA_SERVE_COLLECT is set
        self.otlp: Any = None  # mlinfra_scoring.telemetry.Telemetry when MLINFRA_SERVE_OTLP_ENDPOINT is set
        self.in_flight = 0  # REST and gRPC requests being handled; read by the gauge at scrape time
        self.inferring = 0  # of which inference requests (admission control: admit/release)
        # Requests received and not answered yet, handled or still queued: REST connections whose request bytes
        # arrived (_Guard), gRPC inference calls in progress. Dynamic batching's lone-request path reads it.
        self.waiting = 0
        self.grpc_inferring = 0
        self.metrics.in_flight.track(lambda: self.in_flight)
        self._keys = [k.encode() for k in config.keys if k]
        self.body_limit = int(config.max_body_mb * 1024 * 1024)  # bytes: --max-body-mb, on every path
        self.direct_path = config.direct_path and direct_path.AVAILABLE
        self._front: Any = None  # grpc_server.NativeFrontend when gRPC goes through mlinfra-grpcfront
        self.busy_poll = (
            _BusyPoll(config.busy_poll_us / 1e6, self.metrics.busy_poll) if config.busy_poll_us > 0 else None
        )

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
        self.dataplane.load(self.config.models, self.config.script, self.config.providers, self.config.trust)

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
            runner, listener = await self._listen()
            state["runner"], state["listener"] = runner, listener
            state["port"] = listener.sockets[0].getsockname()[1]

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
                state["listener"].close()
                await state["runner"].cleanup()
                if self._watchdog is not None:
                    self._watchdog.cancel()

            asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        return int(state["port"]), stop

    # -- transport helpers -----------------------------------------------------------------------------------

    def admit(self) -> None:
        """Admission control for one inference request: refused (503, Retry-After: 1) when max_queue are already in
        progress; else counted until :meth:`release`."""
        if self.inferring >= self.config.max_queue:
            self.metrics.shed.inc()
            raise RequestError(
                f"server busy: {self.inferring} inference requests are in progress, the most it takes at once "
                "(--max-queue): retry after 1 s, or spread the load over more replicas",
                503,
                retry_after=1,
            )
        self.inferring += 1

    def release(self) -> None:
        self.inferring -= 1

    def _authorized(self, request: web.Request) -> bool:
        return self.authorized_header(request.headers.get("Authorization", ""))

    def authorized_header(self, header: str) -> bool:
        """Whether an Authorization value (REST header or gRPC metadata) carries an accepted key."""
        if not self._keys:
            return True
        if header[:7].lower() != "bearer ":  # the scheme is case-insensitive (RFC 9110 §11.1)
            return False
        given = header[7:].strip().encode()
        ok = False
        for key in self._keys:  # compare with every key: constant time whichever matches
            ok |= hmac.compare_digest(given, key)
        return ok

    async def _raw_body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 past --max-body-mb (announced or streamed)."""
        limit = self.body_limit
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(
                f"request body is {request.content_length} bytes; the limit is {limit} "
                f"({self.config.max_body_mb:g} MB, --max-body-mb)",
                413,
            )
        try:
            if request.content.is_eof():  # the whole body came with the headers (the usual case): no timer
                raw = await request.read()
            else:
                async with asyncio.timeout(self.config.body_timeout_s):
                    raw = await request.read()
        except TimeoutError:
            raise RequestError(
                f"request body not received within {self.config.body_timeout_s:g} s: send it at once", 408
            ) from None
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
        return self._json(await self._raw_body(request), "request body")

    @staticmethod
    def _json(raw: bytes, what: str) -> Any:
        try:  # numeric tensor data in large bodies comes as numpy arrays parsed in C (jsonbody)
            return jsonbody.loads(raw, loads)
        except (ValueError, TypeError) as e:
            hint = (
                f" (binary tensors need the {binary.HEADER} header: the length of the JSON before them)"
                if b"\x00" in raw[:4096] or b"binary_data_size" in raw[:65536]
                else ""
            )
            raise RequestError(f"{what} is not valid JSON: {str(e)[:200]}{hint}") from None

    def _model(self, request: web.Request) -> LoadedModel:
        m = self.repository.get(request.match_info["name"], request.match_info.get("version"))
        request["version"] = m.version
        return m

    # -- middleware ------------------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            self._front is not None
            and request.match_info.route.name == "front"
            and self._front.trusted(request)
        ):
            return await self._forwarded(request)
        t0 = time.perf_counter()
        rid = request["rid"] = self.request_id(request.headers.get("X-Request-Id", ""))
        span = None
        if self.otlp is not None:
            resource = request.match_info.route.resource
            span = self.start_span(
                request.method, resource.canonical if resource else "other", request.headers, rid
            )
        guard = self._conns.get(request.transport)
        if guard is not None:
            guard.busy += 1
        self.in_flight += 1
        status = 500
        admitted = False
        match_info = request.match_info
        route = match_info.route.name or "other"
        try:
            if route not in ("live", "ready", "metrics", "openapi") and not self._authorized(request):
                raise RequestError("missing or wrong key: send 'Authorization: Bearer <key>'", 401)
            if route in INFERENCE_ROUTES:
                self.admit()
                admitted = True
            resp = await handler(request)
            status = resp.status
        except web.HTTPException as e:
            status = e.status
            kept = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}  # 405: Allow
            resp = web.Response(
                body=dumps({"error": e.reason}), status=status, content_type=JSON, headers=kept
            )
        except Exception as e:  # a RequestError's status; a bug or script failure: 500 (server stays up)
            status, body, extra = self.error_reply(e)
            resp = web.Response(body=body, status=status, content_type=JSON, headers=extra)
        finally:
            self.in_flight -= 1
            if admitted:
                self.release()
            if guard is not None:
                guard.busy -= 1
                guard.since = time.monotonic()
                guard.answered()
        resp.headers["X-Request-Id"] = rid
        if self.dataplane.draining:
            resp.force_close()  # the client opens its next request elsewhere
        self.account(
            route,
            match_info.get("name") or request.get("model", ""),  # /score names no model in its path
            request.get("version", ""),
            status,
            time.perf_counter() - t0,
            rid,
            request.method,
            request.path,
            span,
        )
        return resp

    @staticmethod
    def request_id(given: str) -> str:
        """The request's id: the client's X-Request-Id if it is a short token (log safety), else a new one."""
        return given if given and REQUEST_ID.fullmatch(given) else new_request_id()

    def _labels(self, model: str, version: str, status: int) -> tuple[str, str]:
        """A request's model and version labels. They come only from served models: a name from the URL that is not
        served (or a request that was not authorized) counts under "unknown", so no client can grow /metrics."""
        if model and (model not in self.repository.models or status == 401):
            return "unknown", ""
        return model, version

    def start_span(self, method: str, pattern: str, headers: Any, rid: str) -> Any:
        """A request's SERVER span, child of the caller's traceparent (otel.py; only with OTLP export on)."""
        EXECUTION_ROWS.set(0)
        return self.otlp.start_span(
            f"{method} {pattern}",
            headers,
            time.time_ns(),
            {"http.request.method": method, "mlinfra.request_id": rid},
        )

    def account(
        self,
        route: str,
        model: str,
        version: str,
        status: int,
        seconds: float,
        rid: str,
        method: str,
        path: str,
        span: Any = None,
    ) -> None:
        """Count an answered REST request in the metrics, end its trace span, write its access-log line: the
        middleware's and the direct path's (direct.py) bookkeeping, one and the same."""
        model, version = self._labels(model, version, status)
        self.metrics.requests.inc((route, model, version, str(status)))
        self.metrics.latency.observe(seconds, (route, model, version))
        if span is not None:
            self.otlp.end_span(
                span,
                {
                    "mlinfra.model": model,
                    "mlinfra.model.version": version,
                    "mlinfra.batch_size": EXECUTION_ROWS.get(),
                    "http.route": route,
                    "http.response.status_code": status,
                },
                error=status >= 500,
            )
        self.access_log(rid, method, path, status, seconds)

    @staticmethod
    def error_reply(e: BaseException) -> tuple[int, bytes, dict[str, str] | None]:
        """The status, JSON body and extra headers that answer a failed request: a RequestError's own status (and
        Retry-After), else 500 with the message (a bug or a user-script failure; the server stays up)."""
        if isinstance(e, RequestError):
            extra = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
            return e.status, dumps({"error": str(e)}), extra
        return 500, dumps({"error": f"{type(e).__name__}: {e}"}), None

    def access_log(self, rid: str, method: str, path: str, status: int, seconds: float, **extra: Any) -> None:
        """One JSON access-log line, when the access log is on (a JSON encoder: no client value can forge a field)."""
        if self.config.access_log:
            entry = {
                "ts": round(time.time(), 3),
                "request_id": rid,
                "method": method,
                "path": path[:512],
                "status": status,
                "ms": round(seconds * 1000, 3),
                **extra,
            }
            self._log.write(dumps(entry).decode() + "\n")

    async def _forwarded(self, request: web.Request) -> web.StreamResponse:
        """A gRPC call from the native front end: grpc_server runs it with its own accounting (keys, metrics, traces,
        admission); only the connection's bookkeeping is done here."""
        guard = self._conns.get(request.transport)
        if guard is not None:
            guard.busy += 1
        try:
            return await self._front.handle(request)
        finally:
            if guard is not None:
                guard.busy -= 1
                guard.since = time.monotonic()
                guard.answered()

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
        raw = await self._raw_body(request)
        body, content_type, extra = await self.infer_reply(
            m, raw, request.headers.get(binary.HEADER), request["rid"], request.headers
        )
        return web.Response(body=body, content_type=content_type, headers=extra)

    async def infer_reply(
        self, m: LoadedModel, raw: bytes, header_length: str | None, rid: str, headers: Any
    ) -> tuple[bytes, str, dict[str, str] | None]:
        """An inference request's body (RAW; HEADER_LENGTH: the binary extension's header) → the response's body,
        content type and extra headers. Both REST paths (aiohttp's handler and direct.py) answer through it."""
        blob = None
        if header_length is None:
            body = self._json(raw, "request body")
        else:  # the binary tensor data extension: a JSON header, then raw tensor bytes
            head, blob = binary.split(raw, header_length)
            body = self._json(
                head, f"the JSON part of the body (its first {len(head)} bytes, {binary.HEADER})"
            )
        resp, chunks = await self.dataplane.infer(m, body, rid, headers, blob)
        if not chunks:
            return dumps(resp), JSON, None
        head = dumps(resp)
        return b"".join([head, *chunks]), binary.CONTENT_TYPE, {binary.HEADER: str(len(head))}

    async def score(self, request: web.Request) -> web.Response:
        """Azure ML-style /score: the user script's run(raw_data), else the first model's first output."""
        self.dataplane.require_ready()
        if self.dataplane.script is not None:
            result = await self.dataplane.score_script(await self._raw_body(request), request["rid"])
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
        app = web.Application(middlewares=[self.middleware], client_max_size=self.body_limit + 1)
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
        if self._front is not None:  # the native gRPC front end's calls (grpc_server.NativeFrontend)
            r.add_post(self._front.route, self._front_untrusted, name="front")
        return app

    @staticmethod
    async def _front_untrusted(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()  # without the front end's token the route does not exist

    # -- running ---------------------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Listen, load models in the background, and on SIGTERM/SIGINT drain in-flight requests and return 0. A
        model whose signature does not verify (``--trust``) stops the server with exit code 3 after saying why: it
        never becomes ready, and an orchestrator sees a failing container rather than one that is merely slow."""
        grpc = None
        frontend = None
        if self.config.grpc_port is not None:
            from mlinfra_scoring import grpc_server  # grpcio only when asked for

            path = grpc_server.frontend_path(self.config.grpc_frontend)
            if path is not None:
                self._front = frontend = grpc_server.NativeFrontend(self, path)
        runner, listener = await self._listen()
        if frontend is not None:
            assert self.config.grpc_port is not None
            await frontend.start(self.config.host, self.config.grpc_port, self.config.port)
        elif self.config.grpc_port is not None:
            grpc = await grpc_server.start(self, self.config.host, self.config.grpc_port, self.body_limit)
        print(
            json.dumps(
                {
                    "event": "listening",
                    "host": self.config.host,
                    "port": self.config.port,
                    "grpc_port": self.config.grpc_port,
                    "grpc_frontend": None
                    if self.config.grpc_port is None
                    else (frontend.path if frontend else "grpcio"),
                    "models": [m.name for m in self.config.models],
                    "auth": bool(self._keys),
                    "max_batch_size": self.config.max_batch_size or "auto",
                    "busy_poll_us": self.config.busy_poll_us,
                    "direct_path": self.direct_path,
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
        code = 0
        if self.dataplane.refused:
            code = 3
            stop.set()
        flusher = asyncio.create_task(self._flush_logs())
        await stop.wait()
        self.dataplane.start_draining()
        print(json.dumps({"event": "draining", "in_flight": self.in_flight}), file=self._log, flush=True)
        if frontend is not None:  # new calls refused, calls in flight finish (they need this server's REST)
            await frontend.stop(self.config.drain_timeout_s)
        linger = time.monotonic() + min(self.config.drain_linger_s, self.config.drain_timeout_s)
        while self._conns and time.monotonic() < linger:
            await asyncio.sleep(0.05)
        listener.close()  # no new connections; the ones open finish their requests
        deadline = time.monotonic() + self.config.drain_timeout_s
        if grpc is not None:  # new calls refused, calls in flight finish (up to the drain timeout)
            await grpc.stop(self.config.drain_timeout_s)
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
        if self._watchdog is not None:
            self._watchdog.cancel()
        print(json.dumps({"event": "stopped", "in_flight": self.in_flight}), file=self._log, flush=True)
        return code

    async def _listen(self) -> tuple[web.AppRunner, asyncio.Server]:
        """aiohttp's handler behind a listener of our own: each connection wrapped in a :class:`_Guard` (bounded
        connections; idle ones closed by :meth:`_close_idle`)."""
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.drain_timeout_s,
            keepalive_timeout=self.config.idle_timeout_s,
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def handler() -> _Handler:
            """A connection's handler, made as web.Server makes them, answering malformed requests as ours."""
            h = _Handler(server, loop=loop, **getattr(server, "_kwargs", {}))
            h.owner = self
            return h

        listener = await loop.create_server(
            lambda: _Guard(handler(), self),
            self.config.host,
            self.config.port,
            backlog=1024,
            reuse_address=True,
        )
        self._watchdog = asyncio.create_task(self._close_idle())
        return runner, listener

    async def _close_idle(self) -> None:
        """Close connections that have handled no request for idle_timeout_s (never one in the middle of one)."""
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout_s / 4))
            now = time.monotonic()
            for guard in list(self._conns.values()):
                if guard.busy == 0 and now - guard.since > self.config.idle_timeout_s:
                    self.metrics.connections_idle_closed.inc()
                    guard.transport.close()

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._log.flush()


def _responses(*codes: int, ok: dict[str, Any] | None = None, text: bool = False) -> dict[str, Any]:
    """OpenAPI responses: 200 (with OK's schema, or Prometheus text) and the error codes the route can answer."""
    why = {
        400: "the request does not match the model's signature or the protocol (the error names the value)",
        401: "missing or wrong bearer key",
        404: "no such model or version",
        413: "body over --max-body-mb",
        500: "the user scoring script failed",
        503: "models still loading, or the server is draining",
    }
    error = {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    out: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"text/plain": {"schema": {"type": "string"}}}
            if text
            else {JSON: {"schema": ok or {}}},
        }
    }
    for c in codes:
        out[str(c)] = {"description": why[c], "content": error}
    return out


def openapi_doc(server: ScoringServer) -> dict[str, Any]:
    """A valid OpenAPI 3.0 description of every route: parameters, request bodies with their required fields,
    every response code a route answers, and which routes need no key (``security: []``). Each served model's
    signature is in ``x-mlinfra-models``."""
    names = [m.name for m in server.repository]
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": names or ["-"]},
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    public: dict[str, Any] = {"security": []}
    ref = lambda n: {"$ref": f"#/components/schemas/{n}"}  # noqa: E731
    infer = {
        "summary": "Open Inference Protocol v2 inference",
        "description": (
            f"With the binary tensor data extension ({binary.EXTENSION}), the body is the JSON request followed by "
            f"raw tensor bytes, and {binary.HEADER} gives the JSON's length; a tensor sent that way has "
            "parameters.binary_data_size instead of data. Outputs come back in binary when the request's "
            "parameters.binary_data_output or an output's parameters.binary_data is true."
        ),
        "parameters": [
            {
                "name": binary.HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": ref("InferenceRequest")},
                binary.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": _responses(400, 401, 404, 413, 503, ok=ref("InferenceResponse")),
    }
    model_meta = {"summary": "model metadata", "responses": _responses(401, 404, ok=ref("ModelMetadata"))}
    model_ready = {"summary": "model readiness", "responses": _responses(401, 404, 503, ok=ref("Ready"))}
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": {"summary": "liveness", **public, "responses": _responses(ok=ref("Live"))}
        },
        "/v2/health/ready": {
            "get": {"summary": "readiness", **public, "responses": _responses(503, ok=ref("Ready"))}
        },
        "/v2": {
            "get": {"summary": "server metadata", "responses": _responses(401, ok=ref("ServerMetadata"))}
        },
        "/v2/models/{name}": {"parameters": [name], "get": model_meta},
        "/v2/models/{name}/versions/{version}": {"parameters": [name, version], "get": model_meta},
        "/v2/models/{name}/ready": {"parameters": [name], "get": model_ready},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [name, version], "get": model_ready},
        "/v2/models/{name}/infer": {"parameters": [name], "post": infer},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [name, version], "post": infer},
        "/score": {
            "post": {
                "summary": 'Azure ML-style scoring: {"data": [[...]]} to the first model\'s first output',
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["data"],
                                "properties": {"data": {"type": "array", "items": {}}},
                            }
                        }
                    },
                },
                "responses": _responses(400, 401, 413, 500, 503, ok={}),
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", **public, "responses": _responses(text=True)}},
        "/openapi.json": {
            "get": {"summary": "this document", **public, "responses": _responses(ok={"type": "object"})}
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(OIP_TO_NUMPY)},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    }
    spec = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "Tensor": tensor,
        "TensorSpec": spec,
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": ref("Tensor")},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                    },
                },
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "outputs": {"type": "array", "items": ref("Tensor")},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": ref("TensorSpec")},
                "outputs": {"type": "array", "items": ref("TensorSpec")},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlinfra scoring server", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}] if server.config.keys else [],
        "paths": paths,
        "x-mlinfra-models": {
            m.name: {
                "version": m.version,
                "inputs": [i.to_json() for i in m.inputs],
                "outputs": [o.to_json() for o in m.outputs],
            }
            for m in server.repository
        },
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
    collection.install(
        server.collector, on_drop=lambda model: server.metrics.collector_dropped.inc((model or "unknown",))
    )  # scoring scripts' Collector(...).collect goes to the same collector (a no-op without one)
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
        return asyncio.run(server.serve())
    else:
        return uvloop.run(server.serve())
