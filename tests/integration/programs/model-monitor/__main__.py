"""A CloudEndpoint on Local Docker collecting into Azurite, and a ModelMonitor checking what it collects on a
schedule against a baseline; storage, baseline, schedule and the webhook (a secret) from stack config."""

import pulumi

import mlinfra

config = pulumi.Config()
collection = mlinfra.DataCollection(
    "capture",
    mlinfra.DataCollectionArgs(
        storage=config.require("storage"), storage_credential=config.require_secret("storage_key")
    ),
)
endpoint = mlinfra.CloudEndpoint(
    "scoring",
    mlinfra.CloudEndpointArgs(
        deployments={"blue": mlinfra.Deployment(image=config.require("image"))}, data_collection=collection
    ),
)
monitor = mlinfra.ModelMonitor(
    "drift",
    mlinfra.ModelMonitorArgs(
        data_collection=collection,
        endpoint=endpoint,
        image=config.require("image"),
        baseline=config.require("baseline"),
        schedule=config.get("schedule") or "@hourly",
        webhooks=config.require_secret("webhook").apply(lambda url: [url]),
        alert_interval_s=60,
        data_lag_s=float(config.get("lag") or 60),
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("reports", monitor.reports)
pulumi.export("index_url", monitor.index_url)
pulumi.export("metrics_url", monitor.metrics_url)
pulumi.export("baseline_sha256", monitor.baseline_sha256)
