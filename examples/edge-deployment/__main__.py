"""Deploy a registered model to every device tagged site=plant-7 over MQTT (local Mosquitto by default).

Run devices with the edge agent (credentials from `mlinfra edge provision DEVICE`):

    MLINFRA_EDGE_PASSWORD=... mlinfra edge-agent --device-id cam-1 --broker mqtt://127.0.0.1:1883 \\
        --tags site=plant-7,ring=canary
    pulumi up          # publishes the deployment, waits until the targeted devices report success
    mlinfra edge devices --condition "tags.site = 'plant-7'"

With no device online the condition targets nobody: preview warns, and the gate passes trivially.
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra.lab.samples import write_mlp

model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)

model = mlinfra.RegisteredModel("defect-detector", mlinfra.RegisteredModelArgs(path=str(model_file)))
rollout = mlinfra.EdgeDeployment(
    "plant-7",
    mlinfra.EdgeDeploymentArgs(
        models=[model],
        target_condition="tags.site = 'plant-7' AND tags.ring IN ('canary', 'ga')",
        priority=10,
        gate=mlinfra.EdgeGate(min_success_fraction=0.9, timeout_s=120, max_failures=0),
    ),
)

pulumi.export("targeted", rollout.targeted)
pulumi.export("succeeded", rollout.succeeded)
pulumi.export("failing_devices", rollout.failing_devices)
