"""Register an ONNX model and point the `champion` alias at it.

Registry: the stack's `mlinfra:registry` config (e.g. azblob://devstoreaccount1/models?endpoint=...) with the
secret `mlinfra:registryCredential`; without it, a folder registry in ./.mlinfra/registry.

    pulumi config set mlinfra:registry 'azblob://devstoreaccount1/models?endpoint=http://127.0.0.1:10000/devstoreaccount1'
    pulumi config set --secret mlinfra:registryCredential <account key>
    pulumi up
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra.lab.samples import write_mlp

model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)  # a deterministic 64→256→10 MLP; bring your own exported model instead

model = mlinfra.RegisteredModel(
    "churn-classifier",
    mlinfra.RegisteredModelArgs(
        path=str(model_file),
        description="Churn classifier (MLP)",
        tags={"team": "growth", "stage": "dev"},
        properties={"accuracy": "0.91"},
    ),
)
mlinfra.ModelAlias("champion", mlinfra.ModelAliasArgs(model=model, alias="champion"))

pulumi.export("version", model.version)
pulumi.export("sha256", model.sha256)
pulumi.export("signature", model.signature)
