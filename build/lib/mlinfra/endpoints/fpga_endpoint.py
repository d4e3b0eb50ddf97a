"""FpgaEndpoint: an accelerator endpoint for a quantized model — Azure ML's FPGA deployments as one declarative step.

It *is* a CloudEndpoint (same target, traffic, rollout and auth options; built by composing one) whose model was
converted first: at `up` the FP32 RegisteredModel is quantized to INT8 (static QDQ — the form FPGA/NPU toolchains
such as Vitis AI take — or dynamic) with onnxruntime.quantization, an accuracy gate compares the INT8 model with the
FP32 one on validation data and refuses to go on past `max_accuracy_drop`, the INT8 model is registered as a
version with lineage properties, packaged by a ScoringImage, and served on pods that request the accelerator and
try the given execution providers in order, CPU last. See docs/fpga-endpoint.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlinfra.endpoints.cloud_endpoint import (
    CloudEndpoint,
    CloudEndpointArgs,
    Deployment,
    Kubernetes,
    LocalDocker,
    RolloutPolicy,
    TlsAuth,
)
from mlinfra.endpoints.quantize import QuantizeError
from mlinfra.endpoints.quantized_provider import QuantizedModelResource
from mlinfra.files import sha256_file
from mlinfra.images.scoring_image import ScoringImage, ScoringImageArgs
from mlinfra.registry import validate_name
from mlinfra.registry.registered_model import RegisteredModel, as_int


@dataclass
class Quantization:
    method: str = "static"
    """"static" (INT8 weights and activations, QDQ format, calibrated) or "dynamic" (INT8 weights)."""
    per_channel: bool = True
    """Per-channel weight scales (usually more accurate)."""


@dataclass
class Accelerator:
    resource: str = "xilinx.com/fpga"
    """Device-plugin resource name, e.g. xilinx.com/fpga, intel.com/fpga, nvidia.com/gpu."""
    count: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FpgaEndpointArgs:
    model: RegisteredModel
    """The FP32 ONNX model (single input). Required."""
    calibration_data: str
    """Rows of model input (.npy, .csv or .jsonl), ≈ 100-1000 representative rows. Required (also the validation
    data when none is given)."""
    validation_data: str | None = None
    """Rows to compare FP32 and INT8 on. Default: the calibration data."""
    validation_labels: str | None = None
    """Class labels of the validation rows (.npy/.csv): the gate compares accuracy. Default: none — the gate
    compares the argmax agreement of INT8 with FP32."""
    quantization: Quantization = field(default_factory=Quantization)
    max_accuracy_drop: float = 0.01
    """Largest accepted drop (FP32 minus INT8, as a fraction). Default 1 %."""
    quantized_model_name: str | None = None
    """Registry name of the INT8 model. Default: <model name>-int8."""
    accelerator: Accelerator = field(default_factory=Accelerator)
    execution_providers: list[str] = field(default_factory=lambda: ["VitisAIExecutionProvider"])
    """ONNX Runtime execution providers in order of preference; CPUExecutionProvider is always the last fallback."""
    deployment_name: str = "blue"
    replicas: int = 1
    cpu: float = 1.0
    memory_mb: int = 1024
    # The CloudEndpoint options, passed through unchanged.
    target: LocalDocker | Kubernetes = field(default_factory=LocalDocker)
    auth: str = "key"
    key_version: int = 1
    tls: TlsAuth | None = None
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    endpoint_name: str | None = None


class QuantizedModel(pulumi.ComponentResource):
    """The INT8 model as a registered version; ``model_ref`` feeds a ScoringImage like a RegisteredModel's."""

    def __init__(self, name: str, args: FpgaEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:endpoints:QuantizedModel", name, None, opts)
        where = f"FpgaEndpoint {name}"
        q = args.quantization
        if q.method not in ("static", "dynamic"):
            raise QuantizeError(f"{where}: quantization.method = {q.method!r}: choose 'static' or 'dynamic'")
        if not 0 <= args.max_accuracy_drop <= 1:
            raise QuantizeError(
                f"{where}: max_accuracy_drop = {args.max_accuracy_drop} must be a fraction in 0..1"
            )
        for what, p in (
            ("calibration_data", args.calibration_data),
            ("validation_data", args.validation_data),
            ("validation_labels", args.validation_labels),
        ):
            if p is not None and not Path(p).is_file():
                raise QuantizeError(f"{where}: {what} = {p!r} is not a file")
        target = args.quantized_model_name
        if target is not None:
            validate_name(target)
        self.resource: Any = QuantizedModelResource(
            f"{name}-int8",
            {
                "source": args.model.model_ref,
                "target_name": target or args.model.model_name.apply(lambda n: f"{n}-int8"),
                "method": q.method,
                "per_channel": q.per_channel,
                "calibration": str(Path(args.calibration_data).resolve()),
                "calibration_sha256": sha256_file(args.calibration_data),
                "validation": str(Path(args.validation_data).resolve()) if args.validation_data else None,
                "validation_sha256": sha256_file(args.validation_data) if args.validation_data else None,
                "labels": str(Path(args.validation_labels).resolve()) if args.validation_labels else None,
                "labels_sha256": sha256_file(args.validation_labels) if args.validation_labels else None,
                "max_accuracy_drop": args.max_accuracy_drop,
                "version": None,
                "sha256": None,
                "accuracy": None,
                "size_ratio": None,
            },
            pulumi.ResourceOptions(
                parent=self, depends_on=[args.model], additional_secret_outputs=["source"]
            ),
        )
        r: Any = self.resource
        self.version: pulumi.Output[int] = r.version.apply(as_int)
        self.model_name: pulumi.Output[str] = r.target_name
        self.accuracy: pulumi.Output[dict[str, Any]] = r.accuracy
        self.size_ratio: pulumi.Output[float] = r.size_ratio
        source = args.model.model_ref
        self.model_ref = pulumi.Output.all(r.target_name, self.version, r.sha256, source).apply(
            lambda a: {
                "name": a[0],
                "version": a[1],
                "sha256": a[2],
                "registry": a[3]["registry"],
                "credential": a[3].get("credential"),
            }
        )
        self.register_outputs(
            {"version": self.version, "accuracy": self.accuracy, "size_ratio": self.size_ratio}
        )


class FpgaEndpoint(pulumi.ComponentResource):
    """Outputs: ``quantized_model_version``, ``quantized_model_name``, ``accuracy_fp32``, ``accuracy_quantized``,
    ``accuracy_drop``, ``size_ratio`` (INT8 bytes / FP32 bytes), ``image_ref``, and the CloudEndpoint's
    (``scoring_uri``, ``openapi_uri``, ``primary_key``, ``secondary_key``, ``traffic``, ``deployments``, …)."""

    def __init__(self, name: str, args: FpgaEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:endpoints:FpgaEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        acc = args.accelerator
        if acc.count < 1 or "/" not in acc.resource:
            raise QuantizeError(
                f"FpgaEndpoint {name}: accelerator {acc.resource!r} × {acc.count}: give a device-plugin resource "
                "name such as 'xilinx.com/fpga' and a count ≥ 1"
            )
        providers = [p for p in args.execution_providers if p != "CPUExecutionProvider"] + [
            "CPUExecutionProvider"
        ]
        self.quantized = QuantizedModel(name, args, child)
        self.image = ScoringImage(f"{name}-image", ScoringImageArgs(models=[self.quantized]), child)
        self.endpoint = CloudEndpoint(
            name,
            CloudEndpointArgs(
                deployments={
                    args.deployment_name: Deployment(
                        image=self.image,
                        replicas=args.replicas,
                        cpu=args.cpu,
                        memory_mb=args.memory_mb,
                        env={"MLINFRA_SERVE_PROVIDERS": ",".join(providers)},
                        accelerators={acc.resource: acc.count},
                        node_selector=dict(acc.node_selector),
                        tolerations=list(acc.tolerations),
                    )
                },
                target=args.target,
                auth=args.auth,
                key_version=args.key_version,
                tls=args.tls,
                rollout=args.rollout,
                endpoint_name=args.endpoint_name,
            ),
            child,
        )
        a = self.quantized.accuracy
        self.quantized_model_version = self.quantized.version
        self.quantized_model_name = self.quantized.model_name
        self.accuracy_fp32 = a.apply(lambda x: x["fp32"])
        self.accuracy_quantized = a.apply(lambda x: x["quantized"])
        self.accuracy_drop = a.apply(lambda x: x["drop"])
        self.size_ratio = self.quantized.size_ratio
        self.image_ref = self.image.image_ref
        self.scoring_uri = self.endpoint.scoring_uri
        self.openapi_uri = self.endpoint.openapi_uri
        self.primary_key = self.endpoint.primary_key
        self.secondary_key = self.endpoint.secondary_key
        self.traffic = self.endpoint.traffic
        self.deployments = self.endpoint.deployments
        self.register_outputs(
            {
                "quantized_model_version": self.quantized_model_version,
                "accuracy_fp32": self.accuracy_fp32,
                "accuracy_quantized": self.accuracy_quantized,
                "size_ratio": self.size_ratio,
                "scoring_uri": self.scoring_uri,
            }
        )
