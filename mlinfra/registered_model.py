"""RegisteredModel and ModelAlias: step 1 of the lifecycle — register a model so it can be stored, versioned,
found and used by images and endpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlinfra.providers.model_version import ModelAliasResource, ModelVersionResource
from mlinfra.registry import ModelError, onnx_signature, scan_content, validate_name, validate_tags
from mlinfra.registry.registry import FRAMEWORKS
from mlinfra.registry.store import open_store


@dataclass
class RegisteredModelArgs:
    path: str
    """Model file or folder. Required. Content is hashed (sha256) at preview; unchanged content is no change."""
    model_name: str | None = None
    """Name in the registry. Default: the resource name."""
    framework: str = "onnx"
    """"onnx" (validated, signature extracted) or "custom" (stored as opaque files). Default: onnx."""
    description: str = ""
    """Free text. Default: empty. Changing it updates the version in place."""
    tags: dict[str, str] = field(default_factory=dict)
    """Searchable key/values (keys ≤ 128 chars, values ≤ 256, ≤ 50 tags). Default: none. Mutable in place."""
    properties: dict[str, str] = field(default_factory=dict)
    """Key/values such as evaluation metrics (same limits as tags). Default: none. Mutable in place."""
    registry: str | None = None
    """Registry URI: file:///abs/path or azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]. Default: the stack's
    `mlinfra:registry` config, else a folder registry in `<project>/.mlinfra/registry`."""
    registry_credential: pulumi.Input[str] | None = None
    """Azure account key, SAS token or connection string (made a Pulumi secret). Default: the stack's secret
    `mlinfra:registryCredential`, else none (fine for file registries)."""
    delete_versions_on_destroy: bool = False
    """Default: False — `pulumi destroy` keeps every stored version (a registry is a record). True deletes the
    versions of this model that no image or endpoint uses."""


def as_int(v: Any) -> Any:
    """Numbers cross the engine as float64: give users the ints they expect (unknowns stay None)."""
    return int(v) if v is not None else v


def _model_ref(a: list[Any]) -> dict[str, Any]:
    return {"name": a[0], "version": a[1], "sha256": a[2], "registry": a[3], "credential": a[4]}


def _registry_settings(registry: str | None, credential: Any) -> tuple[str, Any]:
    cfg = pulumi.Config("mlinfra")
    uri = registry or cfg.get("registry") or f"file://{Path.cwd().resolve() / '.mlinfra' / 'registry'}"
    open_store(uri)  # validates the URI form early (no I/O)
    cred = credential if credential is not None else cfg.get_secret("registryCredential")
    return uri, pulumi.Output.secret(cred) if cred is not None else None


class RegisteredModel(pulumi.ComponentResource):
    """A named model whose content is registered as an immutable, content-addressed version.

    Outputs: ``version`` (int), ``sha256``, ``uri``, ``size_bytes``, ``framework``, ``signature`` (ONNX: inputs and
    outputs with OIP datatypes and shapes, -1 for dynamic dims), ``tags``, ``model_name``, ``registry``.
    """

    version: pulumi.Output[int]
    sha256: pulumi.Output[str]
    uri: pulumi.Output[str]
    size_bytes: pulumi.Output[int]
    framework: pulumi.Output[str]
    signature: pulumi.Output[Any]
    tags: pulumi.Output[dict[str, str]]
    model_name: pulumi.Output[str]
    registry: pulumi.Output[str]

    def __init__(self, name: str, args: RegisteredModelArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:registry:RegisteredModel", name, None, opts)
        model_name = validate_name(args.model_name or name)
        tags = validate_tags(args.tags)
        properties = validate_tags(args.properties, "properties")
        if args.framework not in FRAMEWORKS:
            raise ModelError(
                f"framework {args.framework!r} is not supported: use one of {', '.join(FRAMEWORKS)}"
            )
        path = Path(os.path.expanduser(args.path)).resolve()

        def hashing(done: int, total: int) -> None:
            if total > 256 << 20 and done % (256 << 20) < (4 << 20):
                pulumi.log.info(f"hashing {path.name}: {done >> 20}/{total >> 20} MiB", self, ephemeral=True)

        content = scan_content(path, hashing)
        signature = onnx_signature(path) if args.framework == "onnx" else None
        registry, credential = _registry_settings(args.registry, args.registry_credential)
        self.path = str(path)

        self.model_version = ModelVersionResource(
            f"{name}-version",
            {
                "model_name": model_name,
                "registry": registry,
                "registry_credential": credential,
                "path": str(path),
                "sha256": content.sha256,
                "size_bytes": content.size_bytes,
                "framework": args.framework,
                "signature": signature,
                "description": args.description,
                "tags": tags,
                "properties": properties,
                "delete_versions_on_destroy": args.delete_versions_on_destroy,
                "version": None,
                "uri": None,
                "created_at": None,
                "files": None,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["registry_credential"]),
        )
        mv: Any = self.model_version
        # Numbers cross the engine as float64: give users the ints they expect.
        self.version = mv.version.apply(as_int)
        self.sha256 = mv.sha256
        self.uri = mv.uri
        self.size_bytes = mv.size_bytes.apply(as_int)
        self.framework = mv.framework
        self.signature = mv.signature
        self.tags = mv.tags
        self.model_name = mv.model_name
        self.registry = mv.registry
        self.registry_credential = credential
        # What images and deployments need to fetch this exact version (secret when a credential is set).
        self.model_ref: pulumi.Output[dict[str, Any]] = pulumi.Output.all(
            self.model_name, self.version, self.sha256, self.registry, credential
        ).apply(_model_ref)
        self.register_outputs(
            {
                "version": self.version,
                "sha256": self.sha256,
                "uri": self.uri,
                "size_bytes": self.size_bytes,
                "framework": self.framework,
                "signature": self.signature,
                "tags": self.tags,
                "model_name": self.model_name,
            }
        )


@dataclass
class ModelAliasArgs:
    model: RegisteredModel
    """The model whose version the alias names. Required."""
    alias: str
    """The alias, e.g. "champion" (same rules as model names). Required."""
    version: pulumi.Input[int] | None = None
    """The version it points at. Default: the model's current version."""


class ModelAlias(pulumi.ComponentResource):
    """A movable name (e.g. ``champion``) for one version of a RegisteredModel; moving it is a one-line diff."""

    version: pulumi.Output[int]

    def __init__(self, name: str, args: ModelAliasArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:registry:ModelAlias", name, None, opts)
        validate_name(args.alias, "alias")
        self.alias_record = ModelAliasResource(
            f"{name}-alias",
            {
                "model_name": args.model.model_name,
                "registry": args.model.registry,
                "registry_credential": args.model.registry_credential,
                "alias": args.alias,
                "version": args.version if args.version is not None else args.model.version,
            },
            pulumi.ResourceOptions(
                parent=self, depends_on=[args.model], additional_secret_outputs=["registry_credential"]
            ),
        )
        self.version = self.alias_record.version.apply(as_int)  # type: ignore[attr-defined]
        self.register_outputs({"version": self.version, "alias": args.alias})
