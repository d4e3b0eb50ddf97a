"""Data collection from scoring scripts, in the spirit of Azure ML's ``azureml-ai-monitoring``::

    from mlinfra_scoring.collection import Collector

    inputs = Collector(name="model_inputs")
    outputs = Collector(name="model_outputs")

    def run(raw_data):
        rows = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
        context = inputs.collect(rows)                      # correlated with the request by its id
        probabilities = session.run(None, {"input": rows})[0]
        outputs.collect(probabilities, context)
        return probabilities.tolist()

Each ``collect`` goes to the endpoint's DataCollection through the scoring server's collector, with its guarantees
(sampling by request id, so a request's records are kept or skipped together; a bounded queue; the spool: nothing
lost while storage is down, nothing duplicated). A record names the collector (``collection``), the request id and
the ``correlation_id``; ``data`` is what was collected: numpy arrays, numbers, strings, lists and dicts of them, and
pandas DataFrames or Series (as records / lists) when pandas is installed. Something it cannot encode is dropped and
counted (``mlinfra_collector_dropped_total``) — the request still succeeds — and ``on_error`` hears why.

Outside a collecting server (no DataCollection attached, a test, a notebook) ``collect`` does nothing but return a
context, so the same script runs anywhere. When a DataCollection is attached and a ``/score`` request's script
collects nothing, the server records the raw request and response itself (collections ``request`` and
``response``), as Azure ML does.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Collector", "CorrelationContext"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_DEPTH = 32


@dataclass
class CorrelationContext:
    """What ties a request's records together: pass the first ``collect``'s context to the next."""

    id: str
    headers: dict[str, str] = field(default_factory=dict)

    def get_id(self) -> str:  # azureml-ai-monitoring's name for it
        return self.id


@dataclass
class _Request:
    """The request a script is answering (set by the scoring server around ``run``)."""

    request_id: str
    model: str
    version: str
    collected: int = 0


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("mlinfra_collection", default=None)
_sink: Callable[[dict[str, Any]], None] | None = None


def _no_count(_model: str) -> None:
    return None


_on_drop: Callable[[str], None] = _no_count


def install(sink: Callable[[dict[str, Any]], None] | None, on_drop: Callable[[str], None]) -> None:
    """Called by the scoring server: where records go (its collector hook; None: collection off) and how a dropped
    one is counted."""
    global _sink, _on_drop
    _sink, _on_drop = sink, on_drop


def begin(request_id: str, model: str, version: str) -> _Request:
    """Called by the scoring server in the context that will run the script's ``run``."""
    state = _Request(request_id, model, version)
    _current.set(state)
    return state


def enabled() -> bool:
    return _sink is not None


class UnencodableError(TypeError):
    pass


def encodable(data: Any, depth: int = 0) -> Any:
    """DATA as the collector can write it (arrays copied, so the script may reuse its buffers), or
    UnencodableError naming what is not."""
    if depth > _MAX_DEPTH:
        raise UnencodableError(f"data nests deeper than {_MAX_DEPTH} levels")
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UnencodableError("bytes that are not UTF-8 text") from None
    if isinstance(data, np.ndarray):
        if data.dtype.kind in "biuf":
            return np.array(data, copy=True, order="C")
        if data.dtype == object or data.dtype.kind in "SU":
            return encodable(data.tolist(), depth + 1)
        raise UnencodableError(f"a numpy array of dtype {data.dtype}")
    if isinstance(data, np.generic):
        return data.item()
    if isinstance(data, dict):
        return {str(k): encodable(v, depth + 1) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [encodable(v, depth + 1) for v in data]
    kind = type(data).__module__.split(".")[0] + "." + type(data).__name__
    if kind == "pandas.DataFrame":
        return encodable(data.to_dict(orient="records"), depth + 1)
    if kind == "pandas.Series":
        return encodable(data.tolist(), depth + 1)
    raise UnencodableError(f"an object of type {type(data).__module__}.{type(data).__name__}")


class Collector:
    """Records named payloads of the request being scored into the endpoint's DataCollection."""

    def __init__(self, name: str, on_error: Callable[[Exception], None] | None = None):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"collector name {name!r}: use 1-64 letters, digits, '_' or '-' (e.g. 'model_inputs')"
            )
        self.name = name
        self.on_error = on_error

    def collect(
        self,
        data: Any,
        correlation_context: CorrelationContext | None = None,
        *,
        correlation_id: str | None = None,
    ) -> CorrelationContext:
        """Record DATA (see the module's docstring); returns the context to pass to the request's next collect."""
        state = _current.get()
        cid = (
            correlation_id
            or (correlation_context.id if correlation_context is not None else None)
            or (state.request_id if state is not None else uuid.uuid4().hex)
        )
        context = correlation_context or CorrelationContext(str(cid))
        sink = _sink
        if sink is None:
            return context
        model = state.model if state is not None else ""
        try:
            payload = encodable(data)
        except UnencodableError as e:
            _on_drop(model)
            if self.on_error is not None:
                self.on_error(ValueError(f"collector {self.name}: cannot record {e}; the record was dropped"))
            return context
        if state is not None:
            state.collected += 1
        sink(
            {
                "request_id": state.request_id if state is not None else str(cid),
                "model": model,
                "version": state.version if state is not None else "",
                "collection": self.name,
                "correlation_id": str(cid),
                "data": payload,
                "ts": time.time(),
            }
        )
        return context
