"""mlinfra quickstart: the model lifecycle on local defaults.

Run it with `make demo` (does all set-up and starts the local services first). Each lifecycle step lands here as
its component does:

1. register an ONNX model in an Azure Blob registry (Azurite locally) — RegisteredModel;
2. package it with the scoring server as a reproducible OCI image, pushed to the local registry — ScoringImage;
3. serve it on local Docker behind a router that checks keys and splits traffic — CloudEndpoint;
4. capture what it scores into Azure Blob (Azurite locally), sampled, nothing lost — DataCollection.
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra import defaults
from mlinfra.lab.samples import write_mlp

model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)

# 1. Register: versioned by content; unchanged content is no change.
model = mlinfra.RegisteredModel(
    "quickstart-mlp",
    mlinfra.RegisteredModelArgs(path=str(model_file), tags={"stage": "dev"}, description="quickstart MLP"),
)

# 2. Package: model + scoring server (+ dependencies) as an image; unchanged inputs push nothing.
image = mlinfra.ScoringImage("quickstart-scorer", mlinfra.ScoringImageArgs(models=[model]))

# 4. Monitor: the endpoint's servers write sampled inputs/outputs as JSON Lines to a blob container.
collection = mlinfra.DataCollection(
    "quickstart-capture",
    mlinfra.DataCollectionArgs(
        storage=f"azblob://{defaults.AZURITE_ACCOUNT}/quickstart-data?endpoint={defaults.azurite_blob_url()}",
        storage_credential=pulumi.Config("mlinfra").get_secret("registryCredential"),
        sample_rate=1.0,
    ),
)

# 3. Deploy: a keyed web service on local Docker; a later image change rolls out in steps with gates.
endpoint = mlinfra.CloudEndpoint(
    "quickstart",
    mlinfra.CloudEndpointArgs(
        deployments={"blue": mlinfra.Deployment(image=image, memory_mb=512)},
        rollout=mlinfra.RolloutPolicy(steps=[25, 100], bake_s=5),
        data_collection=collection,
    ),
)
pulumi.export("collected_to", collection.container_uri)

pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("model", pulumi.Output.concat(model.model_name, ":", model.version.apply(str)))
pulumi.export("image_ref", image.image_ref)
pulumi.export("model_sha256", model.sha256)
pulumi.export("registry", model.registry)
pulumi.export("oci_registry", defaults.registry_url())
