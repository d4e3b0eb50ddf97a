"""Edge deployments from config: models {key: path} (signed with signing_key, if set) and deployments [{name,
condition, priority, layered, models, min_fraction, timeout, max_failures}]."""

import json

import pulumi

import mlinfra

config = pulumi.Config()
registry = config.require("registry")
models = {
    key: mlinfra.RegisteredModel(
        key,
        mlinfra.RegisteredModelArgs(
            path=path, registry=registry, signing_key=config.get_secret("signing_key")
        ),
    )
    for key, path in json.loads(config.require("models")).items()
}
for d in json.loads(config.require("deployments")):
    dep = mlinfra.EdgeDeployment(
        d["name"],
        mlinfra.EdgeDeploymentArgs(
            models=[models[k] for k in d["models"]],
            target_condition=d["condition"],
            priority=d.get("priority", 0),
            layered=d.get("layered", False),
            broker=config.require("broker"),
            broker_username=config.require("username"),
            broker_password=config.require_secret("password"),
            gate=mlinfra.EdgeGate(
                min_success_fraction=d.get("min_fraction", 1.0),
                timeout_s=d.get("timeout", 30),
                max_failures=d.get("max_failures", 0),
            ),
        ),
    )
    pulumi.export(
        d["name"],
        {
            "targeted": dep.targeted,
            "applied": dep.applied,
            "succeeded": dep.succeeded,
            "failed": dep.failed,
            "failing": dep.failing_devices,
        },
    )
