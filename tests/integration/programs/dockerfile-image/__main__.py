import pulumi

import mlinfra

config = pulumi.Config()
model = mlinfra.RegisteredModel(
    "mlp", mlinfra.RegisteredModelArgs(path=config.require("path"), registry=config.require("registry"))
)
image = mlinfra.ScoringImage(
    "byo",
    mlinfra.ScoringImageArgs(
        models=[model], repository=config.require("repository"), dockerfile="Dockerfile"
    ),
)
pulumi.export("image_ref", image.image_ref)
