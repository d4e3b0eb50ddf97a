import json

import pulumi

import mlinfra

config = pulumi.Config()
model = mlinfra.RegisteredModel(
    "mlp",
    mlinfra.RegisteredModelArgs(
        path=config.require("path"),
        registry=config.get("registry"),
        registry_credential=config.get_secret("credential"),
        tags=json.loads(config.get("tags") or "{}"),
        description=config.get("description") or "",
        framework=config.get("framework") or "onnx",
        delete_versions_on_destroy=config.get_bool("delete_on_destroy") or False,
        signing_key=config.get_secret("signing_key"),
        signing_certificate_chain=config.get("certificate_chain"),
    ),
)
if config.get("alias_version"):
    mlinfra.ModelAlias(
        "champion",
        mlinfra.ModelAliasArgs(model=model, alias="champion", version=int(config.require("alias_version"))),
    )
pulumi.export("version", model.version)
pulumi.export("sha256", model.sha256)
pulumi.export("uri", model.uri)
pulumi.export("signature", model.signature)
pulumi.export("tags", model.tags)
pulumi.export("signed_by", model.signed_by)
