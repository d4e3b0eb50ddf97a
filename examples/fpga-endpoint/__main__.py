"""An accelerator endpoint for a quantized model (Azure ML's FPGA deployments, declaratively).

.venv/bin/python train.py && make services && pulumi up

`up` quantizes the registered FP32 model to INT8 (static, QDQ, per-channel), compares it with FP32 on the held-out
rows and stops before deploying if accuracy drops by more than 1 %, registers `churn-mlp-int8` with its lineage
(`mlinfra models show churn-mlp-int8:1`), and serves it. Locally there is no FPGA: the server asks for Vitis AI,
gets CPU, and says so in its log and in GET /v2/models/churn-mlp-int8. With target=mlinfra.Kubernetes(...) the pods
request `xilinx.com/fpga: 1` on nodes labelled `mlinfra.io/accelerator=alveo-u250`.
"""

from pathlib import Path

import pulumi

import mlinfra
from mlinfra.lab.samples import write_sklearn_classifier

data = Path(".mlinfra")
if not (data / "model.onnx").exists():  # the offline step, if train.py was not run
    write_sklearn_classifier(data)

model = mlinfra.RegisteredModel("churn-mlp", mlinfra.RegisteredModelArgs(path=str(data / "model.onnx")))
endpoint = mlinfra.FpgaEndpoint(
    "churn",
    mlinfra.FpgaEndpointArgs(
        model=model,
        calibration_data=str(data / "calibration.npy"),
        validation_data=str(data / "validation.npy"),
        validation_labels=str(data / "labels.npy"),
        quantization=mlinfra.Quantization(method="static", per_channel=True),
        max_accuracy_drop=0.01,
        accelerator=mlinfra.Accelerator(
            resource="xilinx.com/fpga", count=1, node_selector={"mlinfra.io/accelerator": "alveo-u250"}
        ),
        execution_providers=["VitisAIExecutionProvider"],
    ),
)
pulumi.export(
    "quantized_model",
    pulumi.Output.concat(endpoint.quantized_model_name, ":", endpoint.quantized_model_version.apply(str)),
)
pulumi.export("accuracy_fp32", endpoint.accuracy_fp32)
pulumi.export("accuracy_quantized", endpoint.accuracy_quantized)
pulumi.export("size_ratio", endpoint.size_ratio)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
