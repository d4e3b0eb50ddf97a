import pulumi

import mlinfra

config = pulumi.Config()
model = mlinfra.RegisteredModel(
    "mlp", mlinfra.RegisteredModelArgs(path=config.require("path"), registry=config.require("registry"))
)
image = mlinfra.ScoringImage(
    "byo",
    mlinfra.ScoringImageArgs(
        models=[model],
        repository=config.require("repository"),
        dockerfile="Dockerfile",
        # A registry that wants a login (optional): the password is a secret config value.
        registry_username=config.get("registry_username"),
        registry_password=config.get_secret("registry_password"),
    ),
)
pulumi.export("image_ref", image.image_ref)
