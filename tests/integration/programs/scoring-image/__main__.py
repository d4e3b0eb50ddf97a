import pulumi

import mlinfra

config = pulumi.Config()
model = mlinfra.RegisteredModel(
    "mlp",
    mlinfra.RegisteredModelArgs(
        path=config.require("path"),
        registry=config.require("registry"),
        import_version=config.get_int("import_version"),
        signing_key=config.get_secret("signing_key"),
    ),
)
image = mlinfra.ScoringImage(
    "scorer",
    mlinfra.ScoringImageArgs(
        models=[model],
        repository=config.require("repository"),
        script=config.get("script"),
        import_digest=config.get("import_digest"),
        trusted_keys=config.get_object("trusted_keys"),
        attestation_key=config.get_secret("attestation_key"),
    ),
)
pulumi.export("image_ref", image.image_ref)
pulumi.export("digest", image.digest)
pulumi.export("labels", image.labels)
pulumi.export("models", image.models)
pulumi.export("model_version", model.version)
pulumi.export("attestation", image.attestation)
