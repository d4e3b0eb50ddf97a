"""Package a registered model, the scoring server and a scoring script as an OCI image (no Docker daemon needed).

make services && pulumi up
docker run --rm -p 127.0.0.1:8080:8080 $(pulumi stack output image_ref)
curl -s 127.0.0.1:8080/score -d '{"data": [[0.1, ...64 values...]]}'
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra.lab.samples import write_mlp

model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)

model = mlinfra.RegisteredModel("churn-classifier", mlinfra.RegisteredModelArgs(path=str(model_file)))
image = mlinfra.ScoringImage(
    "churn-scorer",
    mlinfra.ScoringImageArgs(models=[model], script="score.py", labels={"team": "growth"}),
)

pulumi.export("image_ref", image.image_ref)
pulumi.export("models", image.models)
