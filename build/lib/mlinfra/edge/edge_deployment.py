"""EdgeDeployment: step 3 for edge devices — deploy models to the devices whose twins match a target condition,
layered by priority (Azure IoT Edge semantics), with device status as a gate of `pulumi up`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from mlinfra import defaults
from mlinfra.edge.fleet import Broker, EdgeError, read_fleet
from mlinfra.edge.provider import EdgeDeploymentResource
from mlinfra.registry.registered_model import RegisteredModel, as_int
from mlinfra_edge.condition import parse
from mlinfra_edge.manifest import NAME_RE


@dataclass
class EdgeGate:
    min_success_fraction: float = 1.0
    """Share of targeted devices that must report success. Default: all of them."""
    timeout_s: float = 120.0
    """How long `pulumi up` waits for reports. Default: 120 s."""
    max_failures: int = 0
    """Devices allowed to report failure. Default: none."""


@dataclass
class EdgeDeploymentArgs:
    models: list[RegisteredModel]
    """The models to deploy (each device serves them with the scoring server). Required."""
    target_condition: str
    """Which devices, over their twins: e.g. `tags.site = 'plant-7' AND tags.ring IN ('canary','ga')`; `*` for all.
    An unparseable condition fails the preview, pointing at the position."""
    priority: int = 0
    """Among non-layered deployments targeting a device, the highest priority applies. Default: 0."""
    layered: bool = False
    """A layered deployment adds its models on top of the device's base deployment. Default: False."""
    deployment_name: str | None = None
    """Name on the broker. Default: the resource name."""
    broker: str | None = None
    """mqtt://HOST:PORT or mqtts://HOST:PORT. Default: the local Mosquitto (make services)."""
    broker_username: str | None = None
    """Default: the local broker's admin user."""
    broker_password: pulumi.Input[str] | None = None
    """Made a secret. Default: the local broker's admin password."""
    gate: EdgeGate = field(default_factory=EdgeGate)
    """Rollout gate. Default: every targeted device reports success within 120 s, no failures."""
    url_ttl_s: int = 24 * 3600
    """Lifetime of the signed download URLs in the manifest. Default: 24 h."""


class EdgeDeployment(pulumi.ComponentResource):
    """Outputs: ``targeted``, ``applied``, ``succeeded``, ``failed`` (counts), ``failing_devices``, ``generation``."""

    targeted: pulumi.Output[int]
    applied: pulumi.Output[int]
    succeeded: pulumi.Output[int]
    failed: pulumi.Output[int]
    failing_devices: pulumi.Output[list[str]]
    generation: pulumi.Output[str]

    def __init__(self, name: str, args: EdgeDeploymentArgs, opts: pulumi.ResourceOptions | None = None):
        dep_name = args.deployment_name or name
        if not NAME_RE.match(dep_name):
            raise EdgeError(f"deployment name {dep_name!r}: use letters, digits, '.', '_' or '-' (≤ 128)")
        condition = parse(args.target_condition)  # ConditionError names the position
        if not args.models:
            raise EdgeError(f"EdgeDeployment {name}: models is empty")
        g = args.gate
        if not 0 <= g.min_success_fraction <= 1 or g.timeout_s <= 0 or g.max_failures < 0:
            raise EdgeError(
                f"EdgeDeployment {name}: gate needs 0 ≤ min_success_fraction ≤ 1 (got "
                f"{g.min_success_fraction}), timeout_s > 0 (got {g.timeout_s}), max_failures ≥ 0 "
                f"(got {g.max_failures})"
            )
        local = defaults.broker_credentials() if args.broker is None or args.broker_username is None else {}
        broker = args.broker or defaults.mqtt_url()
        username = args.broker_username or local.get("username", "")
        password: Any = (
            args.broker_password if args.broker_password is not None else local.get("password", "")
        )
        counted = pulumi.Output.from_input(password).apply(
            lambda pw: _count_targeted(Broker(broker, username, pw or ""), condition, dep_name)
        )
        # The component's inputs are what policies (mlinfra.policy) and `mlinfra preview` read: no secrets here.
        props = {
            "deployment_name": dep_name,
            "target_condition": args.target_condition,
            "priority": args.priority,
            "layered": args.layered,
            "gate": {
                "min_success_fraction": g.min_success_fraction,
                "timeout_s": g.timeout_s,
                "max_failures": g.max_failures,
            },
            "models": [{"name": m.model_name, "version": m.version} for m in args.models],
            "devices_matched": counted.apply(lambda c: c[0]),
            "devices_known": counted.apply(lambda c: c[1]),
        }
        super().__init__("mlinfra:edge:EdgeDeployment", name, props, opts)
        models = [m.model_ref for m in args.models]
        self.deployment = EdgeDeploymentResource(
            f"{name}-deployment",
            {
                "deployment_name": dep_name,
                "target_condition": args.target_condition,
                "priority": args.priority,
                "layered": args.layered,
                "models": models,
                "broker": broker,
                "broker_username": username,
                "broker_password": pulumi.Output.secret(password),
                "gate": {
                    "min_success_fraction": g.min_success_fraction,
                    "timeout_s": g.timeout_s,
                    "max_failures": g.max_failures,
                },
                "url_ttl_s": args.url_ttl_s,
                "generation": None,
                "targeted": None,
                "applied": None,
                "succeeded": None,
                "failed": None,
                "failing_devices": None,
            },
            pulumi.ResourceOptions(
                parent=self,
                depends_on=list(args.models),
                additional_secret_outputs=["broker_password", "models"],
            ),
        )
        d: Any = self.deployment
        self.targeted = d.targeted.apply(as_int)
        self.applied = d.applied.apply(as_int)
        self.succeeded = d.succeeded.apply(as_int)
        self.failed = d.failed.apply(as_int)
        self.failing_devices = d.failing_devices
        self.generation = d.generation
        self.register_outputs(
            {
                "targeted": self.targeted,
                "applied": self.applied,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "failing_devices": self.failing_devices,
                "generation": self.generation,
            }
        )


def _count_targeted(broker: Broker, condition: Any, dep_name: str) -> tuple[int | None, int | None]:
    """(devices the condition targets, devices known to the broker) now; a condition that targets no device is a
    warning (in preview and up), not an error. (None, None) when the fleet cannot be read."""
    try:
        fleet = read_fleet(broker, quiet_s=0.3, max_s=3)
    except EdgeError as e:
        pulumi.log.warn(f"edge deployment {dep_name}: cannot read the fleet to count targeted devices: {e}")
        return None, None
    n = sum(1 for twin in fleet.twins.values() if condition.matches(twin))
    if n == 0:
        pulumi.log.warn(
            f"edge deployment {dep_name}: target condition {condition.text!r} matches no device of "
            f"the {len(fleet.twins)} known to the broker"
        )
    return n, len(fleet.twins)
