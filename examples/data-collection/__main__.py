"""Capture what an endpoint scores into Azure Blob storage (Azurite locally), and check it on a schedule.

make services && pulumi config set --secret storageKey <Azurite's well-known key> && pulumi up
(score a few requests), then run the monitor now — `mlinfra monitor run credit-risk-monitor-<stack>` — and open
$(pulumi stack output monitor_index); or a one-off drift report:
MLINFRA_COLLECT_CREDENTIAL=<key> mlinfra monitor drift --collected $(pulumi stack output container_uri) \\
    --baseline .mlinfra/baseline.npy --model .mlinfra/model.onnx --out drift.html

Records land as JSON Lines under {endpoint}/{deployment}/{model}/{version}/{yyyy}/{MM}/{dd}/{HH}/; the servers
hold a write-only, expiring SAS, never the account key; a storage outage loses nothing (the spool waits on disk).
"""

from pathlib import Path

import numpy as np
import pulumi

import mlinfra
from mlinfra import defaults
from mlinfra.lab.samples import write_mlp

config = pulumi.Config()
model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)
    np.save(".mlinfra/baseline.npy", np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32))

model = mlinfra.RegisteredModel("credit-risk", mlinfra.RegisteredModelArgs(path=str(model_file)))
image = mlinfra.ScoringImage("credit-risk-scorer", mlinfra.ScoringImageArgs(models=[model]))
collection = mlinfra.DataCollection(
    "credit-risk-capture",
    mlinfra.DataCollectionArgs(
        storage=config.get("storage")
        or f"azblob://{defaults.AZURITE_ACCOUNT}/inference-data?endpoint={defaults.azurite_blob_url()}",
        storage_credential=config.get_secret("storageKey") or defaults.AZURITE_KEY,
        sample_rate=1.0,
        headers=["x-client-id"],
        retention_days=90,
    ),
)
endpoint = mlinfra.CloudEndpoint(
    "credit-risk",
    mlinfra.CloudEndpointArgs(
        deployments={"blue": mlinfra.Deployment(image=image, memory_mb=512)}, data_collection=collection
    ),
)
# Hourly data-quality and drift checks of what the endpoint collects, against the training rows (statistics computed
# once at `up`); alerts go to the webhooks in the secret mlinfra:monitorWebhooks, if set.
monitor = mlinfra.ModelMonitor(
    "credit-risk-monitor",
    mlinfra.ModelMonitorArgs(
        data_collection=collection,
        endpoint=endpoint,
        image=image,
        model=model,
        baseline=".mlinfra/baseline.npy",
        schedule="@hourly",
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("container_uri", collection.container_uri)
pulumi.export("path_template", collection.path_template)
pulumi.export("monitor_index", monitor.index_url)
pulumi.export("monitor_metrics", monitor.metrics_url)
