"""Dynamic providers for CloudEndpoint: the endpoint's keys (rotated one at a time), and the endpoint on Local Docker,
which reads its typed spec (spec.py) and hands the rollout to the engine (rollout.py) with the Local Docker target
(local.py). Nothing here starts a container or moves traffic itself."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown

from mlinfra.endpoints import local, rollout
from mlinfra.endpoints.plan import describe_plan, plan, revision, upstream_weights
from mlinfra.endpoints.spec import EndpointSpec
from mlinfra.observed import drift_phrases, observed_drift, say_drift
from mlinfra.registry import ModelRegistry

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # how the engine passes a value not known until apply


# ----------------------------------------------------------------------------------------------------------------
# Keys


def _key() -> str:
    return secrets.token_urlsafe(32)


class EndpointKeysProvider(ResourceProvider):
    """Two keys. `key_version` n → n+1 regenerates one of them: the secondary on even versions, the primary on
    odd ones — so clients that moved to the other key after the previous bump keep working."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=int(olds["key_version"]) != int(news["key_version"]))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(
            id_=secrets.token_hex(8), outs={**props, "primary_key": _key(), "secondary_key": _key()}
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = {**news, "primary_key": olds["primary_key"], "secondary_key": olds["secondary_key"]}
        old_v, new_v = int(olds["key_version"]), int(news["key_version"])
        for v in range(old_v + 1, new_v + 1) if new_v > old_v else [new_v]:  # going back regenerates too
            outs["secondary_key" if v % 2 == 0 else "primary_key"] = _key()
        return UpdateResult(outs=outs)


class EndpointKeys(Resource):
    def __init__(self, name: str, key_version: int, opts: ResourceOptions | None = None):
        super().__init__(
            EndpointKeysProvider(),
            name,
            {"key_version": key_version, "primary_key": None, "secondary_key": None},
            ResourceOptions.merge(
                opts, ResourceOptions(additional_secret_outputs=["primary_key", "secondary_key"])
            ),
        )


class InternalKeyProvider(ResourceProvider):
    """The credential the router presents to the endpoint's scoring servers (which accept nothing else): created
    once, never shown to clients, kept for the endpoint's life."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=secrets.token_hex(8), outs={**props, "key": _key()})


class InternalKey(Resource):
    def __init__(self, name: str, opts: ResourceOptions | None = None):
        super().__init__(
            InternalKeyProvider(),
            name,
            {"key": None},
            ResourceOptions.merge(opts, ResourceOptions(additional_secret_outputs=["key"])),
        )


# ----------------------------------------------------------------------------------------------------------------
# Local Docker

CONTENT_KEYS = (
    "deployments",
    "traffic",
    "mirror",
    "auth",
    "keys",
    "tls_sha256",
    "router_image",
    "max_body_mb",
    "port",
    "grpc_port",
    "rollout",
    "collect_credential",
)


def _log_to(endpoint: str) -> rollout.Log:
    """Progress goes to the engine's diagnostics (the provider's stderr) and to <endpoint dir>/rollout.log."""
    return rollout.progress_log(endpoint, local.endpoint_dir(endpoint) / "rollout.log")


def _revisions(spec: EndpointSpec) -> dict[str, str]:
    """Revisions of the deployments; a new data-collection SAS makes new revisions too, so the servers that hold
    the old one are replaced by a rollout (a hash of the SAS, never the SAS, goes into the revision)."""
    sas = spec.collect_credential
    salt = {"_collect": hashlib.sha256(str(sas).encode()).hexdigest()[:8]} if sas else {}
    return {
        d: "(new image)" if UNKNOWN in str(s.image) else revision({**s.props(), "env": {**s.env, **salt}})
        for d, s in spec.deployments.items()
    }


def _weights(spec: EndpointSpec) -> dict[str, float]:
    return upstream_weights(_revisions(spec), spec.traffic)


def _targets(spec: EndpointSpec) -> tuple[dict[str, rollout.Desired], dict[str, float]]:
    """What each deployment should run, and the traffic map by ``deployment@revision`` (revisions hashed once)."""
    revs = _revisions(spec)
    desired = {d: rollout.Desired(revs[d], s.props(), s.replicas) for d, s in spec.deployments.items()}
    return desired, upstream_weights(revs, spec.traffic)


def _has_unknown(value: Any) -> bool:
    """Whether a preview value holds an unknown (pulumi.output.Unknown) anywhere."""
    if isinstance(value, Unknown) or value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_unknown(v) for v in value)
    return False


def _users(endpoint: str, models: list[dict[str, Any]], add: bool) -> None:
    """The endpoint is a user of each model version it serves: the registry refuses to delete them."""
    user = f"endpoint:{endpoint}"
    for m in models:
        reg = ModelRegistry(m["registry"], m.get("credential") or None)
        if add:
            reg.add_user(m["name"], int(m["version"]), user)
        else:
            with contextlib.suppress(Exception):  # best effort: a registry that is gone keeps no users
                reg.remove_user(m["name"], int(m["version"]), user)


def _outputs(
    props: dict[str, Any], target: local.LocalDockerTarget, result: rollout.Result, weights: dict[str, float]
) -> dict[str, Any]:
    deployments = {
        u.deployment: {
            "image": u.spec["image"],
            "digest": u.spec.get("digest"),
            "models": u.spec.get("models") or [],
            "revision": u.revision,
            "replicas": len(u.replicas),
        }
        for u in result.live.values()
    }
    url = target.router.url
    return {
        **props,
        "port": target.router.port,
        "grpc_port": target.router.grpc_port,
        "scoring_uri": f"{url}/score",
        "grpc_uri": f"127.0.0.1:{target.router.grpc_port}",
        "openapi_uri": f"{url}/openapi.json",
        "live": {
            "slots": target.slots,
            "grpc_slots": target.grpc_slots,
            "upstreams": {k: u.to_json() for k, u in result.live.items()},
            "weights": weights,
        },
        "deployments_out": deployments,
        "last_rollout": result.record,
        "observed": local.observe(target.spec, result.live),
    }


class LocalEndpointProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validation that needs this machine (the port), and the rollout plan `pulumi preview --diff` shows."""
        failures = []
        for key in ("port", "grpc_port"):
            port = news.get(key)
            if not isinstance(port, int | float) or port == olds.get(key):
                continue
            owner = local.docker(
                "ps", "-q", "--filter", f"label=mlinfra.io/{key.replace('_', '-')}={int(port)}",
                "--filter", f"label=mlinfra.io/endpoint={news['endpoint_name']}", check=False,
            ).stdout.strip()  # fmt: skip
            if not owner and local.port_taken(int(port)):
                failures.append(
                    CheckFailure(
                        key,
                        f"port {int(port)} on 127.0.0.1 is already taken by another process: choose another "
                        f"LocalDocker({key}=...) or leave it unset to pick a free one",
                    )
                )
        if _has_unknown(news.get("deployments")) or _has_unknown(news.get("traffic")):
            # An image still to be built: the revisions (and so the plan) are known only at `up`.
            return CheckResult(
                {**news, "rollout_plan": ["(planned at up: an image is built first)"]}, failures
            )
        spec = EndpointSpec.from_props(news)
        old_w = _weights(EndpointSpec.from_props(olds)) if olds.get("deployments") else {}
        steps = plan(old_w, _weights(spec), spec.rollout.steps)
        news = {
            **news,
            "rollout_plan": describe_plan(old_w, steps, spec.rollout.bake_s),
            # What `up` brings the endpoint to; after a refresh found drift, preview shows observed → this.
            "observed": local.healthy_observation(spec),
        }
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in CONTENT_KEYS if olds.get(k) != news.get(k)]
        for key in ("port", "grpc_port"):
            if news.get(key) is None and key in changed:
                changed.remove(key)  # an automatically chosen port stays
        renamed = olds.get("endpoint_name") != news.get("endpoint_name")
        # Drift: `pulumi refresh` (read) recorded what really runs; anything short of the declared state is repaired.
        drifted = observed_drift(olds, news)
        return DiffResult(
            changes=bool(changed) or renamed or drifted,
            replaces=["endpoint_name"] if renamed else [],
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = EndpointSpec.from_props(props)
        log = _log_to(spec.endpoint_name)
        port = spec.port or local.free_port()
        grpc_port = spec.grpc_port or local.free_port(avoid={port})
        target = local.LocalDockerTarget(spec, port, grpc_port, {}, {}, log)
        desired, weights = _targets(spec)
        try:
            result = rollout.converge(
                target, {}, desired, {}, weights, rollout.Policy.from_spec(spec.rollout), log
            )
        except Exception:  # the engine removed the replicas it started; the router goes too
            target.router.remove()
            raise
        _users(spec.endpoint_name, spec.model_refs or [], add=True)
        log(f"serving on {target.router.url}: {', '.join(f'{k} {w:g}%' for k, w in weights.items())}")
        return CreateResult(id_=spec.endpoint_name, outs=_outputs(props, target, result, weights))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec, old = EndpointSpec.from_props(news), EndpointSpec.from_props(olds)
        log = _log_to(spec.endpoint_name)
        port = spec.port or int(olds["port"])
        if port != int(olds["port"]):  # the router restarts on its new port
            local.Router(old.endpoint_name, int(olds["port"]), old.router_image, old.auth).remove()
        live = {k: rollout.Revision.from_json(v) for k, v in olds["live"]["upstreams"].items()}
        old_weights = {k: float(v) for k, v in olds["live"]["weights"].items()}
        # Endpoints created before gRPC routing get a gRPC port (and their replicas gRPC ports) now, kept afterwards.
        grpc_port = spec.grpc_port or int(olds.get("grpc_port") or 0) or local.free_port(avoid={port})
        target = local.LocalDockerTarget(
            spec, port, grpc_port, olds["live"].get("slots") or {}, olds["live"].get("grpc_slots") or {}, log
        )
        desired, new_weights = _targets(spec)
        result = rollout.converge(
            target,
            live,
            desired,
            old_weights,
            new_weights,
            rollout.Policy.from_spec(spec.rollout),
            log,
        )
        _users(spec.endpoint_name, spec.model_refs or [], add=True)
        kept = {(m["name"], int(m["version"])) for m in spec.model_refs or []}
        gone = [m for m in old.model_refs or [] if (m["name"], int(m["version"])) not in kept]
        _users(old.endpoint_name, gone, add=False)
        return UpdateResult(outs=_outputs(news, target, result, new_weights))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: what really runs (the router, the replicas of each serving revision) as ``observed``.
        The endpoint stays in the state even if nothing of it runs: `up` brings it back on the same port."""
        spec = EndpointSpec.from_props(props)
        live = {
            k: rollout.Revision.from_json(v)
            for k, v in ((props.get("live") or {}).get("upstreams") or {}).items()
        }
        observed = local.observe(spec, live, local.containers_snapshot(spec.endpoint_name))
        drift = drift_phrases(observed, local.healthy_observation(spec))
        if drift:
            say_drift(spec.endpoint_name, "; ".join(drift), "`pulumi up` repairs it")
        return ReadResult(id_, {**props, "observed": observed})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        spec = EndpointSpec.from_props(props)
        log = _log_to(spec.endpoint_name)
        local.Router(spec.endpoint_name, int(props.get("port") or 0), spec.router_image, spec.auth).remove()
        containers = local.find_containers(spec.endpoint_name)
        local.remove_containers(
            [c for c in containers if c["labels"].get("mlinfra.io/role") != "router"], log, grace_s=10
        )
        _users(spec.endpoint_name, spec.model_refs or [], add=False)
        shutil.rmtree(local.endpoint_dir(spec.endpoint_name), ignore_errors=True)


class LocalEndpointResource(Resource):
    def __init__(self, name: str, spec: EndpointSpec, opts: ResourceOptions | None = None):
        super().__init__(LocalEndpointProvider(), name, spec.props(), opts)
