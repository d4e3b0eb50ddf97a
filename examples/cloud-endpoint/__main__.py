"""Serve a registered model as an authenticated web service on local Docker, blue/green, with a canary policy.

make services && pulumi up
curl -s -H "Authorization: Bearer $(pulumi stack output primary_key --show-secrets)" \
     -d '{"data": [[0.1, ...64 values...]]}' $(pulumi stack output scoring_uri)

Then: change the model (or `green`'s image) and `pulumi preview --diff` shows the planned steps (`rollout_plan`);
`pulumi up` moves traffic in those steps, reads each step's gates from the new pods' /metrics and rolls back on
a failure. `pulumi config set key_version 2` regenerates the secondary key only.
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra.lab.samples import write_mlp

config = pulumi.Config()
model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)

model = mlinfra.RegisteredModel("fraud-detector", mlinfra.RegisteredModelArgs(path=str(model_file)))
image = mlinfra.ScoringImage("fraud-scorer", mlinfra.ScoringImageArgs(models=[model]))

endpoint = mlinfra.CloudEndpoint(
    "fraud",
    mlinfra.CloudEndpointArgs(
        deployments={
            "blue": mlinfra.Deployment(image=image, replicas=1, cpu=1.0, memory_mb=512),
            "green": mlinfra.Deployment(image=config.get("green_image") or image, replicas=1, cpu=1.0),
        },
        traffic={
            "blue": 100 - (config.get_int("green_percent") or 0),
            "green": config.get_int("green_percent") or 0,
        },
        key_version=config.get_int("key_version") or 1,
        rollout=mlinfra.RolloutPolicy(
            steps=[10, 50, 100],
            bake_s=10,
            gates=mlinfra.Gates(max_error_rate=0.01, max_p99_ms=250),
        ),
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("openapi_uri", endpoint.openapi_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("deployments", endpoint.deployments)
pulumi.export("traffic", endpoint.traffic)
pulumi.export("rollout_plan", endpoint.rollout_plan)
