"""Dynamic provider for EdgeDeployment: publish the manifest (retained, QoS 1), then read device reports until the
rollout gate is met or fails; withdraw on delete."""

from __future__ import annotations

import json
import time
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

from mlinfra.edge.fleet import (
    Broker,
    EdgeError,
    artifact_urls,
    manifest,
    publish,
    read_fleet,
    read_retained,
    withdraw,
)
from mlinfra.observed import observed_drift, say_drift
from mlinfra.registry.refs import model_identities
from mlinfra_edge.condition import parse
from mlinfra_edge.manifest import deployment_topic

CONTENT_KEYS = ("deployment_name", "target_condition", "priority", "layered", "models", "broker", "gate")


def _broker(props: dict[str, Any]) -> Broker:
    return Broker(props["broker"], props["broker_username"], props["broker_password"])


def _counts(props: dict[str, Any], generation: str, deadline: float) -> dict[str, Any]:
    while True:  # the broker may be restarting: retry until the gate's deadline
        try:
            fleet = read_fleet(_broker(props))
            break
        except EdgeError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
    cond = parse(props["target_condition"])
    name = props["deployment_name"]
    targeted = sorted(d for d, twin in fleet.twins.items() if cond.matches(twin))
    states = {d: fleet.statuses.get(d, {}).get(name) for d in targeted}
    current = {d: s for d, s in states.items() if s and s.get("generation") == generation}
    failing = sorted(d for d, s in current.items() if s["state"] == "failure")
    return {
        "targeted": len(targeted),
        "applied": sum(1 for s in current.values() if s["state"] in ("applied", "success", "failure")),
        "succeeded": sum(1 for s in current.values() if s["state"] == "success"),
        "superseded": sum(1 for s in current.values() if s["state"] == "superseded"),
        "failed": len(failing),
        "failing_devices": failing,
        "failure_reasons": {d: current[d].get("reason", "") for d in failing},
        "offline": sorted(d for d in targeted if fleet.twins[d].get("status") == "offline"),
    }


def observe(props: dict[str, Any]) -> str:
    """``"published"`` when the broker still retains this deployment's manifest at its generation; else what it
    retains instead (``"withdrawn"``, ``"generation 1a2b… published"``)."""
    body = read_retained(_broker(props), deployment_topic(props["deployment_name"]))
    if body is None:
        return "withdrawn"
    try:
        generation = json.loads(body).get("generation")
    except (ValueError, AttributeError):
        return "an unreadable manifest published"
    return "published" if generation == props.get("generation") else f"generation {generation} published"


class EdgeDeploymentProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # What `up` brings the broker to; after a refresh found the manifest gone, preview shows observed → this.
        return CheckResult({**news, "observed": "published"}, [])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the retained manifest (``observed``) and the devices' current reports (counts)."""
        observed = observe(props)
        if observed != "published":
            say_drift(
                f"edge deployment {props['deployment_name']}", observed, "`pulumi up` publishes it again"
            )
        counts = _counts(props, str(props.get("generation")), time.monotonic() + 10)
        keep = ("targeted", "applied", "succeeded", "failed", "superseded", "failing_devices")
        return ReadResult(id_, {**props, **{k: counts[k] for k in keep}, "observed": observed})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        def norm(k: str, p: dict[str, Any]) -> Any:
            if k == "models":
                return model_identities(p.get(k))
            return p.get(k)

        changed = [k for k in CONTENT_KEYS if norm(k, olds) != norm(k, news)]
        drifted = observed_drift(olds, news)
        return DiffResult(
            changes=bool(changed) or drifted,
            replaces=["deployment_name"] if "deployment_name" in changed else [],
            delete_before_replace=True,
        )

    def _rollout(self, props: dict[str, Any]) -> dict[str, Any]:
        gate = props["gate"]
        models = [artifact_urls(m, int(props["url_ttl_s"])) for m in props["models"]]
        body = manifest(
            props["deployment_name"],
            props["target_condition"],
            int(props["priority"]),
            bool(props["layered"]),
            models,
        )
        generation = json.loads(body)["generation"]
        deadline = time.monotonic() + float(gate["timeout_s"])
        while True:  # a broker that is restarting gets until the gate's deadline
            try:
                publish(_broker(props), deployment_topic(props["deployment_name"]), body)
                break
            except EdgeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
        counts = _counts(props, generation, deadline)
        while True:
            done = counts["succeeded"] + counts["failed"]
            applicable = (
                counts["targeted"] - counts["superseded"]
            )  # superseded: a higher priority applies there
            enough = applicable <= 0 or counts["succeeded"] >= gate["min_success_fraction"] * applicable
            if counts["failed"] > int(gate["max_failures"]):
                break
            if enough and done >= applicable - len(counts["offline"]):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
            counts = _counts(props, generation, deadline)
        ok = counts["failed"] <= int(gate["max_failures"]) and enough
        if not ok:
            reasons = "; ".join(f"{d}: {r}" for d, r in list(counts["failure_reasons"].items())[:5])
            raise EdgeError(
                f"edge deployment {props['deployment_name']} failed its gate: {counts['succeeded']} of "
                f"{applicable} targeted devices reported success (need ≥ "
                f"{gate['min_success_fraction']:.0%}), {counts['failed']} failed (allowed "
                f"{gate['max_failures']}), {len(counts['offline'])} offline, within {gate['timeout_s']} s"
                + (f". Failures: {reasons}" if reasons else "")
            )
        return {
            **props,
            "observed": "published",
            "generation": generation,
            **{
                k: counts[k]
                for k in ("targeted", "applied", "succeeded", "failed", "superseded", "failing_devices")
            },
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["deployment_name"], outs=self._rollout(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._rollout(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        withdraw(_broker(props), props["deployment_name"])


class EdgeDeploymentResource(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(EdgeDeploymentProvider(), name, props, opts)
