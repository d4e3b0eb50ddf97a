"""DataCollection wired into a CloudEndpoint on local Docker; storage from stack config."""

import pulumi

import mlinfra

config = pulumi.Config()
collection = mlinfra.DataCollection(
    "capture",
    mlinfra.DataCollectionArgs(
        storage=config.require("storage"),
        storage_credential=config.require_secret("storage_key"),
        sample_rate=float(config.get("sample_rate") or 1.0),
        headers=["x-client-id"],
        otlp_endpoint=config.get("otlp_endpoint"),
        otlp_interval_s=0.5 if config.get("otlp_endpoint") else 15.0,
    ),
)
endpoint = mlinfra.CloudEndpoint(
    "scoring",
    mlinfra.CloudEndpointArgs(
        deployments={"blue": mlinfra.Deployment(image=config.require("image"))},
        data_collection=collection,
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("container_uri", collection.container_uri)
pulumi.export("path_template", collection.path_template)
