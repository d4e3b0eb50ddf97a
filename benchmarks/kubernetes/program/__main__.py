"""The benchmark's endpoint: one scoring pod (1 CPU, access log off) behind the keyed router, on the local cluster."""

import pulumi

import mlinfra

config = pulumi.Config()
endpoint = mlinfra.CloudEndpoint(
    "bench",
    mlinfra.CloudEndpointArgs(
        deployments={
            "blue": mlinfra.Deployment(
                image=config.require("image"),
                replicas=1,
                cpu=1.0,
                memory_mb=1024,
                env={"MLINFRA_SERVE_NO_ACCESS_LOG": "1"},
            )
        },
        traffic={"blue": 100},
        target=mlinfra.Kubernetes(namespace="bench-k8s", kubeconfig=config.require("kubeconfig")),
        require_digest=True,
    ),
)
pulumi.export("primary_key", endpoint.primary_key)
