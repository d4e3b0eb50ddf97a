import pulumi
import pulumi_kubernetes as k8s

config = pulumi.Config()
provider = k8s.Provider("local", kubeconfig=config.require("kubeconfig"))
opts = pulumi.ResourceOptions(provider=provider)
labels = {"app": "scorer", "mlinfra.io/model": "mlp", "mlinfra.io/model-version": config.require("version")}
ns = k8s.core.v1.Namespace("ns", metadata={"name": "mlinfra-check"}, opts=opts)
deployment = k8s.apps.v1.Deployment(
    "scorer",
    metadata={"namespace": ns.metadata["name"], "labels": labels},
    spec={
        "replicas": int(config.require("replicas")),
        "selector": {"matchLabels": {"app": "scorer"}},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [
                    {
                        "name": "scorer",
                        "image": "127.0.0.1:5000/mlinfra/python-base:bookworm",
                        "ports": [{"containerPort": 8080}],
                    }
                ],
            },
        },
    },
    opts=opts,
)
service = k8s.core.v1.Service(
    "scorer",
    metadata={"namespace": ns.metadata["name"]},
    spec={"selector": {"app": "scorer"}, "ports": [{"port": 80, "targetPort": 8080}]},
    opts=opts,
)
pulumi.export("ready", deployment.status.apply(lambda s: s.ready_replicas if s else None))
