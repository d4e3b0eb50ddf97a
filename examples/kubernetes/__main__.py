"""The smallest CloudEndpoint on Kubernetes: one autoscaled deployment behind the keyed router, on the local
single-node cluster (real pods pulling from the local registry).

make services                 # starts the registry, the base images and the cluster (`mlinfra services up kubernetes`)
pulumi up
curl -s -H "Authorization: Bearer $(pulumi stack output primary_key --show-secrets)" \\
     -d '{"data": [[0.1, ...64 values...]]}' $(pulumi stack output local_scoring_uri)

`scoring_uri` is the in-cluster address (…svc.cluster.local, for clients in the cluster); the local cluster has no
cluster DNS, so `local_scoring_uri` is the router Service's ClusterIP, which this machine reaches through kube-proxy.
To use another cluster: `pulumi config set kubeconfig PATH` (and `namespace`). Look at it with
`kubectl --kubeconfig $(mlinfra services status kubernetes --json | jq -r .kubeconfig) get pods -n fraud-k8s`.
"""

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

import mlinfra
from mlinfra.lab.node import kubeconfig_path
from mlinfra.lab.samples import write_mlp

config = pulumi.Config()
kubeconfig = config.get("kubeconfig") or str(kubeconfig_path())
namespace = config.get("namespace") or "fraud-k8s"
model_file = Path(".mlinfra/model.onnx")
if not model_file.exists():
    write_mlp(model_file)

model = mlinfra.RegisteredModel("fraud-detector", mlinfra.RegisteredModelArgs(path=str(model_file)))
image = mlinfra.ScoringImage("fraud-scorer", mlinfra.ScoringImageArgs(models=[model]))
endpoint = mlinfra.CloudEndpoint(
    "fraud",
    mlinfra.CloudEndpointArgs(
        deployments={
            "blue": mlinfra.Deployment(
                image=image,
                cpu=0.25,
                memory_mb=256,
                autoscale=mlinfra.Autoscale(min_replicas=1, max_replicas=3, cpu_target_percent=60),
            )
        },
        traffic={"blue": 100},
        target=mlinfra.Kubernetes(namespace=namespace, kubeconfig=kubeconfig),
    ),
)
# The router Service's ClusterIP (reachable from this machine through kube-proxy).
router = k8s.core.v1.Service.get(
    "fraud-router",
    f"{namespace}/{endpoint.endpoint_name}",
    opts=pulumi.ResourceOptions(
        provider=k8s.Provider("local-cluster", kubeconfig=kubeconfig), depends_on=[endpoint]
    ),
)
pulumi.export("scoring_uri", endpoint.scoring_uri)
pulumi.export("local_scoring_uri", router.spec.cluster_ip.apply(lambda ip: f"http://{ip}:80/score"))
pulumi.export("primary_key", endpoint.primary_key)
pulumi.export("deployments", endpoint.deployments)
