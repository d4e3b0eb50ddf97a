"""CloudEndpoint on Local Docker, everything from stack config (JSON) so one program covers the lifecycle."""

import json

import pulumi

import mlinfra

config = pulumi.Config()
deployments = {
    name: mlinfra.Deployment(image=d["image"], replicas=d.get("replicas", 1), cpu=d.get("cpu", 1.0))
    for name, d in json.loads(config.require("deployments")).items()
}
gates = json.loads(config.get("gates") or "{}")
tls_dir = config.get("tls_dir")
tls = (
    mlinfra.TlsAuth(cert=f"{tls_dir}/server.pem", key=f"{tls_dir}/server.key", client_ca=f"{tls_dir}/ca.pem")
    if tls_dir
    else None
)
endpoint = mlinfra.CloudEndpoint(
    "scoring",
    mlinfra.CloudEndpointArgs(
        deployments=deployments,
        traffic=json.loads(config.get("traffic") or "null"),
        mirror=json.loads(config.get("mirror") or "{}"),
        target=mlinfra.LocalDocker(port=config.get_int("port")),
        key_version=config.get_int("key_version") or 1,
        auth=config.get("auth") or "key",
        tls=tls,
        require_digest=config.get_bool("require_digest") or False,
        rollout=mlinfra.RolloutPolicy(
            steps=json.loads(config.get("steps") or "[20, 60, 100]"),
            bake_s=float(config.get("bake_s") or 1.5),
            gates=mlinfra.Gates(**gates),
        ),
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("grpc_uri", endpoint.grpc_uri)
pulumi.export("openapi_uri", endpoint.openapi_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("secondary_key", endpoint.secondary_key)
pulumi.export("deployments", endpoint.deployments)
pulumi.export("traffic", endpoint.traffic)
pulumi.export("rollout_plan", endpoint.rollout_plan)
pulumi.export("last_rollout", endpoint.last_rollout)
