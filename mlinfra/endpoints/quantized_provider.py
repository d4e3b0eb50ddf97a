"""Dynamic provider for FpgaEndpoint's quantized model: at `up`, fetch the FP32 version, quantize it, run the accuracy
gate, and only then register the INT8 model as a version with lineage properties. Unchanged inputs (source version,
data files' sha256, settings) are no change; a failed gate registers nothing."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.endpoints import quantize as q
from mlinfra.observed import observed_drift, say_drift
from mlinfra.registry import ModelRegistry

CONTENT_KEYS = (
    "source",
    "target_name",
    "method",
    "per_channel",
    "calibration_sha256",
    "validation_sha256",
    "labels_sha256",
    "max_accuracy_drop",
)


def _norm(props: dict[str, Any], k: str) -> Any:
    if k == "source":  # credentials are not content
        s = props.get("source") or {}
        return {x: s.get(x) for x in ("name", "version", "sha256", "registry")}
    return props.get(k)


def _log(msg: str) -> None:
    print(f"quantize: {msg}", file=sys.stderr, flush=True)


class QuantizedModelProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # What `up` brings the INT8 version to; after a refresh found its bytes gone, preview shows → present.
        return CheckResult({**news, "observed": "present"}, [])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the INT8 version's record and bytes in the registry, as ``observed``."""
        src = props["source"]
        reg = ModelRegistry(src["registry"], src.get("credential") or None)
        observed = reg.check_version(props["target_name"], int(props["version"]))
        if observed != "present":
            say_drift(
                f"{props['target_name']}:{int(props['version'])}",
                observed,
                "`pulumi up` quantizes again and restores it if the result is the same bytes",
            )
        return ReadResult(id_, {**props, "observed": observed})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in CONTENT_KEYS if _norm(olds, k) != _norm(news, k)]
        return DiffResult(changes=bool(changed) or observed_drift(olds, news))

    def _run(self, props: dict[str, Any], restore: int | None = None) -> dict[str, Any]:
        """Quantize, gate and register; with RESTORE (a version whose bytes were lost), put the result back under
        that version instead — only if it is byte-identical (ModelRegistry.restore_files checks the sha256)."""
        src = props["source"]
        reg = ModelRegistry(src["registry"], src.get("credential") or None)
        with tempfile.TemporaryDirectory(prefix="mlinfra-quantize-") as tmp:
            fp32 = reg.download(f"{src['name']}:{int(src['version'])}", Path(tmp) / "fp32.onnx")
            name, shape, _ = q.input_spec(fp32)
            calibration = None
            if props["method"] == "static":
                calibration = q.check_rows(
                    q.load_rows(props["calibration"], "calibration data"), shape, name, "calibration data"
                )
            x = q.check_rows(
                q.load_rows(props.get("validation") or props["calibration"], "validation data"),
                shape,
                name,
                "validation data",
            )
            labels = q.load_rows(props["labels"], "validation labels") if props.get("labels") else None
            out = Path(tmp) / f"{props['target_name']}.onnx"
            _log(
                f"{src['name']}:{int(src['version'])} → {props['method']} INT8 (per_channel={props['per_channel']})"
            )
            q.quantize(fp32, out, props["method"], bool(props["per_channel"]), calibration, name)
            acc = q.accuracy(fp32, out, name, x, labels)
            limit = float(props["max_accuracy_drop"])
            _log(
                f"{acc.metric}: fp32 {acc.fp32:.4f}, int8 {acc.quantized:.4f} (drop {acc.drop:.4f}, limit "
                f"{limit:g}) on {acc.rows} rows; mean |Δscore| {acc.mae:.5f}"
            )
            if acc.drop > limit:
                raise q.QuantizeError(
                    f"accuracy gate failed: {acc.metric} drops from {acc.fp32:.4f} (FP32) to {acc.quantized:.4f} "
                    f"(INT8 {props['method']}) = {acc.drop:.4f} on {acc.rows} validation rows, more than "
                    f"max_accuracy_drop={limit:g}. Nothing was registered or deployed. Try per_channel=True, more or "
                    "more representative calibration rows, method='dynamic', or a larger limit"
                )
            size_ratio = out.stat().st_size / fp32.stat().st_size
            if restore is not None:
                restored = reg.restore_files(props["target_name"], restore, out)
                _log(f"{props['target_name']}:{restore}: restored {', '.join(restored) or 'nothing'}")
                return {**props, "observed": "present"}
            mv, _created = reg.register(
                props["target_name"],
                out,
                description=f"INT8 ({props['method']}) of {src['name']}:{int(src['version'])}",
                properties={
                    "derived_from": f"{src['name']}:{int(src['version'])}",
                    "derived_from_sha256": src["sha256"],
                    "quantization": f"{props['method']} int8 qdq"
                    if props["method"] == "static"
                    else "dynamic int8",
                    "per_channel": str(bool(props["per_channel"])).lower(),
                    "calibration_sha256": props.get("calibration_sha256") or "",
                    "accuracy_metric": acc.metric,
                    "accuracy_fp32": f"{acc.fp32:.6f}",
                    "accuracy_quantized": f"{acc.quantized:.6f}",
                },
                tags={"precision": "int8"},
            )
        return {
            **props,
            "version": mv.version,
            "sha256": mv.sha256,
            "accuracy": acc.to_dict(),
            "size_ratio": size_ratio,
            "observed": "present",
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._run(props)
        return CreateResult(id_=f"{outs['target_name']}:{outs['version']}", outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if observed_drift(olds, news) and not [k for k in CONTENT_KEYS if _norm(olds, k) != _norm(news, k)]:
            kept: dict[str, Any] = {
                k: olds[k] for k in ("version", "sha256", "accuracy", "size_ratio") if k in olds
            }
            return UpdateResult(outs={**self._run(news, restore=int(olds["version"])), **kept})
        return UpdateResult(outs=self._run(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Registered versions are records: they stay (like RegisteredModel's default)."""


class QuantizedModelResource(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(QuantizedModelProvider(), name, props, opts)
