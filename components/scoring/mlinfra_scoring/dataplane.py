"""The data plane: what a request asks of the models, independent of the protocol that carried it.

The HTTP layer (server.py) authenticates, decodes the body and maps errors to status codes; this module validates
an Open Inference Protocol request against the model's signature, runs it (through the model's batcher when
dynamic batching is on), encodes the response, answers metadata and readiness, runs a user's Azure ML-style
``init()/run()`` script for ``/score``, and hands every scored record to the data-collection hooks.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mlinfra_scoring import __version__, binary, collection
from mlinfra_scoring.batching import EXECUTION_ROWS
from mlinfra_scoring.metrics import Metrics
from mlinfra_scoring.models import (
    LoadedModel,
    RequestError,
    check_tensor,
    decode_input,
    encode_output,
    model_dir_env,
    non_finite,
)
from mlinfra_scoring.provenance import ProvenanceError, TrustStore
from mlinfra_scoring.repository import ModelRepository, ModelSpec

Hook = Callable[[dict[str, Any]], None]


class DataPlane:
    def __init__(self, repository: ModelRepository, metrics: Metrics, log: TextIO):
        self.repository = repository
        self.metrics = metrics
        self.hooks: list[Hook] = []
        self.script: Any = None
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        # A model's signature did not verify (mlinfra_scoring.provenance): the server stops.
        self.refused = False
        self._log = log
        self._script_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="score-script")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        """Register a data-collection hook: called with each scored record; must not block (enqueue and return)."""
        self.hooks.append(hook)

    def load(
        self,
        models: list[ModelSpec],
        script: str | None,
        wanted_providers: list[str],
        trust: str | None = None,
    ) -> None:
        """Load every model (and the user script); readiness turns true only when all succeeded. With TRUST (a trust
        folder, mlinfra_scoring.provenance) each model's files must first match a signature by a trusted signer."""
        try:
            if trust is not None:
                trust_store = TrustStore.from_dir(trust)
            for spec in models:
                if trust is not None:
                    signer = trust_store.verify_model(spec.name, spec.version, spec.path)
                    self._event(
                        {
                            "event": "model_verified",
                            "model": spec.name,
                            "version": spec.version,
                            "signer": signer,
                        }
                    )
                m = self.repository.load(spec)
                note = (
                    "no accelerator provider available: running on CPU"
                    if m.providers == ["CPUExecutionProvider"]
                    and wanted_providers != ["CPUExecutionProvider"]
                    else ""
                )
                self._event(
                    {
                        "event": "model_loaded",
                        "model": m.name,
                        "version": m.version,
                        "execution_providers": m.providers,
                        "max_batch_size": m.max_batch_size,
                        "note": note,
                    }
                )
            if script:
                self.script = load_script(script)
                if len(self.repository):
                    os.environ.update(model_dir_env(self.repository.first()))
                if hasattr(self.script, "init"):
                    self.script.init()
            self.set_ready(True)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            self.refused = isinstance(e, ProvenanceError)
            self._event({"event": "load_failed", "error": self.load_error})

    def start_draining(self) -> None:
        """Shutting down: readiness turns off, requests in flight finish."""
        self.draining = True
        self.set_ready(self.ready)

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set((), 1 if ready and not self.draining else 0)

    def _event(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), file=self._log, flush=True)

    def require_ready(self) -> None:
        """503 while models load (the HTTP layer also asks before it reads a body)."""
        if not self.ready:
            raise RequestError("models are still loading: retry when /v2/health/ready says ready", 503)

    # -- metadata and health -----------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.ready and not self.draining
        body: dict[str, Any] = {"ready": ok}
        if self.load_error:
            body["error"] = self.load_error
        return ok, body

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "mlinfra",
            "version": __version__,
            "extensions": ["azureml_score", "dynamic_batching", binary.EXTENSION],
            "models": [
                {"name": m.name, "version": m.version, "execution_providers": m.providers}
                for m in self.repository
            ],
        }

    def model_ready(self, m: LoadedModel) -> bool:
        return m.ready and self.ready and not self.draining

    # -- inference ---------------------------------------------------------------------------------------------

    async def infer(
        self,
        m: LoadedModel,
        body: Any,
        request_id: str,
        headers: Mapping[str, str],
        blob: memoryview | None = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """An Open Inference Protocol v2 request (its decoded JSON; BLOB: the binary part after it, binary tensor
        data extension) → its response object and the bytes of the outputs asked for in binary, in order."""
        self.require_ready()
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object with an 'inputs' list")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("'inputs' must be a non-empty list of tensors")
        specs = {s.name: s for s in m.inputs}
        feeds: dict[str, np.ndarray] = {}
        pos = 0  # into BLOB: binary inputs follow each other in the order of the inputs
        for t in inputs:
            name = t.get("name") if isinstance(t, dict) else None
            if not isinstance(name, str):
                raise RequestError(
                    f"input name {_short(name)} is not an input of {m.name}: each input needs a 'name' that is a "
                    f"string (inputs: {', '.join(specs)})"
                )
            if name not in specs:
                raise RequestError(
                    f"input {_quoted(name)} is not an input of {m.name} (inputs: {', '.join(specs)})"
                )
            if name in feeds:
                raise RequestError(f"input {name!r} is given twice")
            size = binary.data_size(name, t)
            if size is None:
                feeds[name] = decode_input(specs[name], t)
                continue
            if blob is None:
                raise RequestError(
                    f"input {name!r} has binary_data_size, but the request has no binary part: send the JSON's "
                    f"length in the {binary.HEADER} header and the tensor bytes after the JSON"
                )
            if size > len(blob) - pos:
                raise RequestError(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body ({len(blob) - pos} "
                    "bytes left)"
                )
            shape = check_tensor(specs[name], t)
            feeds[name] = binary.decode(name, specs[name].datatype, shape, blob[pos : pos + size])
            pos += size
        if blob is not None and pos != len(blob):
            raise RequestError(
                f"the body has {len(blob) - pos} bytes after the inputs' binary data: the binary_data_size values "
                f"must add up to the body's length minus {binary.HEADER}"
            )
        missing = [n for n in specs if n not in feeds]
        if missing:
            raise RequestError(f"missing input(s) {', '.join(missing)} for {m.name}")
        out_names = _requested_outputs(m, body.get("outputs"))
        batcher = self.repository.batcher(m.name)
        try:
            results = await (
                batcher.submit(feeds, out_names) if batcher else self.repository.execute(m, feeds, out_names)
            )
        except RequestError:
            raise
        except Exception as e:
            raise RequestError(f"model {m.name} failed on this input: {str(e)[:300]}", 400) from None
        if not batcher:
            first = next(iter(feeds.values()))
            rows = first.shape[0] if first.ndim else 1
            self.metrics.batch.observe(rows, (m.name, m.version))
            EXECUTION_ROWS.set(rows)
        default, per = binary.wanted_outputs(body)
        outputs, chunks, bad = [], [], 0
        for k, v in results.items():
            if per.get(
                k, default
            ):  # raw bytes after the JSON: NaN and ±Inf travel as they are, still counted
                entry, raw = binary.output(k, v)
                outputs.append(entry)
                chunks.append(raw)
                bad += non_finite(v)[0]
            else:
                out = encode_output(k, v)
                outputs.append(out)
                bad += out.get("parameters", {}).get("non_finite_values", 0)
        resp: dict[str, Any] = {"model_name": m.name, "model_version": m.version, "outputs": outputs}
        if bad:
            self.metrics.non_finite.inc((m.name, m.version), bad)
        if "id" in body:
            resp["id"] = body["id"]
        if "parameters" in body and isinstance(body["parameters"], dict):
            resp["parameters"] = body["parameters"]
        if self.hooks:
            self.collect(request_id, m, feeds, results, headers)
        return resp, chunks

    async def score_script(self, raw: bytes, request_id: str) -> Any:
        """Azure ML-style: the user script's run(raw_data) gets the raw body text. What the script collects
        (mlinfra_scoring.collection) is tied to REQUEST_ID; when it collects nothing and collection is on, the raw
        request and response are recorded."""
        self.require_ready()
        loop = asyncio.get_running_loop()
        text = raw.decode("utf-8", errors="replace")
        m = self.repository.first() if len(self.repository) else None
        model, version = (m.name, str(m.version)) if m is not None else ("script", "")
        context = contextvars.copy_context()  # the script's thread sees this request (and only this one)
        state = context.run(collection.begin, request_id, model, version)
        try:
            result = await loop.run_in_executor(self._script_pool, context.run, self.script.run, text)
        except Exception as e:
            raise RequestError(f"scoring script failed: {type(e).__name__}: {e}", 500) from None
        if collection.enabled() and not state.collected:  # as Azure ML: the payloads themselves
            response = result.decode("utf-8", "replace") if isinstance(result, bytes) else result
            context.run(collection.Collector("request").collect, _json_or_text(text))
            context.run(collection.Collector("response").collect, _json_or_text(response))
        return result

    async def score(
        self, m: LoadedModel, body: Any, request_id: str, headers: Mapping[str, str]
    ) -> tuple[Any, int]:
        """Azure ML-style: {"data": [[...], ...]} → model M's first output (an array, NaN/±Inf as null) and how
        many of its values were not finite (the HTTP layer reports it in a header)."""
        self.require_ready()
        if not isinstance(body, dict) or "data" not in body:
            raise RequestError('request body must be {"data": [[...], ...]}')
        if len(m.inputs) != 1:
            raise RequestError(
                f"/score feeds one input, and model {m.name} has {len(m.inputs)} ({', '.join(s.name for s in m.inputs)}): "
                f"use POST /v2/models/{m.name}/infer"
            )
        spec = m.inputs[0]
        try:
            arr = np.asarray(body["data"], dtype=np.float32 if spec.datatype == "FP32" else None)
        except (ValueError, TypeError):
            raise RequestError("'data' must be a rectangular list of numbers") from None
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None, ...]
        if arr.ndim != len(spec.shape) or any(
            s not in (-1, d) for s, d in zip(spec.shape, arr.shape, strict=True)
        ):
            raise RequestError(f"'data' has shape {list(arr.shape)}; the model expects {spec.shape}")
        feeds = {spec.name: arr}
        batcher = self.repository.batcher(m.name)
        try:
            results = await (batcher.submit(feeds, None) if batcher else self.repository.execute(m, feeds))
        except RequestError:
            raise
        except Exception as e:
            raise RequestError(f"model {m.name} failed on this input: {str(e)[:300]}", 400) from None
        if self.hooks:
            self.collect(request_id, m, feeds, results, headers)
        first = next(iter(results.values()))
        count, _ = non_finite(first)
        if count:
            self.metrics.non_finite.inc((m.name, m.version), count)
        return jsonable(first, nulls=count > 0), count

    # -- data collection ---------------------------------------------------------------------------------------

    def collect(
        self,
        request_id: str,
        m: LoadedModel,
        feeds: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        headers: Mapping[str, str],
    ) -> None:
        record = {
            "request_id": request_id,
            "model": m.name,
            "version": m.version,
            "inputs": feeds,
            "outputs": results,
            "headers": headers,  # read-only per request; the collector copies what it keeps
            "ts": time.time(),
        }
        for hook in self.hooks:
            try:
                hook(record)
            except Exception:  # a collector must never break scoring
                self.metrics.collector_dropped.inc((m.name,))


def _json_or_text(value: Any) -> Any:
    """A raw payload as a record holds it: parsed when it is JSON text, else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def jsonable(arr: np.ndarray, nulls: bool = False) -> Any:
    """An output as JSON can carry it: numbers as they are, strings and bytes (BYTES tensors) as text."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        flat = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel().tolist()
        ]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    if nulls:  # NULLS: it holds NaN/Inf (counted by the caller with non_finite)
        out = arr.astype(object)
        out[~np.isfinite(arr)] = None  # null, as JSON has no NaN/Inf (the header says how many)
        return out.tolist()
    return arr


def _requested_outputs(m: LoadedModel, wanted: Any) -> list[str] | None:
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise RequestError("'outputs' must be a list of objects whose 'name' is a string")
    known = {o.name for o in m.outputs}
    names = [o["name"] for o in wanted]
    bad = [n for n in names if n not in known]
    if bad:
        raise RequestError(
            f"output(s) {', '.join(map(_quoted, bad[:10]))} not produced by {m.name} (outputs: "
            f"{', '.join(sorted(known))})"
        )
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise RequestError(f"output {_quoted(twice)} is requested twice")
    return names


def _quoted(value: Any, limit: int = 80) -> str:
    """A client-sent value for an error message: its repr, bounded (a 1 MB name is not echoed back)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _short(value: Any) -> str:
    """A client-sent value for an error message: its type and a bounded repr."""
    return f"{type(value).__name__} {_quoted(value, 60)}"


def load_script(path: str) -> Any:
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
