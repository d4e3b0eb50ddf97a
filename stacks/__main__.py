"""The platform team's ML stack: models, their scoring images, an endpoint with data collection and edge rollouts —
all from the typed `platform` config object (mlinfra.gitops.config). Environments differ only in Pulumi.<stack>.yaml.

Promotion (`mlinfra promote --from dev --to staging`) writes the target's `mlinfra:pins` (mlinfra.pins), as for any
program: each RegisteredModel and ScoringImage below reads its pin by resource name and becomes a reference to that
exact registry version or image digest. Nothing in this program handles promotion.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

import mlinfra
from mlinfra import defaults
from mlinfra.gitops.config import KubernetesConfig, image_repository, kubeconfig_path, load, registry_uri
from mlinfra.lab.node import kubeconfig_path as local_cluster_kubeconfig

HERE = Path(__file__).parent
cfg = load(pulumi.Config().require_object("platform"))
registry = registry_uri(cfg, HERE)


def target(t):
    """The endpoint's target from the config: Local Docker, or a Kubernetes cluster (``kubeconfig: local`` is the
    single-node cluster of `mlinfra services up kubernetes`)."""
    if isinstance(t, KubernetesConfig):
        return mlinfra.Kubernetes(
            namespace=t.namespace,
            kubeconfig=kubeconfig_path(t, HERE, local_cluster_kubeconfig()),
            context=t.context,
        )
    return mlinfra.LocalDocker(port=t.port)


models = {
    m.name: mlinfra.RegisteredModel(
        m.name,
        mlinfra.RegisteredModelArgs(
            path=str(HERE / m.path) if m.path else None,
            version=m.version,
            sha256=m.sha256,
            tags=m.tags,
            properties=m.properties,
            registry=registry,
        ),
    )
    for m in cfg.models
}
images = {
    i.name: mlinfra.ScoringImage(
        i.name,
        mlinfra.ScoringImageArgs(
            models=[models[n] for n in i.models],
            script=str(HERE / i.script) if i.script else None,
            repository=image_repository(cfg, i.name, defaults.registry_host()),
            pinned=i.pinned,
        ),
    )
    for i in cfg.images
}
endpoints = {}
for e in cfg.endpoints:
    collection = (
        mlinfra.DataCollection(
            f"{e.name}-collection",
            mlinfra.DataCollectionArgs(
                sample_rate=e.data_collection.sample_rate, storage=e.data_collection.storage
            ),
        )
        if e.data_collection
        else None
    )
    endpoints[e.name] = mlinfra.CloudEndpoint(
        e.name,
        mlinfra.CloudEndpointArgs(
            deployments={
                d: mlinfra.Deployment(
                    image=images.get(dep.image) or dep.image,
                    replicas=dep.replicas,
                    cpu=dep.cpu,
                    memory_mb=dep.memory_mb,
                )
                for d, dep in e.deployments.items()
            },
            traffic=e.traffic,
            auth=e.auth,
            data_collection=collection,
            rollout=mlinfra.RolloutPolicy(
                steps=e.rollout.steps,
                bake_s=e.rollout.bake_s,
                gates=mlinfra.Gates(max_error_rate=e.rollout.max_error_rate),
            ),
            target=target(e.target),
        ),
    )
edge = {
    e.name: mlinfra.EdgeDeployment(
        e.name,
        mlinfra.EdgeDeploymentArgs(
            models=[models[n] for n in e.models],
            target_condition=e.target_condition,
            priority=e.priority,
            gate=mlinfra.EdgeGate(
                min_success_fraction=e.min_success_fraction,
                timeout_s=e.timeout_s,
                max_failures=e.max_failures,
            ),
        ),
    )
    for e in cfg.edge
}

# What `mlinfra promote` reads from this stack: the exact artifacts it runs.
pulumi.export(
    "mlinfra",
    {
        "registry": registry,
        "models": {
            n: {"version": m.version, "sha256": m.sha256, "properties": m.properties}
            for n, m in models.items()
        },
        "images": {
            n: {"image_ref": i.image_ref, "digest": i.digest, "models": i.models} for n, i in images.items()
        },
        "endpoints": {n: {"scoring_uri": e.scoring_uri, "traffic": e.traffic} for n, e in endpoints.items()},
        "edge": {n: {"targeted": d.targeted, "succeeded": d.succeeded} for n, d in edge.items()},
    },
)
for n, e in endpoints.items():
    pulumi.export(f"endpoint:{n}:key", e.primary_key)
