"""The platform team's ML stack: models, their scoring images and edge rollouts, all from typed config."""

from __future__ import annotations

import pulumi
from platform_config import load

import mlinfra

cfg = load(pulumi.Config().require_object("platform"))

models = {
    m.name: mlinfra.RegisteredModel(
        m.name,
        mlinfra.RegisteredModelArgs(path=m.path, tags=m.tags, properties=m.properties, registry=cfg.registry),
    )
    for m in cfg.models
}
for img in cfg.images:
    image = mlinfra.ScoringImage(
        img.name, mlinfra.ScoringImageArgs(models=[models[n] for n in img.models], script=img.script)
    )
    pulumi.export(f"image:{img.name}", image.image_ref)
for e in cfg.edge:
    rollout = mlinfra.EdgeDeployment(
        e.name,
        mlinfra.EdgeDeploymentArgs(
            models=[models[n] for n in e.models],
            target_condition=e.target_condition,
            priority=e.priority,
            gate=mlinfra.EdgeGate(min_success_fraction=e.min_success_fraction, timeout_s=e.timeout_s),
        ),
    )
    pulumi.export(f"edge:{e.name}", {"targeted": rollout.targeted, "succeeded": rollout.succeeded})
for name, model in models.items():
    pulumi.export(f"model:{name}", {"version": model.version, "sha256": model.sha256})
