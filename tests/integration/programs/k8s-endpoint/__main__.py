"""CloudEndpoint on the local single-node cluster (real pods): one deployment, key auth."""

import json

import pulumi

import mlinfra

config = pulumi.Config()
deployments = json.loads(config.require("deployments"))
tls_dir = config.get("tls_dir")
rollout = json.loads(config.get("rollout") or "{}")
collection = (
    mlinfra.DataCollection(
        "capture",
        mlinfra.DataCollectionArgs(
            storage=config.require("storage"), storage_credential=config.require_secret("storage_key")
        ),
    )
    if config.get("storage")
    else None
)
endpoint = mlinfra.CloudEndpoint(
    "scoring",
    mlinfra.CloudEndpointArgs(
        deployments={
            name: mlinfra.Deployment(
                image=d["image"],
                replicas=d.get("replicas", 1),
                cpu=d.get("cpu", 0.25),
                memory_mb=d.get("memory_mb", 256),
                autoscale=mlinfra.Autoscale(**d["autoscale"]) if d.get("autoscale") else None,
                env=d.get("env") or {},
            )
            for name, d in deployments.items()
        },
        traffic=json.loads(config.get("traffic") or "null") or {next(iter(deployments)): 100},
        auth=config.get("auth") or "key",
        tls=mlinfra.TlsAuth(
            cert=f"{tls_dir}/server.pem", key=f"{tls_dir}/server.key", client_ca=f"{tls_dir}/ca.pem"
        )
        if tls_dir
        else None,
        target=mlinfra.Kubernetes(
            namespace=config.require("namespace"), kubeconfig=config.require("kubeconfig")
        ),
        require_digest=True,
        data_collection=collection,
        rollout=mlinfra.RolloutPolicy(
            steps=rollout.get("steps", [10.0, 50.0, 100.0]),
            bake_s=rollout.get("bake_s", 30.0),
            gates=mlinfra.Gates(readiness_timeout_s=rollout.get("readiness_timeout_s", 120.0)),
        ),
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("grpc_uri", endpoint.grpc_uri)
pulumi.export("deployments", endpoint.deployments)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("rollout_plan", endpoint.rollout_plan)
pulumi.export("last_rollout", endpoint.last_rollout)
