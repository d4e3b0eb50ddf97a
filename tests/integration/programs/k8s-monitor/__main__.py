"""A ModelMonitor on the local single-node cluster (a CronJob), checking records a DataCollection's storage holds in
Azurite; storage, baseline, image and namespace from stack config."""

import pulumi

import mlinfra

config = pulumi.Config()
collection = mlinfra.DataCollection(
    "capture",
    mlinfra.DataCollectionArgs(
        storage=config.require("storage"), storage_credential=config.require_secret("storage_key")
    ),
)
monitor = mlinfra.ModelMonitor(
    "drift",
    mlinfra.ModelMonitorArgs(
        data_collection=collection,
        endpoint="ep",
        image=config.require("image"),
        baseline=config.require("baseline"),
        schedule=config.get("schedule") or "0 0 1 1 *",
        data_lag_s=0,
        cpu=0.25,
        memory_mb=512,
        target=mlinfra.Kubernetes(
            namespace=config.get("namespace") or "default", kubeconfig=config.require("kubeconfig")
        ),
    ),
)
pulumi.export("cron_job", monitor.cron_job)
pulumi.export("index_url", monitor.index_url)
