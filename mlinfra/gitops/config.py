"""Typed configuration of a platform stack: the `<project>:platform` object of `Pulumi.<stack>.yaml`.

Environments differ only in this object; the program (stacks/__main__.py) has no environment names in it. The whole
object is validated at once, and every mistake names its key path — for unknown (misspelt) keys also the nearest
valid key. `mlinfra promote` rewrites the pins (``version``/``sha256`` of models, ``pinned`` of images) in it.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from mlinfra.endpoints.plan import namespace_problem
from mlinfra.errors import StackConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    name: str
    """Registry name of the model (also the resource name)."""
    path: str | None = None
    """Register this model file or folder (relative to the project folder). Or pin with version + sha256."""
    version: int | None = None
    """Pinned registry version (written by `mlinfra promote`)."""
    sha256: str | None = None
    """Content hash of the pinned version (written by `mlinfra promote`)."""
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)
    """Key/values such as evaluation metrics (`accuracy: "0.93"`), which policies can require."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        pinned = self.version is not None or self.sha256 is not None
        if pinned == (self.path is not None):
            raise ValueError(
                f"model {self.name!r}: give either path (register a file) or version and sha256 (a pin), not both "
                "or neither"
            )
        if pinned and (self.version is None or self.sha256 is None):
            raise ValueError(f"model {self.name!r}: a pin needs both version and sha256")
        if pinned and (self.tags or self.properties):
            raise ValueError(
                f"model {self.name!r}: a pinned version keeps the tags and properties it was registered with; "
                "remove tags/properties here"
            )
        return self


class ImageConfig(Strict):
    name: str
    models: list[str]
    """Names of models (from `models`) packaged in this image."""
    script: str | None = None
    """Azure ML-style scoring script (relative to the project folder). Default: the built-in OIP server."""
    pinned: str | None = None
    """Use this built image (host/repo@sha256:…) instead of building (written by `mlinfra promote`)."""


class DeploymentConfig(Strict):
    image: str
    """The name of an image in `images`, or an image reference (host/repo@sha256:… or, policies permitting, a tag)."""
    replicas: int = Field(default=1, ge=0)
    cpu: float = Field(default=1.0, gt=0)
    """CPU cores per replica (the Kubernetes request and limit; the Docker limit)."""
    memory_mb: int = Field(default=1024, ge=64)
    """Memory per replica in MiB."""


class RolloutConfig(Strict):
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0])
    """Share of traffic (%) the new revision gets at each step."""
    bake_s: float = 30.0
    max_error_rate: float = 0.01


class CollectionConfig(Strict):
    sample_rate: float = 1.0
    storage: str | None = None
    """Blob container URI. Default: the `mlinfra:collectionStorage` config, else a local folder."""


class LocalDockerConfig(Strict):
    """The endpoint runs as containers on this machine's Docker engine, behind a router on 127.0.0.1."""

    kind: Literal["local-docker"] = "local-docker"
    port: int | None = Field(default=None, ge=1, le=65535)
    """Router port on 127.0.0.1. Default: a free port chosen at the first `up`, kept afterwards."""


class KubernetesConfig(Strict):
    """The endpoint runs on a Kubernetes cluster: slot Deployments behind the router, rolled out in steps."""

    kind: Literal["kubernetes"]
    kubeconfig: str | None = None
    """Path to the cluster's kubeconfig (``~`` and paths relative to the project folder allowed), or ``local``:
    the single-node cluster of `mlinfra services up kubernetes`. Default: ``$KUBECONFIG``, else
    ``~/.kube/config``."""
    context: str | None = None
    """kubeconfig context. Default: its current-context."""
    namespace: str | None = None
    """Namespace (a DNS label; created). Default: the endpoint's name (``<endpoint>-<stack>``)."""

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, v: str | None) -> str | None:
        problem = namespace_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


class EndpointConfig(Strict):
    name: str
    deployments: dict[str, DeploymentConfig]
    traffic: dict[str, int] | None = None
    auth: Literal["key", "none"] = "key"
    data_collection: CollectionConfig | None = None
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    target: LocalDockerConfig | KubernetesConfig = Field(
        default_factory=LocalDockerConfig, discriminator="kind"
    )
    """Where the endpoint runs: ``{kind: local-docker, port: …}`` (the default) or ``{kind: kubernetes,
    kubeconfig: …, namespace: …}``."""
    port: int | None = None
    """Deprecated: use ``target: {kind: local-docker, port: …}``."""

    @model_validator(mode="after")
    def _port_in_target(self) -> EndpointConfig:
        if self.port is not None:
            if isinstance(self.target, KubernetesConfig):
                raise ValueError(
                    f"endpoint {self.name!r}: port is for a local-docker target; a kubernetes target is reached "
                    "through its router Service: remove port"
                )
            if self.target.port is not None and self.target.port != self.port:
                raise ValueError(f"endpoint {self.name!r}: port and target.port differ: keep target.port")
            self.target = LocalDockerConfig(port=self.port)
            self.port = None
        return self


class EdgeConfig(Strict):
    name: str
    models: list[str]
    target_condition: str
    priority: int = 0
    min_success_fraction: float = 1.0
    max_failures: int = 0
    timeout_s: float = 120.0


class MetricRule(Strict):
    name: str
    """Model property holding the evaluation metric, e.g. accuracy."""
    threshold: float
    """Lowest value allowed."""


class PolicyConfig(Strict):
    """The mlinfra policy pack's settings for this stack (present = the pack runs in `mlinfra preview`)."""

    require_endpoint_auth: bool = False
    require_data_collection: bool = False
    model_metric: MetricRule | None = None
    max_canary_percent: float | None = None
    """Largest first rollout step (%) an endpoint may use."""
    require_image_digest: bool = True
    require_edge_gate: bool = False
    """Edge deployments must stop on failures: min_success_fraction > 0 and a bounded max_failures."""
    trusted_signers: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] | None = None
    """Key ids (sha256 of the public key's PEM, as `mlinfra models sign` prints) one of which must have signed
    every model (docs/provenance.md). Default: not checked."""
    enforcement: Literal["mandatory", "advisory"] = "mandatory"


class PlatformConfig(Strict):
    registry: str | None = None
    """Model registry: a URI, or a folder relative to the project. Default: the project's .mlinfra/registry."""
    image_prefix: str = "mlinfra"
    """Repository prefix in the local OCI registry for this stack's images."""
    models: list[ModelConfig]
    images: list[ImageConfig] = Field(default_factory=list)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    edge: list[EdgeConfig] = Field(default_factory=list)
    policy: PolicyConfig | None = None


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside Optional[...], list[...] or dict[str, ...], else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
    return None


def _owner(loc: tuple[Any, ...], root: type[BaseModel] = PlatformConfig) -> type[BaseModel]:
    owner: type[BaseModel] = root
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in owner.model_fields:
            annotation = owner.model_fields[part].annotation
            # A discriminated union (a target): the next part of the path is the chosen kind.
            tagged = {
                typing.get_args(m.model_fields["kind"].annotation)[0]: m
                for m in _members(annotation)
                if "kind" in m.model_fields
            }
            nxt = loc[i + 1] if i + 1 < len(loc) else None
            inner = tagged.get(nxt) if nxt in tagged else _unwrap(annotation)
            if inner is not None:
                owner = inner
    return owner


def _members(annotation: Any) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return []


def _messages(e: ValidationError, root: str, model: type[BaseModel]) -> list[str]:
    """One line per error of MODEL's validation, naming the key path under ROOT (and, for an unknown key, the
    nearest valid one)."""
    msgs = []
    for err in e.errors():
        # A target's kind (the union's tag) is not a key of the file: leave it out of the path.
        loc = [p for i, p in enumerate(err["loc"]) if not (i and err["loc"][i - 1] == "target")]
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            near = difflib.get_close_matches(key, list(_owner(err["loc"][:-1], model).model_fields), n=1)
            msgs.append(f"{root}.{path}: unknown key" + (f"; did you mean {near[0]!r}?" if near else ""))
        elif err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            got = (err.get("ctx") or {}).get("tag")
            msgs.append(
                f"{root}.{path}: "
                + (f"kind {got!r} is not a target kind" if got else "the target needs a kind")
                + "; use kind: local-docker or kind: kubernetes"
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            msgs.append(f"{root}{'.' + path if path else ''}: {msg}")
    return msgs


def load(raw: Any) -> PlatformConfig:
    """Validate the whole config object; errors name the key path, and for unknown keys the nearest valid one."""
    try:
        cfg = PlatformConfig.model_validate(raw)
    except ValidationError as e:
        msgs = _messages(e, "platform", PlatformConfig)
        raise StackConfigError("invalid stack config:\n  " + "\n  ".join(msgs)) from None
    names = {m.name for m in cfg.models}
    images = {i.name for i in cfg.images}
    for group in (cfg.images, cfg.edge):
        for item in group:
            for m in item.models:
                if m not in names:
                    raise StackConfigError(
                        f"platform: {item.name} uses model {m!r}, which is not in platform.models "
                        f"({', '.join(sorted(names))})"
                    )
    for ep in cfg.endpoints:
        for d, dep in ep.deployments.items():
            if "/" not in dep.image and dep.image not in images:
                near = difflib.get_close_matches(dep.image, sorted(images), n=1)
                raise StackConfigError(
                    f"platform.endpoints.{ep.name}.deployments.{d}.image: {dep.image!r} is neither an image in "
                    "platform.images nor an image reference"
                    + (f"; did you mean {near[0]!r}?" if near else f" (images: {', '.join(sorted(images))})")
                )
    return cfg


def load_policy(raw: Any) -> PolicyConfig:
    """Validate an ``mlinfra:policy`` config object (the keys of the platform config's ``policy``)."""
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as e:
        msgs = _messages(e, "mlinfra:policy", PolicyConfig)
        raise StackConfigError("invalid policy config:\n  " + "\n  ".join(msgs)) from None


def registry_uri(cfg: PlatformConfig, project_dir: Path) -> str:
    """The stack's model registry URI; a plain folder is relative to the project folder."""
    reg = cfg.registry or ".mlinfra/registry"
    if "://" in reg:
        return reg
    return f"file://{(project_dir / reg).resolve()}"


def kubeconfig_path(target: KubernetesConfig, project_dir: Path, local: Path) -> str | None:
    """The kubeconfig file a kubernetes target names (``local`` is LOCAL), or None for the ambient one."""
    if target.kubeconfig is None:
        return None
    if target.kubeconfig == "local":
        return str(local)
    path = Path(target.kubeconfig).expanduser()
    return str(path if path.is_absolute() else (project_dir / path).resolve())


def image_repository(cfg: PlatformConfig, image: str, registry_host: str) -> str:
    return f"{registry_host}/{cfg.image_prefix.strip('/')}/{image}"


POLICY_NAMES = {
    "require_endpoint_auth": "mlinfra-endpoint-auth",
    "require_data_collection": "mlinfra-endpoint-data-collection",
    "model_metric": "mlinfra-model-metric",
    "max_canary_percent": "mlinfra-canary-step",
    "require_image_digest": "mlinfra-image-digest",
    "require_edge_gate": "mlinfra-edge-gate",
    "trusted_signers": "mlinfra-model-signed",
}


def policy_pack_config(policy: PolicyConfig) -> dict[str, Any]:
    """The `--policy-pack-config` JSON for the mlinfra pack: a rule that is off in the stack is disabled."""
    out: dict[str, Any] = {}
    on = policy.enforcement
    out["mlinfra-endpoint-auth"] = on if policy.require_endpoint_auth else "disabled"
    out["mlinfra-endpoint-data-collection"] = on if policy.require_data_collection else "disabled"
    out["mlinfra-image-digest"] = on if policy.require_image_digest else "disabled"
    out["mlinfra-edge-gate"] = on if policy.require_edge_gate else "disabled"
    out["mlinfra-model-metric"] = (
        {
            "enforcementLevel": on,
            "metric": policy.model_metric.name,
            "threshold": policy.model_metric.threshold,
        }
        if policy.model_metric
        else "disabled"
    )
    out["mlinfra-model-signed"] = (
        {"enforcementLevel": on, "trustedKeyIds": list(policy.trusted_signers)}
        if policy.trusted_signers
        else "disabled"
    )
    out["mlinfra-canary-step"] = (
        {"enforcementLevel": on, "maxPercent": policy.max_canary_percent}
        if policy.max_canary_percent is not None
        else "disabled"
    )
    return out
