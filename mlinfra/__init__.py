"""mlinfra: the ML model lifecycle as Pulumi component resources.

Register (:class:`RegisteredModel`, :class:`ModelAlias`), package, deploy, monitor and update models
declaratively; see README.md for the tour.
"""

from mlinfra.cloud_endpoint import (
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
from mlinfra.data_collection import DataCollection, DataCollectionArgs
from mlinfra.edge_deployment import EdgeDeployment, EdgeDeploymentArgs, EdgeGate
from mlinfra.fpga_endpoint import Accelerator, FpgaEndpoint, FpgaEndpointArgs, Quantization
from mlinfra.registered_model import ModelAlias, ModelAliasArgs, RegisteredModel, RegisteredModelArgs
from mlinfra.scoring_image import ScoringImage, ScoringImageArgs

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
    "ModelAlias",
    "ModelAliasArgs",
    "Quantization",
    "RegisteredModel",
    "RegisteredModelArgs",
    "RolloutPolicy",
    "ScoringImage",
    "ScoringImageArgs",
    "TlsAuth",
]
