"""Model registry: content-addressed, immutable versions on a local folder or Azure Blob Storage."""

from mlinfra.registry.registry import (
    Content,
    ModelError,
    ModelRegistry,
    ModelVersion,
    default_registry_uri,
    scan_content,
    validate_name,
    validate_tags,
)
from mlinfra.registry.signature import InvalidModel, onnx_signature
from mlinfra.registry.store import ContentMismatch, RegistryError, open_store

__all__ = [
    "Content",
    "ContentMismatch",
    "InvalidModel",
    "ModelError",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "default_registry_uri",
    "onnx_signature",
    "open_store",
    "scan_content",
    "validate_name",
    "validate_tags",
]
