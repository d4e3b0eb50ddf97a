"""DataCollection alone (its storage and SAS), storage and SAS lifetime from stack config."""

import pulumi

import mlinfra

config = pulumi.Config()
collection = mlinfra.DataCollection(
    "capture",
    mlinfra.DataCollectionArgs(
        storage=config.require("storage"),
        storage_credential=config.require_secret("storage_key"),
        sas_ttl_hours=float(config.get("sas_ttl_hours") or 720),
    ),
)
pulumi.export("container_uri", collection.container_uri)
pulumi.export("sas_expires", collection.sas_expires)
pulumi.export("sas", collection.sas)
