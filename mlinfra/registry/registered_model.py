"""RegisteredModel and ModelAlias: step 1 of the lifecycle — register a model so it can be stored, versioned,
found and used by images and endpoints."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlinfra import defaults
from mlinfra.pins import PinError, pin_for
from mlinfra.registry import ModelError, onnx_signature, scan_content, validate_name, validate_tags
from mlinfra.registry.provider import ModelAliasResource, ModelVersionResource
from mlinfra.registry.registry import FRAMEWORKS, ModelRegistry
from mlinfra.registry.store import open_store


@dataclass
class RegisteredModelArgs:
    path: str | None = None
    """Model file or folder to register. Content is hashed (sha256) at preview; unchanged content is no change.
    Give either ``path`` or a pinned ``version`` + ``sha256``."""
    version: int | None = None
    """Pin: reference this exact, already registered version instead of registering a file (what `mlinfra promote`
    writes into a stack's config). Preview fails unless the registry holds it with ``sha256``."""
    sha256: str | None = None
    """Pin: the content hash the pinned ``version`` must have (guards against a different registry's version N)."""
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
    import_version: int | None = None
    """Adopt: the version of ``model_name`` already in the registry that ``path`` holds — created as that version
    (its metadata set as declared), nothing uploaded; fails if the version's content is not ``path``'s. mlinfra's
    form of `pulumi import` (the engine can't import dynamic-provider resources: pulumi/pulumi#16175). Without the
    file: `mlinfra models download NAME:VERSION FILE` first. Read only at create."""
    signing_key: pulumi.Input[str] | None = None
    """Sign the version with this elliptic-curve private key (PEM; made a Pulumi secret): an OpenSSF model-signing
    bundle over every file, stored beside the version (docs/provenance.md). A new version is signed at its `up`;
    a new key adds its signature. Default: the stack's secret `mlinfra:signingKey`, else unsigned."""
    signing_certificate_chain: str | None = None
    """With ``signing_key``: its X.509 certificate, then the issuers up to a root (PEM). The bundle carries the chain,
    so verifiers may trust the root instead of the key; an expired certificate is refused. Default: the stack's
    `mlinfra:signingCertificateChain`, else none."""
    delete_versions_on_destroy: bool = False
    """Default: False — `pulumi destroy` keeps every stored version (a registry is a record). True deletes the
    versions of this model that no image or endpoint uses."""


def _import_version(name: str, version: Any) -> int | None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ModelError(f"RegisteredModel {name}: import_version = {version!r} must be an integer ≥ 1")
    return version


def as_int(v: Any) -> Any:
    """Numbers cross the engine as float64: give users the ints they expect (unknowns stay None)."""
    return int(v) if v is not None else v


def _model_ref(a: list[Any]) -> dict[str, Any]:
    return {"name": a[0], "version": a[1], "sha256": a[2], "registry": a[3], "credential": a[4]}


def _registry_settings(registry: str | None, credential: Any) -> tuple[str, Any]:
    cfg = pulumi.Config("mlinfra")
    uri = defaults.model_registry_uri(registry, cfg.get("registry"))
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
        try:
            pin = pin_for(name, ("version", "sha256"))
        except PinError as e:
            raise ModelError(f"RegisteredModel {name}: {e}") from None
        if pin is not None:  # the stack pins this model (mlinfra:pins, written by `mlinfra promote`)
            args = dataclasses.replace(
                args,
                path=None,
                version=pin["version"],
                sha256=str(pin["sha256"]),
                tags={},
                properties={},
                import_version=None,
            )
        model_name = validate_name(args.model_name or name)
        tags = validate_tags(args.tags)
        properties = validate_tags(args.properties, "properties")
        if args.framework not in FRAMEWORKS:
            raise ModelError(
                f"framework {args.framework!r} is not supported: use one of {', '.join(FRAMEWORKS)}"
            )
        pinned = args.version is not None or args.sha256 is not None
        if pinned == (args.path is not None):
            raise ModelError(
                f"RegisteredModel {name}: give either path= (register a file) or version= and sha256= (pin an "
                "existing version), not both or neither"
            )
        registry, credential = _registry_settings(args.registry, args.registry_credential)
        if pinned:
            if args.import_version is not None:
                raise ModelError(
                    f"RegisteredModel {name}: import_version adopts a version with its file (path=); a pinned "
                    "version (version=, sha256=) is only referenced, there is nothing to import"
                )
            self._init_pinned(name, model_name, args, registry, credential, opts)
            return
        assert args.path is not None
        path = Path(os.path.expanduser(args.path)).resolve()

        def hashing(done: int, total: int) -> None:
            if total > 256 << 20 and done % (256 << 20) < (4 << 20):
                pulumi.log.info(f"hashing {path.name}: {done >> 20}/{total >> 20} MiB", ephemeral=True)

        content = scan_content(path, hashing)
        signature = onnx_signature(path) if args.framework == "onnx" else None
        # The component's inputs are what policies (mlinfra.policy) and `mlinfra preview` read.
        props = _props(model_name, None, content.sha256, signature, properties, tags, registry, False)
        secret_key, key_id = stack_signing_key(
            args.signing_key, f"RegisteredModel {name}: signing_key", ModelError
        )
        if key_id is not None:  # who signs, for policies and previews (absent: unsigned)
            props["signers"] = key_id.apply(lambda k: [k])
        super().__init__("mlinfra:registry:RegisteredModel", name, props, opts)
        self._certificate_chain = args.signing_certificate_chain
        self.path: str | None = str(path)

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
                "import_version": _import_version(name, args.import_version),
                "version": None,
                "uri": None,
                "created_at": None,
                "files": None,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["registry_credential"]),
        )
        mv: Any = self.model_version
        self.signed_by: pulumi.Output[list[str]] = pulumi.Output.from_input([])
        if secret_key is not None:
            self.signed_by = self._sign(name, model_name, registry, credential, mv, secret_key, key_id)
        # Numbers cross the engine as float64: give users the ints they expect.
        self._finish(
            version=mv.version.apply(as_int),
            sha256=mv.sha256,
            uri=mv.uri,
            size_bytes=mv.size_bytes.apply(as_int),
            framework=mv.framework,
            signature=mv.signature,
            tags=mv.tags,
            model_name=mv.model_name,
            registry=mv.registry,
            credential=credential,
            properties=mv.properties,
        )

    def _sign(
        self,
        name: str,
        model_name: str,
        registry: str,
        credential: Any,
        mv: Any,
        secret_key: Any,
        key_id: Any,
    ) -> Any:
        from mlinfra.registry.provider import ModelSignatureResource

        chain = (
            self._certificate_chain
            if self._certificate_chain is not None
            else pulumi.Config("mlinfra").get("signingCertificateChain")
        )

        signer = ModelSignatureResource(
            f"{name}-signature",
            {
                "model_name": model_name,
                "registry": registry,
                "registry_credential": credential,
                "version": mv.version,
                "sha256": mv.sha256,
                "signing_key": secret_key,
                # The key's id is public (it names the signer in previews and refusals).
                "key_id": key_id,
                **({"certificate_chain": chain} if chain else {}),
            },
            pulumi.ResourceOptions(
                parent=self, additional_secret_outputs=["signing_key", "registry_credential"]
            ),
        )
        sig: Any = signer
        return sig.key_id.apply(lambda k: [k])

    def _init_pinned(
        self,
        name: str,
        model_name: str,
        args: RegisteredModelArgs,
        registry: str,
        credential: Any,
        opts: pulumi.ResourceOptions | None,
    ) -> None:
        """A pinned version: nothing is registered or owned; preview verifies the registry holds it."""
        version, sha = args.version, args.sha256
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelError(f"RegisteredModel {name}: version = {version!r} must be an integer ≥ 1")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ModelError(
                f"RegisteredModel {name}: pinned version {version} needs sha256 = 64 lowercase hex digits (got "
                f"{sha!r})"
            )
        if args.tags or args.properties:
            raise ModelError(
                f"RegisteredModel {name}: a pinned version keeps the tags and properties it was registered with; "
                "remove tags=/properties= (set them where the version is registered)"
            )
        if credential is not None:
            raise ModelError(
                f"RegisteredModel {name}: pinning versions of a registry that needs a credential is not supported "
                "yet; pin in a folder registry (file://), which needs none"
            )
        found = ModelRegistry(registry).get(model_name, version)
        if found is None or found.sha256 != sha:
            what = (
                "is not in" if found is None else f"has sha256 {found.sha256[:12]}… (pinned {sha[:12]}…) in"
            )
            raise ModelError(
                f"RegisteredModel {name}: pinned {model_name}:{version} {what} the registry {registry}: copy it "
                f"there with `mlinfra promote --copy` (which verifies the content) or fix the pin"
            )
        props = _props(
            model_name, version, sha, found.signature, found.properties, found.tags, registry, True
        )
        from mlinfra.registry.signing import signatures

        signers = sorted(signatures(ModelRegistry(registry), model_name, version))
        if signers:  # a promoted version brings its signers (absent: unsigned)
            props["signers"] = signers
        super().__init__("mlinfra:registry:RegisteredModel", name, props, opts)
        self.path = None
        out = pulumi.Output.from_input
        self._finish(
            version=out(version),
            sha256=out(sha),
            uri=out(found.uri),
            size_bytes=out(found.size_bytes),
            framework=out(found.framework),
            signature=out(found.signature),
            tags=out(found.tags),
            model_name=out(model_name),
            registry=out(registry),
            credential=None,
            properties=out(found.properties),
        )

    def _finish(self, *, version, sha256, uri, size_bytes, framework, signature, tags, model_name, registry,
                credential, properties) -> None:  # fmt: skip
        """The outputs, the same for a registered and a pinned version."""
        self.version = version
        self.sha256 = sha256
        self.uri = uri
        self.size_bytes = size_bytes
        self.framework = framework
        self.signature = signature
        self.tags = tags
        self.model_name = model_name
        self.registry = registry
        self.registry_credential = credential
        self.properties = properties
        # What images and deployments need to fetch this exact version (secret when a credential is set). With a
        # signing key it resolves once the version is signed: images and devices that verify find the signature.
        self.model_ref: pulumi.Output[dict[str, Any]] = pulumi.Output.all(
            self.model_name,
            self.version,
            self.sha256,
            self.registry,
            credential,
            getattr(self, "signed_by", None),
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
                "properties": self.properties,
                "model_name": self.model_name,
                "registry": self.registry,
                "signed_by": getattr(self, "signed_by", None),
            }
        )


def stack_signing_key(
    explicit: pulumi.Input[str] | None, where: str, error: type[Exception]
) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """(the private key as a secret, its public key id) of EXPLICIT, else of the stack's secret `mlinfra:signingKey`;
    (None, None) with neither. A key that cannot sign raises ERROR naming WHERE. The key id is public: it names the
    signer in props, previews and refusals."""
    key = explicit if explicit is not None else pulumi.Config("mlinfra").get_secret("signingKey")
    if key is None:
        return None, None
    secret = pulumi.Output.secret(key)
    return secret, pulumi.Output.unsecret(secret.apply(functools.partial(_key_id, where, error)))


def _key_id(where: str, error: type[Exception], pem: str) -> str:
    from mlinfra.registry.signing import SignatureError, key_id, public_key_of

    try:
        return key_id(public_key_of(pem))
    except SignatureError as e:
        raise error(f"{where}: {e}") from None


def _props(
    model_name: str,
    version: int | None,
    sha256: str,
    signature: Any,
    properties: dict[str, str],
    tags: dict[str, str],
    registry: str,
    pinned: bool,
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "version": version,
        "sha256": sha256,
        "signature": signature,
        "properties": dict(sorted(properties.items())),
        "tags": dict(sorted(tags.items())),
        "registry": registry,
        "pinned": pinned,
    }


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
        validate_name(args.alias, "alias")
        super().__init__("mlinfra:registry:ModelAlias", name, None, opts)
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
