import pulumi
import pulumi_kubernetes as k8s

config = pulumi.Config()
provider = k8s.Provider("render", render_yaml_to_directory=config.require("out"))
k8s.core.v1.ConfigMap(
    "settings",
    metadata={"labels": {"mlinfra.io/model": "demo"}},  # auto-named, so a replacement renders a new file
    data={"model_version": config.require("version")},
    opts=pulumi.ResourceOptions(provider=provider),
)
