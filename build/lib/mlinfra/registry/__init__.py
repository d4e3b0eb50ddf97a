"""Step 1, register (``mlinfra:registry:*``): content-addressed, immutable model versions on a folder or Azure Blob.

- ``registered_model.py`` — the components RegisteredModel and ModelAlias
- ``provider.py`` — their dynamic providers (a version, an alias)
- ``registry.py`` — ModelRegistry: versions, tags, aliases, users, search; ``store.py`` — folder / Azure Blob storage
- ``signature.py`` — an ONNX model's inputs/outputs; ``refs.py`` — what identifies a model a resource uses
"""

from mlinfra.errors import ContentMismatch, InvalidModel, ModelError, ModelRegistryError
from mlinfra.registry.registry import (
    Content,
    ModelRegistry,
    ModelVersion,
    scan_content,
    validate_name,
    validate_tags,
)
from mlinfra.registry.signature import onnx_signature
from mlinfra.registry.store import open_store

__all__ = [
    "Content",
    "ContentMismatch",
    "InvalidModel",
    "ModelError",
    "ModelRegistry",
    "ModelRegistryError",
    "ModelVersion",
    "onnx_signature",
    "open_store",
    "scan_content",
    "validate_name",
    "validate_tags",
]
