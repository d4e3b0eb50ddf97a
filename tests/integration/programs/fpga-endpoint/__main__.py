"""FpgaEndpoint from stack config: local Docker by default, Kubernetes when a kubeconfig is set."""

import pulumi

import mlinfra

config = pulumi.Config()
model = mlinfra.RegisteredModel(
    "classifier",
    mlinfra.RegisteredModelArgs(path=config.require("model"), registry=config.require("registry")),
)
kubeconfig = config.get("kubeconfig")
target = (
    mlinfra.Kubernetes(
        kubeconfig=kubeconfig,
        namespace="fpga",
        tolerations=[{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    )
    if kubeconfig
    else mlinfra.LocalDocker()
)
endpoint = mlinfra.FpgaEndpoint(
    "fpga",
    mlinfra.FpgaEndpointArgs(
        model=model,
        calibration_data=config.require("calibration"),
        validation_data=config.get("validation"),
        validation_labels=config.get("labels"),
        quantization=mlinfra.Quantization(method=config.get("method") or "static"),
        max_accuracy_drop=float(config.get("max_accuracy_drop") or 0.01),
        accelerator=mlinfra.Accelerator(
            resource="xilinx.com/fpga",
            count=1,
            node_selector={"mlinfra.io/accelerator": "alveo-u250"},
            tolerations=[{"key": "xilinx.com/fpga", "operator": "Exists", "effect": "NoSchedule"}],
        ),
        target=target,
    ),
)
pulumi.export("quantized_model_version", endpoint.quantized_model_version)
pulumi.export("quantized_model_name", endpoint.quantized_model_name)
pulumi.export("accuracy_fp32", endpoint.accuracy_fp32)
pulumi.export("accuracy_quantized", endpoint.accuracy_quantized)
pulumi.export("size_ratio", endpoint.size_ratio)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("deployments", endpoint.deployments)
