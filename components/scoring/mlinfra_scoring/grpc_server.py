"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) beside the REST server, on the
same event loop and the same data plane: the same validation, keys, metrics, batching and data collection.

Keys travel as ``authorization: Bearer <key>`` metadata (a missing or wrong one is UNAUTHENTICATED). Tensors come in
typed ``contents`` or in ``raw_input_contents`` (laid out as the REST binary extension lays them out, so they share
its decoder); outputs always go back in ``raw_output_contents``, as Triton answers. Errors map to gRPC status codes
with the data plane's message. grpcio is imported only when a gRPC port is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError, Message

from mlinfra_scoring.batching import EXECUTION_ROWS
from mlinfra_scoring.models import RequestError
from mlinfra_scoring.oip import oip_pb2 as pb
from mlinfra_scoring.repository import AUTO_BATCH
from mlinfra_scoring.server import REQUEST_ID, new_request_id

if TYPE_CHECKING:
    from mlinfra_scoring.server import ScoringServer

SERVICE = "inference.GRPCInferenceService"

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The data plane's HTTP statuses as gRPC codes (anything else: INTERNAL)."""


def grpc_code(status: int) -> int:
    """The numeric gRPC status code for the data plane's HTTP STATUS (0: OK)."""
    if status < 400:
        return grpc.StatusCode.OK.value[0]
    return STATUS.get(status, grpc.StatusCode.INTERNAL).value[0]


# Which InferTensorContents field carries each datatype (FP16 has none: it travels raw).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

PUBLIC = {"ServerLive", "ServerReady"}
"""RPCs answered without a key (as REST's health routes)."""


def request_body(req: pb.ModelInferRequest) -> tuple[dict[str, Any], memoryview | None]:
    """A ModelInferRequest as the data plane's request object (and the binary part, for raw contents)."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise RequestError(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs: give one per input, in order "
            "(or use contents for every input)"
        )
    inputs: list[dict[str, Any]] = []
    for i, t in enumerate(req.inputs):
        tensor: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        has_contents = t.HasField("contents")
        if raw:
            if has_contents:
                raise RequestError(
                    f"input {t.name!r} has contents, but the request carries its tensors in raw_input_contents: "
                    "send every input one way"
                )
            tensor["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS.get(t.datatype)
            if field is None:
                raise RequestError(
                    f"input {t.name!r}: datatype {t.datatype!r} has no contents field; send it in raw_input_contents"
                )
            values = getattr(t.contents, field)
            if t.datatype == "BYTES":
                try:
                    tensor["data"] = [bytes(v).decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise RequestError(
                        f"input {t.name!r}: a BYTES element is not UTF-8 text (the model's string tensors hold text)"
                    ) from None
            else:
                tensor["data"] = list(values)
        inputs.append(tensor)
    body: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if req.outputs:
        body["outputs"] = [{"name": o.name} for o in req.outputs]
    if req.id:
        body["id"] = req.id
    blob = memoryview(b"".join(raw)) if raw else None
    return body, blob


def infer_response(resp: dict[str, Any], chunks: list[bytes]) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(
        model_name=resp["model_name"], model_version=str(resp["model_version"]), id=str(resp.get("id") or "")
    )
    for o in resp["outputs"]:
        out.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
    out.raw_output_contents.extend(chunks)
    return out


class Call:
    """One call's request id and the model it named (for metrics)."""

    __slots__ = ("model", "rid", "version")

    def __init__(self, rid: str):
        self.rid, self.model, self.version = rid, "", ""


class Service:
    """The servicer: one handler per RPC, each authenticated and counted like a REST route."""

    def __init__(self, server: ScoringServer):
        self.server = server
        self.plane = server.dataplane

    async def ServerLive(
        self, req: pb.ServerLiveRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, req: pb.ServerReadyRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.health()[0])

    async def ModelReady(
        self, req: pb.ModelReadyRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ModelReadyResponse:
        m = self.server.repository.get(req.name, req.version or None)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(m))

    async def ServerMetadata(
        self, req: pb.ServerMetadataRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ServerMetadataResponse:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(
        self, req: pb.ModelMetadataRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ModelMetadataResponse:
        meta = self.server.repository.get(req.name, req.version or None).metadata()
        out = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for t in meta["inputs"]:
            out.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in meta["outputs"]:
            out.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return out

    async def ModelInfer(
        self, req: pb.ModelInferRequest, ctx: grpc.aio.ServicerContext, call: Call
    ) -> pb.ModelInferResponse:
        m = self.server.repository.get(req.model_name, req.model_version or None)
        call.model, call.version = m.name, m.version
        self.plane.require_ready()
        body, blob = request_body(req)
        headers = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
        resp, chunks = await self.plane.infer(m, body, call.rid, headers, blob)
        return infer_response(resp, chunks)


def _route(rpc: str) -> str:
    """The metrics' route label of gRPC method RPC: ModelInfer -> grpc_model_infer."""
    return "grpc_" + "".join("_" + c.lower() if c.isupper() else c for c in rpc).lstrip("_")


def _wrap(
    server: ScoringServer, name: str, fn: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """Authentication, request ids, errors as status codes, and the same metrics as REST (route ``grpc_<rpc>``)."""
    route = _route(name)

    async def handler(
        req: Any, ctx: grpc.aio.ServicerContext, calls: int = 1, forwarded: bool = False
    ) -> Any:
        """CALLS: the client calls REQ stands for (the native front end merges ModelInfer calls); FORWARDED: it came
        from the front end over loopback HTTP, where its connection already counts as a request in progress."""
        t0 = time.perf_counter()
        meta = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
        rid = meta.get("x-request-id", "")
        call = Call(rid if REQUEST_ID.fullmatch(rid) else new_request_id())
        span = None
        if server.otlp is not None:  # the traceparent comes as gRPC metadata
            EXECUTION_ROWS.set(0)
            span = server.otlp.start_span(
                f"inference.GRPCInferenceService/{name}",
                meta,
                time.time_ns(),
                {"rpc.system": "grpc", "rpc.method": name, "mlinfra.request_id": call.rid},
            )
        server.in_flight += 1
        status = 200
        admitted = False
        try:
            if name not in PUBLIC and not server.authorized_header(meta.get("authorization", "")):
                raise RequestError("missing or wrong key: send metadata 'authorization: Bearer <key>'", 401)
            if name == "ModelInfer":
                server.admit()
                admitted = True
                server.grpc_inferring += not forwarded
            return await fn(req, ctx, call)
        except RequestError as e:
            status = e.status
            pushback = (("grpc-retry-pushback-ms", str(e.retry_after * 1000)),) if e.retry_after else ()
            await ctx.abort(STATUS.get(e.status, grpc.StatusCode.INTERNAL), str(e), pushback)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # a bug: INTERNAL with the message; the server stays up
            status = 500
            await ctx.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            server.in_flight -= 1
            if admitted:
                server.release()
                server.grpc_inferring -= not forwarded
            model, version = (call.model, str(call.version)) if status != 401 else ("unknown", "")
            server.metrics.requests.inc((route, model, version, str(status)), calls)
            took = time.perf_counter() - t0
            for _ in range(calls):
                server.metrics.latency.observe(took, (route, model, version))
            if span is not None:
                server.otlp.end_span(
                    span,
                    {
                        "mlinfra.model": model,
                        "mlinfra.model.version": version,
                        "mlinfra.batch_size": EXECUTION_ROWS.get(),
                        "rpc.grpc.status_code": grpc_code(status),
                    },
                    error=status >= 500,
                )

    return handler


KINDS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
"""Each RPC's request and response messages."""


def handlers(server: ScoringServer) -> grpc.GenericRpcHandler:
    service = Service(server)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _wrap(server, name, getattr(service, name)),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
            for name, (req, resp) in KINDS.items()
        },
    )


async def start(server: ScoringServer, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    """Listen on HOST:PORT (messages up to MAX_MESSAGE_BYTES each way) and return the running server."""
    srv = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    srv.add_generic_rpc_handlers((handlers(server),))
    if srv.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"gRPC could not listen on {host}:{port}")
    await srv.start()
    return srv


# -- the native front end (components/grpcfront) -----------------------------------------------------------------

FRONTEND = "mlinfra-grpcfront"
"""The native gRPC front end's executable name (images carry it at /opt/mlinfra/bin)."""
FRONT_ROUTE = "/_mlinfra/grpc/{method}"
FRONT_HEADER = "X-Mlinfra-Front"
CALLS_HEADER = "X-Mlinfra-Calls"
SHED_HEADER = "X-Mlinfra-Shed"
"""Calls the front end refused past --max-queue since its last report (NativeFrontend.handle counts them)."""
_NOT_METADATA = frozenset(
    ("host", "content-type", "content-length", "user-agent", "accept-encoding", "connection", "x-mlinfra-front",
     "x-mlinfra-calls", "x-mlinfra-shed")
)  # fmt: skip


def frontend_path(configured: str | None) -> str | None:
    """The native front end to run: CONFIGURED (a path; "grpcio": none), else mlinfra-grpcfront on PATH."""
    if configured == "grpcio":
        return None
    return configured or shutil.which(FRONTEND)


class _Aborted(grpc.aio.AbortError):
    """A forwarded call's status (what ``ServicerContext.abort`` ends a call with in grpcio)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]):
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class _ForwardedContext:
    """The part of ``grpc.aio.ServicerContext`` the service reads, for a call the native front end passed on."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Aborted(code, details, tuple(trailing_metadata))


class NativeFrontend:
    """gRPC through the native front end: the mlinfra-grpcfront process (HTTP/2, gRPC, merging concurrent ModelInfer
    calls) and the loopback route it hands calls to, which runs them through the same service and accounting
    (:func:`_wrap`) as the in-process grpcio server. The route answers only requests that carry this process's
    token, which the child gets in its environment (never on its command line)."""

    def __init__(self, server: ScoringServer, path: str):
        self.server, self.path = server, path
        self.token = secrets.token_urlsafe(32)
        self.route = FRONT_ROUTE
        service = Service(server)
        self._calls = {
            name: (_wrap(server, name, getattr(service, name)), kinds[0]) for name, kinds in KINDS.items()
        }
        self._proc: asyncio.subprocess.Process | None = None
        self._args: list[str] = []
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def trusted(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get(FRONT_HEADER, "").encode(), self.token.encode())

    async def handle(self, request: web.Request) -> web.Response:
        """One forwarded call (the caller checked :meth:`trusted`): its serialized response, or its status in
        Grpc-Status / Grpc-Message (percent-encoded) / Grpc-Retry-Pushback-Ms headers."""
        self._count_shed(request.headers.get(SHED_HEADER, ""))
        entry = self._calls.get(request.match_info["method"])
        if entry is None:
            return _status(grpc.StatusCode.UNIMPLEMENTED, f"no method {request.match_info['method'][:60]!r}")
        fn, kind = entry
        try:
            req = kind.FromString(await request.read())
        except DecodeError as e:
            return _status(grpc.StatusCode.INTERNAL, f"the front end sent a message that does not parse: {e}")
        metadata = tuple((k.lower(), v) for k, v in request.headers.items() if k.lower() not in _NOT_METADATA)
        calls = max(int(request.headers.get(CALLS_HEADER, "1") or 1), 1)
        if calls > 1:
            self.server.metrics.grpc_merged.inc((), calls)
        try:
            resp = await fn(req, _ForwardedContext(metadata), calls=calls, forwarded=True)
        except _Aborted as e:
            return _status(e.code, e.details, dict(e.trailing).get("grpc-retry-pushback-ms"))
        return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")

    def _count_shed(self, value: str) -> None:
        """The calls the front end refused past --max-queue (it bounds the calls it holds, merged or waiting, as this
        server bounds the ones it runs), counted as this server counts its own: in mlinfra_requests_shed_total and as
        503s of ModelInfer. The front end checks no key, so their model is "unknown", as for any call this server
        has not authorized. They arrive with the front end's next call, within milliseconds in a burst (the calls
        it holds are forwarded next)."""
        if not value.isdigit() or len(value) > 9:
            return
        n = int(value)
        self.server.metrics.shed.inc((), n)
        self.server.metrics.requests.inc((_route("ModelInfer"), "unknown", "", "503"), n)

    async def start(self, host: str, port: int, rest_port: int) -> None:
        """Run the front end on HOST:PORT, handing calls to this server's REST listener on REST_PORT; returns once it
        accepts connections (OSError if it cannot listen)."""
        cfg = self.server.config
        # This server's own address, as the front end and the start-up probe reach it.
        local = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else ("::1" if host == "::" else host)
        batch = cfg.max_batch_size or AUTO_BATCH
        # Merging changes what collection and monitoring see of a call (one record for the merged rows), and
        # --max-batch-size 1 turns batching off: then calls go one by one.
        merge = batch > 1 and not self.server.dataplane.hooks
        self._args = [
            self.path,
            "-listen", _address(host, port),
            "-upstream", f"http://{_address(local, rest_port)}",
            "-max-msg-mb", f"{cfg.max_body_mb:g}",
            f"-merge={'true' if merge else 'false'}",
            "-max-rows", str(batch),
            "-max-queue", str(cfg.max_queue),
            "-idle-timeout", f"{max(min(10.0, cfg.idle_timeout_s * 0.6), 0.05):g}s",
            "-drain-timeout", f"{cfg.drain_timeout_s:g}s",
            "-max-connections", str(cfg.max_connections),
            "-client-idle-timeout", f"{cfg.idle_timeout_s:g}s",
        ]  # fmt: skip
        await self._spawn()
        deadline = time.monotonic() + 10
        while True:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise OSError(
                    f"gRPC could not listen on {host}:{port}: {FRONTEND} exited with {self._proc.returncode}"
                )
            try:
                _, writer = await asyncio.open_connection(local, port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise OSError(
                        f"gRPC could not listen on {host}:{port}: {FRONTEND} did not start"
                    ) from None
                await asyncio.sleep(0.02)
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        env = {**os.environ, "MLINFRA_GRPCFRONT_TOKEN": self.token}
        self._proc = await asyncio.create_subprocess_exec(
            *self._args, env=env, stdin=asyncio.subprocess.DEVNULL
        )

    async def _supervise(self) -> None:
        """Restart the front end if it dies (once a second at most), saying so in the log."""
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            print(json.dumps({"event": "grpc_frontend_exited", "code": code, "restart_in_s": 1}), flush=True)
            await asyncio.sleep(1)
            if not self._stopping:
                await self._spawn()

    async def stop(self, timeout: float) -> None:
        """SIGTERM: the front end refuses new calls and lets the ones in flight finish (up to TIMEOUT)."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), timeout + 1)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


def _address(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 HOST in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _status(code: grpc.StatusCode, details: str, pushback: str | None = None) -> web.Response:
    headers = {"Grpc-Status": str(code.value[0]), "Grpc-Message": quote(details[:4000], safe="")}
    if pushback:
        headers["Grpc-Retry-Pushback-Ms"] = pushback
    return web.Response(status=200, headers=headers)
