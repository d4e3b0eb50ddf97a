"""mlinfra: the ML model lifecycle as Pulumi component resources.

One package per lifecycle step, named like its type tokens: :mod:`mlinfra.registry` (register),
:mod:`mlinfra.images` (package), :mod:`mlinfra.endpoints` (deploy and update), :mod:`mlinfra.edge` (deploy to
devices), :mod:`mlinfra.monitoring` (monitor); around them :mod:`mlinfra.gitops` and :mod:`mlinfra.policy`.
The components are re-exported here; see README.md for the tour and docs/architecture.md for the house.
"""

from mlinfra import _legacy

_legacy.install()  # old module names keep resolving: stacks created before the move keep working

from mlinfra.edge.edge_deployment import EdgeDeployment, EdgeDeploymentArgs, EdgeGate  # noqa: E402
from mlinfra.endpoints.cloud_endpoint import (  # noqa: E402
    Autoscale,
    CloudEndpoint,
    CloudEndpointArgs,
    Deployment,
    Gates,
    Kubernetes,
    LocalDocker,
    RolloutPolicy,
    TlsAuth,
)
from mlinfra.endpoints.fpga_endpoint import Accelerator, FpgaEndpoint, FpgaEndpointArgs, Quantization  # noqa: E402
from mlinfra.errors import MlinfraError, UserError  # noqa: E402
from mlinfra.images.scoring_image import ScoringImage, ScoringImageArgs  # noqa: E402
from mlinfra.monitoring.data_collection import DataCollection, DataCollectionArgs  # noqa: E402
from mlinfra.monitoring.model_monitor import ModelMonitor, ModelMonitorArgs  # noqa: E402
from mlinfra.registry.registered_model import (  # noqa: E402
    ModelAlias,
    ModelAliasArgs,
    RegisteredModel,
    RegisteredModelArgs,
)

__version__ = "0.1.0"

__all__ = [
    "Accelerator",
    "Autoscale",
    "CloudEndpoint",
    "CloudEndpointArgs",
    "DataCollection",
    "DataCollectionArgs",
    "Deployment",
    "EdgeDeployment",
    "EdgeDeploymentArgs",
    "EdgeGate",
    "FpgaEndpoint",
    "FpgaEndpointArgs",
    "Gates",
    "Kubernetes",
    "LocalDocker",
    "MlinfraError",
    "ModelAlias",
    "ModelAliasArgs",
    "ModelMonitor",
    "ModelMonitorArgs",
    "Quantization",
    "RegisteredModel",
    "RegisteredModelArgs",
    "RolloutPolicy",
    "ScoringImage",
    "ScoringImageArgs",
    "TlsAuth",
    "UserError",
]
