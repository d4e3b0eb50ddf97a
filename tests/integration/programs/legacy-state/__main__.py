"""Every mlinfra dynamic provider in one small stack: RegisteredModel + ModelAlias, ScoringImage, DataCollection,
CloudEndpoint (keys + Local Docker), EdgeDeployment and FpgaEndpoint (quantized model).

Its state, recorded with the code before the house moved (commit 200a66c), is the fixture
tests/fixtures/legacy-state: tests/integration/test_legacy_state.py imports it and checks that today's code
previews it with no changes and destroys it. Written with the public API only, so it runs on any version."""

import pulumi

import mlinfra

config = pulumi.Config()
root = config.require("root")
registry = f"file://{root}/registry"
model = mlinfra.RegisteredModel(
    "legacy", mlinfra.RegisteredModelArgs(path=f"{root}/model.onnx", registry=registry, tags={"team": "core"})
)
mlinfra.ModelAlias("legacy-champion", mlinfra.ModelAliasArgs(model=model, alias="champion"))
image = mlinfra.ScoringImage("legacy-scorer", mlinfra.ScoringImageArgs(models=[model]))
collection = mlinfra.DataCollection(
    "legacy-capture", mlinfra.DataCollectionArgs(storage=f"file://{root}/collected", sample_rate=1.0)
)
endpoint = mlinfra.CloudEndpoint(
    "legacy",
    mlinfra.CloudEndpointArgs(
        deployments={"blue": mlinfra.Deployment(image=image, replicas=1, cpu=0.5, memory_mb=256)},
        rollout=mlinfra.RolloutPolicy(steps=[50, 100], bake_s=1),
        data_collection=collection,
        endpoint_name="legacy-ep",
    ),
)
edge = mlinfra.EdgeDeployment(
    "legacy-edge",
    mlinfra.EdgeDeploymentArgs(
        models=[model],
        target_condition="tags.site = 'nowhere'",
        broker=config.require("broker"),
        broker_username=config.require("brokerUser"),
        broker_password=config.require_secret("brokerPassword"),
        gate=mlinfra.EdgeGate(timeout_s=5),
    ),
)
classifier = mlinfra.RegisteredModel(
    "legacy-clf", mlinfra.RegisteredModelArgs(path=f"{root}/classifier.onnx", registry=registry)
)
fpga = mlinfra.FpgaEndpoint(
    "legacy-fpga",
    mlinfra.FpgaEndpointArgs(
        model=classifier,
        calibration_data=f"{root}/calibration.npy",
        quantization=mlinfra.Quantization(method="dynamic"),
        max_accuracy_drop=1.0,
        endpoint_name="legacy-fpga-ep",
    ),
)
pulumi.export("version", model.version)
pulumi.export("image_ref", image.image_ref)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("edge_targeted", edge.targeted)
pulumi.export("quantized_version", fpga.quantized_model_version)
