"""CloudEndpoint's typed spec: what the component validated, handed to its provider and read back by it.

The component checks its args (with messages that name the value and the fix, see ``cloud_endpoint.py`` and
``plan.py``) and builds an :class:`EndpointSpec`; :meth:`EndpointSpec.props` is the dict Pulumi stores as the
resource's inputs (a dynamic resource takes a dict), and the provider turns it back into the same typed spec with
:meth:`EndpointSpec.from_props` — numbers the engine returns as float64 come back as ints where they are ints. The
stored dict keeps the shape it had before the spec existed, so stacks created earlier show no diff.

Values that are Pulumi Outputs while the program runs (an image still to be built, the keys) are typed ``Any`` here;
in the provider they are plain values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OUTPUT_KEYS = (
    "rollout_plan",
    "scoring_uri",
    "grpc_uri",
    "openapi_uri",
    "live",
    "deployments_out",
    "last_rollout",
    "observed",
)
"""What the provider adds to the stored dict (outputs), not part of the spec."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class AutoscaleSpec(_Spec):
    min_replicas: int
    max_replicas: int
    cpu_target_percent: int


class DeploymentSpec(_Spec):
    """One named deployment: what its replicas run and how many."""

    image: Any
    """An image reference (name@sha256:… for ScoringImages); an Output while the program runs."""
    replicas: int
    cpu: float
    memory_mb: int
    env: dict[str, str] = Field(default_factory=dict)
    autoscale: AutoscaleSpec | None = None
    accelerators: dict[str, int] | None = None
    """Kubernetes only (absent on Local Docker): extended resources per pod."""
    node_selector: dict[str, str] | None = None
    """Kubernetes only."""
    tolerations: list[dict[str, Any]] | None = None
    """Kubernetes only."""

    def props(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": self.image,
            "replicas": self.replicas,
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "env": dict(sorted(self.env.items())),
        }
        if self.accelerators is not None:
            out["accelerators"] = dict(sorted(self.accelerators.items()))
            out["node_selector"] = dict(sorted((self.node_selector or {}).items()))
            out["tolerations"] = list(self.tolerations or [])
        out["autoscale"] = None if self.autoscale is None else self.autoscale.model_dump()
        return out


class GatesSpec(_Spec):
    max_error_rate: float | None = 0.01
    max_p99_ms: float | None = None
    min_requests: int = 0
    readiness_timeout_s: float = 120.0


class RolloutSpec(_Spec):
    steps: list[float]
    bake_s: float
    gates: GatesSpec
    auto_rollback: bool = True


class TlsFiles(_Spec):
    """Host paths of the router's certificate, key and the CA of accepted client certificates (PEM)."""

    cert: str
    key: str
    client_ca: str


class EndpointSpec(_Spec):
    """Everything an endpoint's provider needs, validated."""

    endpoint_name: str
    port: int | None = None
    """Router port on 127.0.0.1 (Local Docker); None: chosen at create and kept."""
    grpc_port: int | None = None
    """The router's gRPC port on 127.0.0.1 (Local Docker); None: chosen at create and kept."""
    router_image: str
    auth: Literal["key", "none", "tls"]
    keys: Any = Field(default_factory=list)
    """The endpoint's keys (secrets; empty unless auth is "key")."""
    tls: TlsFiles | None = None
    tls_sha256: list[str] | None = None
    deployments: dict[str, DeploymentSpec]
    traffic: dict[str, int]
    mirror: dict[str, int] = Field(default_factory=dict)
    rollout: RolloutSpec
    max_body_mb: float = 10.0
    model_refs: Any = Field(default_factory=list)
    """The registered model versions the deployments serve (the endpoint is recorded as their user)."""
    collect_credential: Any = None
    """The data-collection SAS (a secret) handed to the servers, or None."""
    internal_key: Any = None
    """The router's credential towards the scoring servers (a secret; they accept no other), or None for
    endpoints created before it existed (their servers accept any caller until replaced)."""

    def props(self) -> dict[str, Any]:
        """The resource's input dict (with the output keys as None placeholders)."""
        out: dict[str, Any] = {
            "endpoint_name": self.endpoint_name,
            "port": self.port,
            "grpc_port": self.grpc_port,
            "router_image": self.router_image,
            "auth": self.auth,
            "keys": self.keys,
            "tls": None if self.tls is None else self.tls.model_dump(),
            "tls_sha256": self.tls_sha256,
            "deployments": {d: s.props() for d, s in self.deployments.items()},
            "traffic": dict(self.traffic),
            "mirror": dict(self.mirror),
            "rollout": self.rollout.model_dump(),
            "max_body_mb": self.max_body_mb,
            "model_refs": self.model_refs,
            "collect_credential": self.collect_credential,
            "internal_key": self.internal_key,
        }
        return {**out, **dict.fromkeys(OUTPUT_KEYS)}

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> EndpointSpec:
        """The spec back from a stored or incoming input dict (the provider's view)."""
        return cls.model_validate(
            {k: v for k, v in props.items() if k not in OUTPUT_KEYS and k != "__provider"}
        )

    def user_keys(self) -> list[str]:
        """The keys the router accepts (none unless auth is "key")."""
        return [k for k in self.keys or [] if k] if self.auth == "key" else []
