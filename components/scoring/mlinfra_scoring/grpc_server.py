"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) beside the REST server, on the
same event loop and the same data plane: the same validation, keys, metrics, batching and data collection.

Keys travel as ``authorization: Bearer <key>`` metadata (a missing or wrong one is UNAUTHENTICATED). Tensors come in
typed ``contents`` or in ``raw_input_contents`` (laid out as the REST binary extension lays them out, so they share
its decoder); outputs always go back in ``raw_output_contents``, as Triton answers. Errors map to gRPC status codes
with the data plane's message. grpcio is imported only when a gRPC port is configured.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from mlinfra_scoring.batching import EXECUTION_ROWS
from mlinfra_scoring.models import RequestError
from mlinfra_scoring.oip import oip_pb2 as pb
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


def _wrap(
    server: ScoringServer, name: str, fn: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """Authentication, request ids, errors as status codes, and the same metrics as REST (route ``grpc_<rpc>``)."""
    route = "grpc_" + "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

    async def handler(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
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
                server.grpc_inferring += 1
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
                server.grpc_inferring -= 1
            model, version = (call.model, str(call.version)) if status != 401 else ("unknown", "")
            server.metrics.requests.inc((route, model, version, str(status)))
            server.metrics.latency.observe(time.perf_counter() - t0, (route, model, version))
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


def handlers(server: ScoringServer) -> grpc.GenericRpcHandler:
    service = Service(server)
    kinds: dict[str, tuple[type[Message], type[Message]]] = {
        "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _wrap(server, name, getattr(service, name)),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
            for name, (req, resp) in kinds.items()
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
