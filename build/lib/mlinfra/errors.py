"""mlinfra's exceptions, in one hierarchy.

Every error mlinfra raises on purpose is an :class:`MlinfraError`. Those a user can act on — a wrong input, a
missing service, a model that fails a gate — are :class:`UserError` s whose message names the value, the
constraint and the fix; the CLI prints them as one ``error:`` line (exit 2) instead of a traceback. Each also keeps
the built-in base it always had (``ValueError`` for bad input, ``RuntimeError`` for a failing system), so code that
caught those keeps working.

The scoring server and the edge agent (``mlinfra_scoring``, ``mlinfra_edge``) never import mlinfra: their few
errors (``ConditionError``, ``ManifestError``, ...) live with them.
"""

from __future__ import annotations


class MlinfraError(Exception):
    """Base of every error mlinfra raises on purpose."""


class UserError(MlinfraError):
    """Caused by input or the environment; the message says what was received, what was expected and the fix."""


# -- local services and the engine ------------------------------------------------------------------------------


class ServiceError(UserError, RuntimeError):
    """A local service (or a setting that points at one) could not be found, started or reached."""


class KubeError(UserError, RuntimeError):
    """The local Kubernetes cluster could not be built, started or reached."""


class DataFileError(UserError, ValueError):
    """A file of rows (.npy, .csv, .jsonl: calibration data, a baseline) is missing or not a table of numbers."""


# -- register (mlinfra.registry) --------------------------------------------------------------------------------


class ModelError(UserError, ValueError):
    """A model name, tag, version reference or model input is not acceptable."""


class InvalidModel(ModelError):
    """A model file is not a loadable model of its declared framework."""


class ModelRegistryError(UserError, RuntimeError):
    """The model registry's storage (folder or Azure Blob) refused, failed or is unreachable."""


class ContentMismatch(ModelRegistryError):
    """Stored bytes do not match the sha256 their version record promises."""


# -- package (mlinfra.images) -----------------------------------------------------------------------------------


class ImageBuildError(UserError, RuntimeError):
    """A scoring image could not be built from its inputs."""


class LayerContentError(UserError, ValueError):
    """A file that would go into an image layer is not acceptable (path, type, size)."""


class OciRegistryError(UserError, RuntimeError):
    """The OCI (container image) registry refused, failed or is unreachable."""


# -- deploy and update (mlinfra.endpoints) ----------------------------------------------------------------------


class EndpointError(UserError, ValueError):
    """An endpoint's inputs are not acceptable, or its target could not do what was asked."""


class RolloutFailed(EndpointError):
    """A progressive rollout failed a gate and was rolled back; the message names gate, value and limit."""


class QuantizeError(UserError, ValueError):
    """A model could not be quantized, or the quantized model failed its accuracy gate."""


# -- edge (mlinfra.edge) ----------------------------------------------------------------------------------------


class EdgeError(UserError, ValueError):
    """An edge deployment, device id or broker setting is not acceptable, or the fleet failed the gate."""


# -- monitor (mlinfra.monitoring) -------------------------------------------------------------------------------


class CollectionError(UserError, ValueError):
    """A DataCollection's settings or storage are not acceptable."""


class MonitorError(UserError, ValueError):
    """Collected data or a baseline cannot be read or compared."""


# -- GitOps (mlinfra.gitops) ------------------------------------------------------------------------------------


class StackConfigError(UserError, ValueError):
    """A stack's typed configuration (Pulumi.<stack>.yaml) is not valid; the message names the key path."""


class GitOpsError(UserError):
    """A preview, promotion or policy run cannot go ahead (missing stack, failed source, blocked plan)."""


__all__ = [
    "CollectionError",
    "ContentMismatch",
    "DataFileError",
    "EdgeError",
    "EndpointError",
    "GitOpsError",
    "ImageBuildError",
    "InvalidModel",
    "KubeError",
    "LayerContentError",
    "MlinfraError",
    "ModelError",
    "ModelRegistryError",
    "MonitorError",
    "OciRegistryError",
    "QuantizeError",
    "RolloutFailed",
    "ServiceError",
    "StackConfigError",
    "UserError",
]
