"""CloudEndpoint: steps 3 and 5 of the lifecycle — serve images as an authenticated web service on local Docker or
Kubernetes, split and mirror traffic between named deployments, and update them with a progressive rollout that
rolls itself back on a failed gate during `pulumi up`. See docs/cloud-endpoint.md."""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pulumi
import yaml

from mlinfra import defaults
from mlinfra.endpoints.plan import (
    ENDPOINT_RE,
    EndpointError,
    namespace_problem,
    validate_names,
    validate_steps,
    validate_traffic,
)
from mlinfra.endpoints.provider import EndpointKeys, InternalKey, LocalEndpointResource
from mlinfra.endpoints.spec import (
    AutoscaleSpec,
    DeploymentSpec,
    EndpointSpec,
    GatesSpec,
    RolloutSpec,
    TlsFiles,
)
from mlinfra.files import sha256_file
from mlinfra.images.scoring_image import ScoringImage


@dataclass
class Autoscale:
    min_replicas: int = 1
    max_replicas: int = 3
    cpu_target_percent: int = 70
    """Kubernetes: a HorizontalPodAutoscaler owns the replica count (each `up` leaves it alone). Local Docker has no
    autoscaler: it runs min_replicas."""


@dataclass
class Deployment:
    image: ScoringImage | pulumi.Input[str]
    """A ScoringImage (its digest and models are tracked), or an image reference."""
    replicas: int = 1
    """Fixed replica count; ignored when `autoscale` is set."""
    cpu: float = 1.0
    """CPU limit in cores (Kubernetes: request = limit)."""
    memory_mb: int = 1024
    """Memory limit in MiB."""
    autoscale: Autoscale | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment, e.g. MLINFRA_SERVE_MAX_BATCH_SIZE."""
    accelerators: dict[str, int] = field(default_factory=dict)
    """Kubernetes: extended resources per pod, e.g. {"xilinx.com/fpga": 1} (requests = limits). Local Docker has
    no device plugin: ignored there (the server falls back to CPU and says so)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Kubernetes: nodeSelector for this deployment's pods."""
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    """Kubernetes: tolerations for this deployment's pods (added to the target's)."""


@dataclass
class Gates:
    max_error_rate: float | None = 0.01
    """Largest share of 5xx answers from the deployment gaining traffic during a bake (None: not checked)."""
    max_p99_ms: float | None = None
    """Largest p99 latency (server side) during a bake (None: not checked)."""
    min_requests: int = 0
    """Fewest scoring requests the gaining deployment must see in a bake for it to count (0: any)."""
    readiness_timeout_s: float = 120.0
    """How long new replicas get to answer /v2/health/ready before the rollout fails."""


@dataclass
class RolloutPolicy:
    steps: list[float] = field(default_factory=lambda: [10.0, 50.0, 100.0])
    """Percent of the way from the old traffic map to the new one at each step; 100 is added if missing."""
    bake_s: float = 30.0
    """Wait after each step before reading the gates."""
    gates: Gates = field(default_factory=Gates)
    auto_rollback: bool = True
    """On a failed gate restore the last good traffic map and images and fail the `up`. False: failed gates are
    reported and the rollout goes on."""


@dataclass
class LocalDocker:
    port: int | None = None
    """Router port on 127.0.0.1. Default: a free port chosen at create, kept afterwards."""
    grpc_port: int | None = None
    """The router's gRPC port on 127.0.0.1 (the Open Inference Protocol's gRPC service, routed like REST). Default:
    a free port chosen at create, kept afterwards."""


@dataclass
class Kubernetes:
    namespace: str | None = None
    """Namespace (created). Default: the endpoint name."""
    kubeconfig: str | None = None
    """Path to a kubeconfig, or its content. Default: the `provider`, else the ambient kubeconfig."""
    context: str | None = None
    provider: Any = None
    """A pulumi_kubernetes.Provider to use instead of kubeconfig."""
    render_yaml_to: str | None = None
    """Write the manifests to this folder (for Argo CD / Flux) instead of applying them; no cluster needed. Secrets
    (the endpoint keys, the collection SAS) are not written: the preview names the Secrets to create with your
    secret manager (sealed-secrets, External Secrets), unless ``render_secrets``."""
    render_secrets: bool = False
    """With ``render_yaml_to``: also write the Secrets, their values in plain YAML (a warning says so)."""
    router_image: str | None = None
    """nginx image for the router Deployment. Default: the local registry's mlinfra/router."""
    service_type: str = "ClusterIP"
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    create_namespace: bool = True


@dataclass
class TlsAuth:
    cert: str
    """Server certificate (PEM)."""
    key: str
    """Server private key (PEM)."""
    client_ca: str
    """CA that signs accepted client certificates (PEM)."""


@dataclass
class CloudEndpointArgs:
    deployments: dict[str, Deployment]
    traffic: dict[str, int] | None = None
    """Percent of live traffic per deployment, summing to 100. Default: 100 to the only deployment."""
    mirror: dict[str, int] = field(default_factory=dict)
    """{deployment: percent of live traffic copied to it}; its answers are discarded. Only to a deployment with
    traffic 0."""
    target: LocalDocker | Kubernetes = field(default_factory=LocalDocker)
    auth: str = "key"
    """"key" (bearer keys, the default), "none", or "tls" (client certificates; set `tls`)."""
    key_version: int = 1
    """Bump by one to regenerate one key: bumping to an even version regenerates the secondary key, to an odd one
    the primary (clients move to the other key in between)."""
    tls: TlsAuth | None = None
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    require_digest: bool = False
    """Refuse image references not pinned by digest (name@sha256:...)."""
    endpoint_name: str | None = None
    """Default: <resource name>-<stack>."""
    max_body_mb: float = 10.0
    data_collection: Any = None
    """A DataCollection: every deployment's scoring servers capture sampled inputs/outputs to its storage."""


def check_kubeconfig(kubeconfig: str, context: str | None, where: str) -> None:
    """The cluster a kubeconfig points at must answer: else name it, its server and the fix (at preview)."""
    inline = "\n" in kubeconfig or kubeconfig.lstrip().startswith("{")
    if not inline and not Path(kubeconfig).is_file():
        raise EndpointError(
            f"{where}: kubeconfig {kubeconfig!r} is not a file: give the path of the cluster's kubeconfig (or its "
            "content)"
        )
    text = kubeconfig if inline else Path(kubeconfig).read_text()
    try:
        cfg = yaml.safe_load(text) or {}
        ctx_name = context or cfg.get("current-context")
        ctx = next(c["context"] for c in cfg.get("contexts") or [] if c["name"] == ctx_name)
        cluster_name = ctx["cluster"]
        server = next(c["cluster"]["server"] for c in cfg.get("clusters") or [] if c["name"] == cluster_name)
    except (yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        raise EndpointError(
            f"{where}: the kubeconfig has no usable context {context or '(current-context)'!r} with a cluster "
            "server: check the file (kubectl config view)"
        ) from None
    u = urllib.parse.urlparse(server)
    try:
        with socket.create_connection((u.hostname or "", u.port or 443), timeout=3):
            pass
    except OSError as e:
        raise EndpointError(
            f"{where}: Kubernetes cluster {cluster_name!r} at {server} does not answer ({e.strerror or e}): start "
            "it or fix the kubeconfig's server"
        ) from None


class CloudEndpoint(pulumi.ComponentResource):
    """Outputs: ``scoring_uri``, ``grpc_uri`` (the gRPC service's host:port: the router's loopback port on Local
    Docker, its Service's port 81 on Kubernetes), ``openapi_uri``, ``primary_key`` and ``secondary_key`` (secrets; None when auth is
    not "key"), ``traffic``, ``mirror``, ``deployments`` ({name: image, digest, models, revision, replicas}),
    ``rollout_plan`` (what this `up` will do), ``last_rollout`` (what the last one did)."""

    scoring_uri: pulumi.Output[str]
    grpc_uri: pulumi.Output[str | None]
    openapi_uri: pulumi.Output[str]
    primary_key: pulumi.Output[str | None]
    secondary_key: pulumi.Output[str | None]
    traffic: pulumi.Output[dict[str, int]]
    deployments: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: CloudEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        where = f"CloudEndpoint {name}"
        endpoint = args.endpoint_name or f"{name}-{pulumi.get_stack()}".lower()
        if not ENDPOINT_RE.match(endpoint):
            raise EndpointError(
                f"{where}: endpoint name {endpoint!r} must be 2-48 lowercase letters, digits or '-' (set "
                "endpoint_name=)"
            )
        validate_names(args.deployments, where)
        traffic, mirror = validate_traffic(list(args.deployments), args.traffic, args.mirror, where)
        steps = validate_steps(args.rollout.steps, where)
        if args.rollout.bake_s < 0:
            raise EndpointError(f"{where}: rollout.bake_s = {args.rollout.bake_s} must be ≥ 0")
        g = args.rollout.gates
        if g.max_error_rate is not None and not 0 <= g.max_error_rate <= 1:
            raise EndpointError(
                f"{where}: gates.max_error_rate = {g.max_error_rate} must be a fraction in 0..1"
            )
        if args.auth not in ("key", "none", "tls"):
            raise EndpointError(f"{where}: auth = {args.auth!r}: choose 'key', 'none' or 'tls'")
        if args.auth == "tls":
            if args.tls is None:
                raise EndpointError(f"{where}: auth='tls' needs tls=TlsAuth(cert=, key=, client_ca=)")
            for f in ("cert", "key", "client_ca"):
                if not Path(getattr(args.tls, f)).is_file():
                    raise EndpointError(f"{where}: tls.{f} = {getattr(args.tls, f)!r} is not a file")
        if (
            isinstance(args.key_version, bool)
            or not isinstance(args.key_version, int)
            or args.key_version < 1
        ):
            raise EndpointError(f"{where}: key_version = {args.key_version!r} must be an integer ≥ 1")
        if not 0 < args.max_body_mb <= 1024:
            raise EndpointError(f"{where}: max_body_mb = {args.max_body_mb} must be in (0, 1024]")
        specs: dict[str, DeploymentSpec] = {}
        k8s = isinstance(args.target, Kubernetes)
        ns = getattr(args.target, "namespace", None)
        problem = namespace_problem(str(ns)) if k8s and ns is not None else None
        if problem:
            raise EndpointError(f"{where}: {problem} (e.g. Kubernetes(namespace='fraud-prod'))")
        for d in args.deployments if k8s else ():
            clash = [f"{d}-{slot}" for slot in ("a", "b") if f"{d}-{slot}" in args.deployments]
            if clash:
                raise EndpointError(
                    f"{where}: deployment {clash[0]!r} would share its Kubernetes Service name with slot "
                    f"{clash[0][-1]!r} of deployment {d!r} (<endpoint>-<deployment>-a|b): rename one of them"
                )
        if k8s and args.data_collection is not None:
            sink = str(args.data_collection.settings["sink"])
            if sink.startswith("file:"):
                raise EndpointError(
                    f"{where}: data collection to {sink} cannot work on Kubernetes (a pod's files are not this "
                    "machine's): give the DataCollection blob storage, DataCollectionArgs(storage='azblob://ACCOUNT/"
                    "CONTAINER?endpoint=URL'), or set the stack's mlinfra:collectionStorage and the secret "
                    "mlinfra:collectionCredential"
                )
        model_refs: list[Any] = []
        images: dict[str, Any] = {}
        for d, dep in args.deployments.items():
            _check_deployment(where, d, dep, args.require_digest)
            if isinstance(dep.image, ScoringImage):
                images[d] = dep.image.image_ref
                model_refs.append(dep.image.model_refs)
            else:
                images[d] = dep.image
            replicas = dep.autoscale.min_replicas if dep.autoscale else dep.replicas
            env = dict(dep.env)
            if args.data_collection is not None:
                env.update(args.data_collection.server_env(endpoint, d, "/var/lib/mlinfra/spool"))
            specs[d] = DeploymentSpec(
                image=images[d],
                replicas=replicas,
                cpu=float(dep.cpu),
                memory_mb=int(dep.memory_mb),
                env=dict(sorted(env.items())),
                accelerators=dict(sorted(dep.accelerators.items())) if k8s else None,
                node_selector=dict(sorted(dep.node_selector.items())) if k8s else None,
                tolerations=dep.tolerations if k8s else None,
                autoscale=None
                if dep.autoscale is None
                else AutoscaleSpec(
                    min_replicas=dep.autoscale.min_replicas,
                    max_replicas=dep.autoscale.max_replicas,
                    cpu_target_percent=dep.autoscale.cpu_target_percent,
                ),
            )
        # The component's inputs are what policies (mlinfra.policy) and `mlinfra preview` read: no secrets here.
        dc = args.data_collection
        props = {
            "endpoint_name": endpoint,
            "target": "kubernetes" if isinstance(args.target, Kubernetes) else "local",
            "auth": args.auth,
            "data_collection": None
            if dc is None
            else {k: dc.settings[k] for k in ("sink", "sample_rate", "capture")},
            "traffic": traffic,
            "mirror": mirror,
            "rollout": {
                "steps": steps,
                "bake_s": float(args.rollout.bake_s),
                "auto_rollback": args.rollout.auto_rollback,
                "max_error_rate": g.max_error_rate,
            },
            "deployments": {d: {"image": images[d], "replicas": spec.replicas} for d, spec in specs.items()},
        }
        super().__init__("mlinfra:endpoints:CloudEndpoint", name, props, opts)
        self.keys = (
            EndpointKeys(f"{name}-keys", args.key_version, pulumi.ResourceOptions(parent=self))
            if args.auth == "key"
            else None
        )
        rollout = RolloutSpec(
            steps=steps,
            bake_s=float(args.rollout.bake_s),
            gates=GatesSpec(
                max_error_rate=g.max_error_rate,
                max_p99_ms=g.max_p99_ms,
                min_requests=g.min_requests,
                readiness_timeout_s=g.readiness_timeout_s,
            ),
            auto_rollback=args.rollout.auto_rollback,
        )
        keys_out: list[Any] = (
            [self.keys.primary_key, self.keys.secondary_key]  # type: ignore[attr-defined]
            if self.keys is not None
            else []
        )
        # The router's own credential towards the scoring servers: they answer nobody else (health and /metrics
        # stay open for probes and gates), so reaching a replica's port or pod directly bypasses no auth.
        self.internal_key = InternalKey(f"{name}-internal", pulumi.ResourceOptions(parent=self)).key  # type: ignore[attr-defined]
        flat_refs = pulumi.Output.all(*model_refs).apply(lambda lists: [m for ms in lists for m in ms or []])
        if isinstance(args.target, Kubernetes):
            from mlinfra.endpoints.kubernetes import build_kubernetes

            outs = build_kubernetes(
                self,
                name,
                endpoint,
                args.target,
                {d: s.props() for d, s in specs.items()},
                traffic,
                mirror,
                args,
                keys_out,
                args.deployments,
                self.internal_key,
                rollout,
            )
        else:
            port, grpc_port = args.target.port, args.target.grpc_port
            for key, value in (("port", port), ("grpc_port", grpc_port)):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536
                ):
                    raise EndpointError(
                        f"{where}: LocalDocker({key}={value!r}) must be an integer in 1..65535"
                    )
            if port is not None and port == grpc_port:
                raise EndpointError(
                    f"{where}: LocalDocker(port=) and grpc_port= are both {port}: give two ports"
                )
            spec = EndpointSpec(
                endpoint_name=endpoint,
                port=port,
                grpc_port=grpc_port,
                router_image=defaults.router_image_ref(),
                auth=cast(Literal["key", "none", "tls"], args.auth),
                keys=pulumi.Output.secret(pulumi.Output.all(*keys_out)) if keys_out else [],
                tls=None
                if args.tls is None
                else TlsFiles(
                    cert=str(Path(args.tls.cert).resolve()),
                    key=str(Path(args.tls.key).resolve()),
                    client_ca=str(Path(args.tls.client_ca).resolve()),
                ),
                tls_sha256=None
                if args.tls is None
                else [sha256_file(args.tls.cert), sha256_file(args.tls.key), sha256_file(args.tls.client_ca)],
                deployments=specs,
                traffic=traffic,
                mirror=mirror,
                rollout=rollout,
                max_body_mb=args.max_body_mb,
                model_refs=pulumi.Output.secret(flat_refs),
                collect_credential=args.data_collection.sas if args.data_collection is not None else None,
                internal_key=self.internal_key,
            )
            res: Any = LocalEndpointResource(
                f"{name}-local",
                spec,
                pulumi.ResourceOptions(
                    parent=self,
                    additional_secret_outputs=["keys", "model_refs", "collect_credential", "internal_key"],
                    custom_timeouts=pulumi.CustomTimeouts(create="30m", update="60m"),
                ),
            )
            self.local = res
            outs = {
                "scoring_uri": res.scoring_uri,
                "grpc_uri": res.grpc_uri,
                "openapi_uri": res.openapi_uri,
                "deployments": res.deployments_out,
                "rollout_plan": res.rollout_plan,
                "last_rollout": res.last_rollout,
            }
        self.scoring_uri = outs["scoring_uri"]
        self.grpc_uri = outs.get("grpc_uri") or pulumi.Output.from_input(None)
        self.openapi_uri = outs["openapi_uri"]
        self.deployments = outs["deployments"]
        self.rollout_plan = outs["rollout_plan"]
        self.last_rollout = outs["last_rollout"]
        self.primary_key = pulumi.Output.secret(keys_out[0]) if keys_out else pulumi.Output.from_input(None)
        self.secondary_key = pulumi.Output.secret(keys_out[1]) if keys_out else pulumi.Output.from_input(None)
        self.traffic = pulumi.Output.from_input(traffic)
        self.mirror = pulumi.Output.from_input(mirror)
        self.endpoint_name = endpoint
        self.register_outputs(
            {
                "scoring_uri": self.scoring_uri,
                "grpc_uri": self.grpc_uri,
                "openapi_uri": self.openapi_uri,
                "primary_key": self.primary_key,
                "secondary_key": self.secondary_key,
                "traffic": self.traffic,
                "mirror": self.mirror,
                "deployments": self.deployments,
                "rollout_plan": self.rollout_plan,
            }
        )


def _check_deployment(where: str, d: str, dep: Deployment, require_digest: bool) -> None:
    if isinstance(dep.image, str):
        if not dep.image or any(c.isspace() for c in dep.image):
            raise EndpointError(
                f"{where}: deployments[{d!r}].image = {dep.image!r} is not an image reference"
            )
        if require_digest and "@sha256:" not in dep.image:
            raise EndpointError(
                f"{where}: deployments[{d!r}].image = {dep.image!r} has no digest and require_digest is set: "
                "pin it as name@sha256:<64 hex> (or pass a ScoringImage)"
            )
    if dep.autoscale is not None:
        a = dep.autoscale
        if a.min_replicas < 1 or a.max_replicas < 1:
            raise EndpointError(f"{where}: deployments[{d!r}].autoscale replicas must be ≥ 1, got {a}")
        if a.min_replicas > a.max_replicas:
            raise EndpointError(
                f"{where}: deployments[{d!r}].autoscale min_replicas={a.min_replicas} > max_replicas="
                f"{a.max_replicas}: make min ≤ max"
            )
        if not 1 <= a.cpu_target_percent <= 100:
            raise EndpointError(
                f"{where}: deployments[{d!r}].autoscale cpu_target_percent={a.cpu_target_percent} must be 1..100"
            )
    elif not isinstance(dep.replicas, int) or isinstance(dep.replicas, bool) or not 1 <= dep.replicas <= 64:
        raise EndpointError(
            f"{where}: deployments[{d!r}].replicas = {dep.replicas!r} must be an integer in 1..64"
        )
    for res, n in dep.accelerators.items():
        if "/" not in res or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise EndpointError(
                f"{where}: deployments[{d!r}].accelerators[{res!r}] = {n!r}: give a device-plugin resource name "
                "such as 'xilinx.com/fpga' and a count in 1..16"
            )
    if not 0 < dep.cpu <= 64:
        raise EndpointError(f"{where}: deployments[{d!r}].cpu = {dep.cpu} must be in (0, 64] cores")
    if not 64 <= dep.memory_mb <= 262144:
        raise EndpointError(f"{where}: deployments[{d!r}].memory_mb = {dep.memory_mb} must be in 64..262144")
