"""Dynamic providers for CloudEndpoint: the endpoint's keys (rotated one at a time), and the Local Docker target
(containers + router + the progressive rollout inside `pulumi up`)."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import sys
import time
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown

from mlinfra.endpoint import local, nginx
from mlinfra.endpoint.local import Policy, Router, Upstream
from mlinfra.endpoint.plan import EndpointError, describe_plan, plan, revision, upstream_weights
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
    "rollout",
    "collect_credential",
)


def _log_to(endpoint: str) -> local.Log:
    """Progress goes to the engine's diagnostics (the provider's stderr) and to <endpoint dir>/rollout.log."""
    path = local.endpoint_dir(endpoint) / "rollout.log"

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {endpoint}: {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def _revisions(props: dict[str, Any]) -> dict[str, str]:
    """Revisions of the deployments; a new data-collection SAS makes new revisions too, so the servers that hold
    the old one are replaced by a rollout (a hash of the SAS, never the SAS, goes into the revision)."""
    sas = props.get("collect_credential")
    salt = {"_collect": hashlib.sha256(str(sas).encode()).hexdigest()[:8]} if sas else {}
    return {
        d: (
            "(new image)"
            if UNKNOWN in str(s.get("image"))
            else revision({**s, "env": {**(s.get("env") or {}), **salt}})
        )
        for d, s in (props.get("deployments") or {}).items()
    }


def _has_unknown(value: Any) -> bool:
    """Whether a preview value holds an unknown (pulumi.output.Unknown) anywhere."""
    if isinstance(value, Unknown) or value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_unknown(v) for v in value)
    return False


def _weights(props: dict[str, Any]) -> dict[str, float]:
    return upstream_weights(_revisions(props), props.get("traffic") or {})


def _router(props: dict[str, Any], port: int) -> Router:
    return Router(
        endpoint=props["endpoint_name"],
        port=port,
        image=props["router_image"],
        auth=props["auth"],
        tls=dict(props.get("tls") or {}),
        max_body_mb=float(props.get("max_body_mb") or 10),
    )


def _slots(old: dict[str, Any], props: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """Two loopback port sets (slots A and B) per deployment, one port per replica; kept across updates."""
    taken = {int(p) for d in old.values() for ports in d.values() for p in ports}
    out: dict[str, dict[str, list[int]]] = {}
    for d, spec in props["deployments"].items():
        n = int(spec["replicas"])
        out[d] = {}
        for slot in ("A", "B"):
            ports = [int(p) for p in (old.get(d) or {}).get(slot, [])][:n]
            while len(ports) < n:
                p = local.free_port()
                if p not in taken:
                    taken.add(p)
                    ports.append(p)
            out[d][slot] = ports
    return out


def _config_upstreams(slots: dict[str, dict[str, list[int]]]) -> dict[str, tuple[str, list[str]]]:
    return {
        nginx.upstream_name(d, slot): (d, [f"127.0.0.1:{p}" for p in ports])
        for d, by_slot in slots.items()
        for slot, ports in by_slot.items()
    }


def _mirror(props: dict[str, Any], live: dict[str, Upstream]) -> dict[str, float]:
    """Mirror percent by nginx upstream: the shadow deployment's live revision."""
    out = {}
    for d, pct in (props.get("mirror") or {}).items():
        ups = [u for u in live.values() if u.deployment == d]
        if pct and ups:
            out[ups[-1].uname] = float(pct)
    return out


def _secret_env(props: dict[str, Any]) -> dict[str, str]:
    sas = props.get("collect_credential")
    return {"MLINFRA_SERVE_COLLECT_CREDENTIAL": sas} if sas else {}


def _keys(props: dict[str, Any]) -> list[str]:
    return [k for k in props.get("keys") or [] if k] if props["auth"] == "key" else []


def _users(props: dict[str, Any], add: bool) -> None:
    """The endpoint is a user of each model version it serves: the registry refuses to delete them."""
    user = f"endpoint:{props['endpoint_name']}"
    for m in props.get("model_refs") or []:
        reg = ModelRegistry(m["registry"], m.get("credential") or None)
        if add:
            reg.add_user(m["name"], int(m["version"]), user)
        else:
            with contextlib.suppress(Exception):  # best effort: a registry that is gone keeps no users
                reg.remove_user(m["name"], int(m["version"]), user)


def _outputs(
    props: dict[str, Any],
    port: int,
    slots: dict[str, Any],
    live: dict[str, Upstream],
    weights: dict[str, float],
    record: list[str],
) -> dict[str, Any]:
    router = _router(props, port)
    deployments = {
        u.deployment: {
            "image": u.spec["image"],
            "digest": u.spec.get("digest"),
            "models": u.spec.get("models") or [],
            "revision": u.revision,
            "replicas": len(u.containers),
        }
        for u in live.values()
    }
    return {
        **props,
        "port": port,
        "scoring_uri": f"{router.url}/score",
        "openapi_uri": f"{router.url}/openapi.json",
        "live": {"slots": slots, "upstreams": {k: u.to_json() for k, u in live.items()}, "weights": weights},
        "deployments_out": deployments,
        "last_rollout": record,
    }


class LocalEndpointProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validation that needs this machine (the port), and the rollout plan `pulumi preview --diff` shows."""
        failures = []
        port = news.get("port")
        if isinstance(port, int | float) and port != olds.get("port"):
            owner = local.docker(
                "ps", "-q", "--filter", f"label=mlinfra.io/port={int(port)}",
                "--filter", f"label=mlinfra.io/endpoint={news['endpoint_name']}", check=False,
            ).stdout.strip()  # fmt: skip
            if not owner and local.port_taken(int(port)):
                failures.append(
                    CheckFailure(
                        "port",
                        f"port {int(port)} on 127.0.0.1 is already taken by another process: choose another "
                        "LocalDocker(port=...) or leave it unset to pick a free one",
                    )
                )
        if _has_unknown(news.get("deployments")) or _has_unknown(news.get("traffic")):
            # An image still to be built: the revisions (and so the plan) are known only at `up`.
            return CheckResult(
                {**news, "rollout_plan": ["(planned at up: an image is built first)"]}, failures
            )
        policy = news.get("rollout") or {}
        old_w = _weights(olds) if olds.get("deployments") else {}
        steps = plan(old_w, _weights(news), [float(s) for s in policy.get("steps") or [100]])
        news = {**news, "rollout_plan": describe_plan(old_w, steps, float(policy.get("bake_s") or 0))}
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in CONTENT_KEYS if olds.get(k) != news.get(k)]
        if news.get("port") is None and "port" in changed:
            changed.remove("port")  # an automatically chosen port stays
        renamed = olds.get("endpoint_name") != news.get("endpoint_name")
        return DiffResult(
            changes=bool(changed) or renamed,
            replaces=["endpoint_name"] if renamed else [],
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        log = _log_to(props["endpoint_name"])
        port = int(props["port"]) if props.get("port") else local.free_port()
        revs = _revisions(props)
        slots = _slots({}, props)
        live: dict[str, Upstream] = {}
        router = _router(props, port)
        policy = Policy.from_props(props["rollout"])
        weights = _weights(props)
        try:
            for d, spec in props["deployments"].items():
                up = Upstream(d, revs[d], dict(spec), "A")
                live[up.key] = up
                local.start_upstream(props["endpoint_name"], up, slots[d]["A"], log, _secret_env(props))
            for up in live.values():
                local.wait_ready(up, up.containers, policy.readiness_timeout_s, log)
            router.set_keys(_keys(props))
            router.route(*local.to_router(live, weights))
            router.configure(_config_upstreams(slots), _mirror(props, live))
        except Exception:
            router.remove()
            for up in live.values():
                local.remove_containers(up.containers, log, grace_s=2)
            raise
        _users(props, add=True)
        log(f"serving on {router.url}: {', '.join(f'{k} {w:g}%' for k, w in weights.items())}")
        return CreateResult(id_=props["endpoint_name"], outs=_outputs(props, port, slots, live, weights, []))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        log = _log_to(news["endpoint_name"])
        port = int(news["port"]) if news.get("port") else int(olds["port"])
        live = {k: Upstream.from_json(v) for k, v in olds["live"]["upstreams"].items()}
        old_weights = {k: float(v) for k, v in olds["live"]["weights"].items()}
        old_slots = olds["live"].get("slots") or {}
        policy = Policy.from_props(news["rollout"])
        router = _router(news, port)
        if port != int(olds["port"]):
            _router(olds, int(olds["port"])).remove()  # the router restarts on its new port below
        revs = _revisions(news)
        slots = _slots(old_slots, news)
        target: dict[str, Upstream] = {}
        new_only: list[Upstream] = []
        started: list[dict[str, Any]] = []
        leaving: list[dict[str, Any]] = []
        try:
            for d, spec in news["deployments"].items():
                key, n = f"{d}@{revs[d]}", int(spec["replicas"])
                if key in live:  # same revision: scale in place
                    up = Upstream.from_json(live[key].to_json())
                    leaving += up.containers[n:]
                    up.containers = up.containers[:n]
                    more = local.start_upstream(
                        news["endpoint_name"], up, slots[d][up.slot], log, _secret_env(news)
                    )
                    started += more
                    local.wait_ready(up, more, policy.readiness_timeout_s, log)
                else:  # a new revision, in the slot the current one does not use
                    current = [u for u in live.values() if u.deployment == d]
                    slot = "B" if current and current[0].slot == "A" else "A"
                    up = Upstream(d, revs[d], dict(spec), slot)
                    new_only.append(up)
                    log(f"{key}: new revision of {d} ({spec['image']})")
                    started += local.start_upstream(
                        news["endpoint_name"], up, slots[d][slot], log, _secret_env(news)
                    )
                    local.wait_ready(up, up.containers, policy.readiness_timeout_s, log)
                target[key] = up
        except EndpointError:
            local.remove_containers(started, log, grace_s=2)
            raise
        everything = {**live, **target}
        # During the rollout the router knows the old and the new upstreams; reloads only if that set changed.
        transition = {
            **_config_upstreams({d: v for d, v in old_slots.items() if d not in slots}),
            **_config_upstreams(slots),
        }
        try:
            reloaded = router.configure(transition, _mirror(news, target))
            router.set_keys(_keys(news))
            new_weights = upstream_weights(revs, news["traffic"])
            record = local.rollout(router, everything, old_weights, new_weights, new_only, policy, log)
        except local.RolloutFailed:
            raise
        except Exception:
            # Anything else mid-rollout (dockerd, the router): put the last good map back before failing.
            with contextlib.suppress(Exception):
                router.route(*local.to_router(everything, old_weights))
            raise
        # Done: the router forgets what left (a reload only if the upstream set shrank), then the leftovers stop.
        reloaded = router.configure(_config_upstreams(slots), _mirror(news, target)) or reloaded
        router.route(*local.to_router(target, new_weights))
        time.sleep(1.0)  # requests already on their way to what leaves finish first
        if reloaded:
            router.drain()
        keep = {c["name"] for u in target.values() for c in u.containers}
        leaving += [c for u in live.values() for c in u.containers if c["name"] not in keep]
        local.remove_containers([c for c in leaving if c["name"] not in keep], log)
        _users(news, add=True)
        kept = {(m["name"], int(m["version"])) for m in news.get("model_refs") or []}
        _users(
            {
                **olds,
                "model_refs": [
                    m for m in olds.get("model_refs") or [] if (m["name"], int(m["version"])) not in kept
                ],
            },
            add=False,
        )
        return UpdateResult(outs=_outputs(news, port, slots, target, new_weights, record))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        log = _log_to(props["endpoint_name"])
        _router(props, int(props.get("port") or 0)).remove()
        containers = local.find_containers(props["endpoint_name"])
        local.remove_containers(
            [c for c in containers if c["labels"].get("mlinfra.io/role") != "router"], log, grace_s=10
        )
        _users(props, add=False)
        shutil.rmtree(local.endpoint_dir(props["endpoint_name"]), ignore_errors=True)


class LocalEndpointResource(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(LocalEndpointProvider(), name, props, opts)
