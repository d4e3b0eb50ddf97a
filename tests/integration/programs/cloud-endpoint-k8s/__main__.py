"""CloudEndpoint on Kubernetes (or rendered to YAML): blue autoscaled, green fixed, a 90/10 split."""

import pulumi

import mlinfra

config = pulumi.Config()
render_to = config.get("render_to")
image = config.require("image")
endpoint = mlinfra.CloudEndpoint(
    "scoring",
    mlinfra.CloudEndpointArgs(
        deployments={
            "blue": mlinfra.Deployment(
                image=image,
                cpu=0.5,
                memory_mb=512,
                autoscale=mlinfra.Autoscale(min_replicas=2, max_replicas=5),
            ),
            "green": mlinfra.Deployment(image=config.get("green_image") or image, replicas=1, cpu=0.5),
        },
        traffic={"blue": 90, "green": 10},
        target=mlinfra.Kubernetes(
            namespace=config.require("namespace"),
            kubeconfig=None if render_to else config.require("kubeconfig"),
            render_yaml_to=render_to,
            render_secrets=config.get_bool("render_secrets") or False,
            tolerations=[{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        ),
        require_digest=True,
        # kwok's pods run nothing (no metrics to gate on): a new image takes its traffic in one step.
        rollout=mlinfra.RolloutPolicy(steps=[100.0]),
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("deployments", endpoint.deployments)
pulumi.export("primary_key", endpoint.primary_key)
