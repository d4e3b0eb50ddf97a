"""ScoringImage: step 2 of the lifecycle — package registered models with the scoring server (and an optional
Azure ML-style script and dependencies) as a reproducible OCI image, built without a Docker daemon."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlinfra import defaults
from mlinfra.files import sha256_file
from mlinfra.images.builder import (
    DIGEST_REF,
    ImageBuildError,
    ImageSpec,
    check_requirement,
    check_script,
    check_trusted,
    inspect_image,
    model_inputs,
    model_labels,
    pin_base,
    split_ref,
    stage_docker_context,
)
from mlinfra.images.oci import OciRegistryError
from mlinfra.images.provider import ScoringImageResource
from mlinfra.pins import PinError, pin_for
from mlinfra.registry import ModelRegistry, validate_name
from mlinfra.registry.registered_model import stack_signing_key


@dataclass
class ScoringImageArgs:
    models: list[Any]
    """RegisteredModels (or anything with a `model_ref` output, such as FpgaEndpoint's quantized model), or
    "name:version" refs (strings or Outputs) resolved in `model_registry`. Required (at least one)."""
    repository: str | None = None
    """Target, host[:port]/path. Default: <local registry>/mlinfra/<resource name>."""
    tag: str | None = None
    """An extra mutable tag to push. Default: none (images are addressed by digest)."""
    script: str | None = None
    """Azure ML-style scoring script with init() and run(raw_data). Default: the server's ONNX call. A syntax
    error fails the preview with file and line."""
    files: dict[str, str] = field(default_factory=dict)
    """Extra files: {path in /opt/mlinfra/user: local path}. Default: none."""
    requirements: list[str] = field(default_factory=list)
    """Extra pip requirements (wheels for cp311 manylinux x86_64). Default: only the server's own."""
    base: str | None = None
    """Base image with python3. Default: the local python-base image (make services)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra OCI labels. Default: none (mlinfra.model.<n>.name/version/sha256 are always set)."""
    registry_username: str | None = None
    """Target registry user. Default: anonymous."""
    registry_password: pulumi.Input[str] | None = None
    """Target registry password (made a secret). Default: none."""
    model_registry: str | None = None
    """Registry of "name:version" refs. Default: mlinfra:registry config, else the local folder registry."""
    model_registry_credential: pulumi.Input[str] | None = None
    """Credential of model_registry (made a secret). Default: mlinfra:registryCredential."""
    dockerfile: str | None = None
    """Build your own Dockerfile with BuildKit instead of the daemonless build: a ``pulumi_docker_build.Image`` child
    (``<name>-build``) builds and pushes it. Its context also holds mlinfra/app/mlinfra_scoring/ (the scoring
    server), mlinfra/site-packages/ and mlinfra/requirements.txt (its dependencies) and
    mlinfra/models/<name>/<version>/ (the verified model files), staged under .mlinfra/contexts/; build arg
    MLINFRA_BASE is the base image by digest. Default: daemonless, reproducible build."""
    context: str | None = None
    """Docker build context. Default: the Dockerfile's folder."""
    trusted_keys: list[str] | None = None
    """Public keys or root certificates (PEM) trusted to sign models: every model must carry a valid signature by
    one of them (mlinfra.registry.signing) or the build is refused before anything is packaged. The keys and the
    models' signature bundles go into the image (/opt/mlinfra/trust, MLINFRA_SERVE_TRUST), and the scoring server
    checks every model's files against them again at load: a model that does not match never becomes ready. (A
    Dockerfile image gets them staged as mlinfra/trust/: `COPY mlinfra/trust/ /opt/mlinfra/trust/` and
    `ENV MLINFRA_SERVE_TRUST=/opt/mlinfra/trust`.) Default: the stack's `mlinfra:trustedKeys` config (a list of
    PEM strings), else no check."""
    attestation_key: pulumi.Input[str] | None = None
    """EC private key (PEM; made a Pulumi secret) that signs the image's SLSA provenance attestation — the models and
    their signers, the base image digest, the dependency wheels' sha256, the builder — attached in the registry the
    way cosign attaches attestations (mlinfra.images.attest; `cosign verify-attestation --key`). Default: the stack's
    `mlinfra:signingKey` secret (the key that signs its models); neither: no attestation."""
    builder: str | None = None
    """The buildx builder instance ``dockerfile=`` builds with. Default: $MLINFRA_BUILDER, else ``mlinfra`` (the local
    buildkitd `make services` runs and registers)."""
    pinned: str | None = None
    """Pin: use this already built image (host/repo@sha256:<64 hex>) instead of building — what `mlinfra promote`
    writes. Preview fails unless the registry holds it and its labels name exactly the versions of ``models``."""
    import_digest: str | None = None
    """Adopt: ``sha256:<64 hex>`` of an image already in ``repository`` — the stack manages it from now on (refresh,
    drift repair, later rebuilds) without building it again. Its labels must name exactly the versions of
    ``models``. mlinfra's form of `pulumi import` (the engine can't import dynamic-provider resources:
    pulumi/pulumi#16175). Read only at create: keeping or removing it afterwards changes nothing."""


class ScoringImage(pulumi.ComponentResource):
    """Outputs: ``image_ref`` (registry/repo@sha256:…), ``digest``, ``labels``, ``models`` (name, version, sha256)."""

    image_ref: pulumi.Output[str]
    digest: pulumi.Output[str]
    labels: pulumi.Output[dict[str, str]]
    models: pulumi.Output[list[dict[str, Any]]]

    def __init__(self, name: str, args: ScoringImageArgs, opts: pulumi.ResourceOptions | None = None):
        if not args.models:
            raise ImageBuildError(f"ScoringImage {name}: models is empty; give at least one RegisteredModel")
        try:
            pin = pin_for(name, ("image",))
        except PinError as e:
            raise ImageBuildError(f"ScoringImage {name}: {e}") from None
        if pin is not None:  # the stack pins this image (mlinfra:pins, written by `mlinfra promote`)
            args = dataclasses.replace(args, pinned=str(pin["image"]))
        repository = args.repository or f"{defaults.registry_host()}/mlinfra/{name}"
        split_ref(repository + ":x")  # validates the form
        for req in args.requirements:
            try:
                check_requirement(req)
            except ImageBuildError as e:
                raise ImageBuildError(f"ScoringImage {name}: {e}") from None
        # The component's inputs are what policies (mlinfra.policy) and `mlinfra preview` read.
        props: dict[str, Any] = {
            "repository": repository,
            "pinned": args.pinned,
            "models": [
                m if isinstance(m, str | pulumi.Output) else {"name": m.model_name, "version": m.version}
                for m in args.models
            ],
        }
        attestation_key = attestation_key_id = None
        if args.pinned is None:  # who attests, for policies (absent: nobody)
            attestation_key, attestation_key_id = stack_signing_key(
                args.attestation_key, f"ScoringImage {name}: attestation_key", ImageBuildError
            )
        if attestation_key_id is not None:
            props["attested_by"] = attestation_key_id
        super().__init__("mlinfra:images:ScoringImage", name, props, opts)
        if args.pinned is not None:
            self._init_pinned(name, args, _model_refs(name, args))
            return
        script = Path(args.script).resolve() if args.script else None
        if script is not None:
            if not script.is_file():
                raise ImageBuildError(f"ScoringImage {name}: script {args.script!r} does not exist")
            check_script(script)
        files = {}
        for dest, src in args.files.items():
            p = Path(src).resolve()
            if not p.is_file():
                raise ImageBuildError(f"ScoringImage {name}: file {src!r} (for {dest}) does not exist")
            files[dest] = str(p)
        dockerfile = Path(args.dockerfile).resolve() if args.dockerfile else None
        if dockerfile is not None and not dockerfile.is_file():
            raise ImageBuildError(f"ScoringImage {name}: dockerfile {args.dockerfile!r} does not exist")
        context = (
            Path(args.context).resolve() if args.context else (dockerfile.parent if dockerfile else None)
        )
        models = _model_refs(name, args)
        trusted = _trusted_keys(name, args)
        self.build: Any = None
        built_digest: Any = None
        staged_at: str | None = None
        if dockerfile is not None:
            assert context is not None
            self.build = _docker_build(self, name, args, repository, dockerfile, context, models, trusted)
            built_digest = self.build.digest
            staged_at = _staging_folder(name).as_posix()
        self.image: ScoringImageResource | None = ScoringImageResource(
            f"{name}-image",
            {
                "repository": repository,
                "models": models,
                "base": args.base or defaults.base_image_ref(),
                "requirements": sorted(args.requirements),
                "script": str(script) if script else None,
                "script_sha256": sha256_file(script) if script else None,
                "files": {k: sha256_file(Path(v)) + ":" + v for k, v in sorted(files.items())},
                "labels": dict(sorted(args.labels.items())),
                "tag": args.tag,
                "dockerfile": str(dockerfile) if dockerfile else None,
                "dockerfile_sha256": sha256_file(dockerfile) if dockerfile else None,
                "context": str(context) if context else None,
                "context_sha256": _sha_dir(context, dockerfile) if context else None,
                "registry_username": args.registry_username,
                "registry_password": pulumi.Output.secret(args.registry_password)
                if args.registry_password is not None
                else None,
                "import_digest": _import_digest(name, args.import_digest),
                "built_digest": built_digest,
                "trusted_keys": trusted,
                "staged_context": staged_at,
                "image_ref": None,
                "digest": None,
                "image_labels": None,
                "layers": None,
                "bytes_pushed": None,
                "model_versions": None,
                **(
                    {
                        "attestation_key": attestation_key,
                        "attestation_key_id": attestation_key_id,
                        "attestation": None,
                    }
                    if attestation_key_id is not None
                    else {}
                ),
            },
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[m for m in args.models if isinstance(m, pulumi.Resource)]
                + ([self.build] if self.build is not None else []),
                additional_secret_outputs=["registry_password", "models", "attestation_key"],
            ),
        )
        img: Any = self.image
        self.image_ref = img.image_ref
        self.digest = img.digest
        self.labels = img.image_labels
        self.models = img.model_versions
        self.model_refs: pulumi.Output[list[dict[str, Any]]] = img.models
        # {tag, manifest_digest, key_id, predicate_type} of the signed provenance attestation; None without a key.
        self.attestation: pulumi.Output[Any] = (
            img.attestation if attestation_key_id is not None else pulumi.Output.from_input(None)
        )
        self.register_outputs(
            {"image_ref": self.image_ref, "digest": self.digest, "labels": self.labels, "models": self.models}
        )

    def _init_pinned(self, name: str, args: ScoringImageArgs, refs: list[Any]) -> None:
        ref = args.pinned
        if not isinstance(ref, str) or not DIGEST_REF.match(ref):
            raise ImageBuildError(
                f"ScoringImage {name}: pinned = {ref!r} must be host/repo@sha256:<64 hex> (a digest, not a tag)"
            )
        try:
            found = inspect_image(ref)
        except OciRegistryError as e:
            raise ImageBuildError(f"ScoringImage {name}: cannot check pinned image {ref}: {e}") from e
        if found is None:
            raise ImageBuildError(
                f"ScoringImage {name}: pinned image {ref} is not in its registry: copy it there with "
                "`mlinfra promote --copy` or fix the pin"
            )
        packaged = {(m["name"], m["version"], m["sha256"]) for m in found["models"]}

        def check(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            wanted = {(r["name"], int(r["version"]), r["sha256"]) for r in refs}
            if wanted != packaged:
                raise ImageBuildError(
                    f"ScoringImage {name}: pinned image {ref} packages "
                    f"{', '.join(f'{n}:{v}' for n, v, _ in sorted(packaged)) or 'no mlinfra model'} but the stack "
                    f"pins {', '.join(f'{n}:{v}' for n, v, _ in sorted(wanted))}: promote the model and its image "
                    "together"
                )
            return refs

        self.image = None
        self.image_ref = pulumi.Output.from_input(ref)
        self.digest = pulumi.Output.from_input(found["digest"])
        self.labels = pulumi.Output.from_input(found["labels"])
        self.model_refs = pulumi.Output.all(*refs).apply(check)
        self.models = self.model_refs.apply(
            lambda rs: [{"name": r["name"], "version": int(r["version"]), "sha256": r["sha256"]} for r in rs]
        )
        self.register_outputs(
            {"image_ref": self.image_ref, "digest": self.digest, "labels": self.labels, "models": self.models}
        )


def _docker_build(
    parent: ScoringImage,
    name: str,
    args: ScoringImageArgs,
    repository: str,
    dockerfile: Path,
    context: Path,
    models: list[Any],
    trusted: list[str],
) -> Any:
    """The ``pulumi_docker_build.Image`` child that builds a user's Dockerfile with BuildKit and pushes it.

    Its context is staged under ``.mlinfra/contexts/<stack>/<name>`` (relative, so the state does not depend on
    the checkout's path) once the models' refs are known; docker-build hashes it at every preview, so unchanged
    inputs are no change and any changed byte is a rebuild."""
    import pulumi_docker_build as docker_build

    base = args.base or defaults.base_image_ref()
    try:
        base_pinned = pin_base(base)
    except (ImageBuildError, OciRegistryError) as e:
        raise ImageBuildError(f"ScoringImage {name}: base image {base}: {e}") from None
    host = split_ref(repository + ":x")[0]
    builder = args.builder or defaults.buildx_builder()
    check_builder(f"ScoringImage {name}", builder)
    if not args.registry_username:
        _check_anonymous_push(name, host)
    where = _staging_folder(name)
    context_sha = _sha_dir(context, dockerfile)

    def stage(refs: list[dict[str, Any]]) -> dict[str, Any]:
        spec = ImageSpec(
            repository,
            model_inputs(refs),
            base_pinned,
            requirements=sorted(args.requirements),
            trusted_keys=trusted,
        )
        check_trusted(spec.models, trusted)
        key = stage_docker_context(spec, context, where.resolve(), context_sha)
        tags = [f"{repository}:build-{key[:16]}"] + ([f"{repository}:{args.tag}"] if args.tag else [])
        return {"location": where.as_posix(), "tags": tags, "labels": model_labels(spec.models, args.labels)}

    # The refs carry the model registries' credentials (secrets); what is staged from them is not secret.
    staged = pulumi.Output.unsecret(pulumi.Output.all(*models).apply(stage))
    registries = None
    if args.registry_username:
        registries = [
            docker_build.RegistryArgs(
                address=host,
                username=args.registry_username,
                password=pulumi.Output.secret(args.registry_password or ""),
            )
        ]
    return docker_build.Image(
        f"{name}-build",
        context=docker_build.BuildContextArgs(location=staged["location"]),
        dockerfile=docker_build.DockerfileArgs(inline=dockerfile.read_text()),
        build_args={"MLINFRA_BASE": base_pinned, "SOURCE_DATE_EPOCH": "0"},
        labels=staged["labels"],
        tags=staged["tags"],
        push=True,
        builder=docker_build.BuilderConfigArgs(name=builder),
        registries=registries,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def _trusted_keys(name: str, args: ScoringImageArgs) -> list[str]:
    from mlinfra.registry.signing import SignatureError, key_id

    keys = args.trusted_keys
    if keys is None:
        keys = pulumi.Config("mlinfra").get_object("trustedKeys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ImageBuildError(f"ScoringImage {name}: trusted_keys must be a list of PEM public keys")
    for k in keys:
        try:
            key_id(k)
        except SignatureError as e:
            raise ImageBuildError(f"ScoringImage {name}: trusted_keys: {e}") from None
    return list(keys)


def _staging_folder(name: str) -> Path:
    """Where a Dockerfile's build context is staged, relative to the project (the engine runs programs and
    providers there), so the state does not depend on the checkout's path."""
    return Path(".mlinfra") / "contexts" / pulumi.get_stack() / name


def check_builder(where: str, builder: str) -> None:
    """The buildx builder instance BUILDER must be registered, and a local one (unix socket) must answer: else the
    preview fails naming it and the fix, not BuildKit's "failed to find driver" mid-build."""
    import json
    import socket

    path = defaults.buildx_config_dir() / "instances" / builder
    try:
        instance = json.loads(path.read_text())
        endpoints = [str(n.get("Endpoint") or "") for n in instance.get("Nodes") or []]
    except FileNotFoundError:
        raise ImageBuildError(
            f"{where}: no buildx builder {builder!r} in {path.parent}: `make services` (or `mlinfra services up "
            "buildkit`) runs and registers the local one; or give `builder` the name of one of yours"
        ) from None
    except (OSError, ValueError, AttributeError) as e:
        raise ImageBuildError(f"{where}: buildx builder {builder!r} ({path}) cannot be read: {e}") from None
    for endpoint in endpoints:
        if endpoint.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(endpoint.removeprefix("unix://"))
                except OSError as e:
                    raise ImageBuildError(
                        f"{where}: buildx builder {builder!r} does not answer at {endpoint} ({e.strerror or e}): "
                        "start it (`mlinfra services up buildkit` for the local one)"
                    ) from None


def _check_anonymous_push(name: str, host: str) -> None:
    """Without credentials, a registry that wants a login fails the preview naming the fix (not a 401 mid-push)."""
    from mlinfra.images.oci import registry_url

    url = registry_url(host) + "/v2/"
    try:
        with urllib.request.urlopen(url, timeout=5):
            return
    except urllib.error.HTTPError as e:
        if e.code != 401:
            return
    except (OSError, ValueError):
        return  # unreachable now: the build reports it with BuildKit's own words
    raise ImageBuildError(
        f"ScoringImage {name}: registry {host} wants a login: give registry_username and registry_password "
        "(the password as a secret)"
    )


def _import_digest(name: str, digest: str | None) -> str | None:
    if digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", str(digest)):
        raise ImageBuildError(
            f"ScoringImage {name}: import_digest = {digest!r} must be sha256:<64 lowercase hex>"
        )
    return digest


def _model_refs(name: str, args: ScoringImageArgs) -> list[Any]:
    """What to fetch for each model: a RegisteredModel's model_ref, or a "name:version" resolved in the registry."""
    cfg = pulumi.Config("mlinfra")
    models: list[Any] = []
    for m in args.models:
        # Before hasattr: an Output lifts any attribute. An Output is a "name:version" another resource computes.
        if isinstance(m, pulumi.Output):
            models.append(m.apply(lambda ref: _model_refs(name, dataclasses.replace(args, models=[ref]))[0]))
        elif hasattr(m, "model_ref"):
            models.append(m.model_ref)
        else:
            if ":" not in m:
                raise ImageBuildError(f"ScoringImage {name}: model ref {m!r} must be name:version")
            mname, _version = m.rsplit(":", 1)
            validate_name(mname)
            uri = defaults.model_registry_uri(args.model_registry, cfg.get("registry"))
            cred = args.model_registry_credential or cfg.get_secret("registryCredential")
            if cred is None:
                models.append(_resolve_ref(m, uri, None))
            else:
                models.append(pulumi.Output.secret(cred).apply(functools.partial(_resolve_ref, m, uri)))
    return models


def _sha_dir(root: Path, dockerfile: Path | None) -> str:
    """Content hash of a build context (paths and bytes), so an unchanged context is no change."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p != dockerfile and ".mlinfra" not in p.parts and "__pycache__" not in p.parts:
            h.update(
                p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest()
            )
    return h.hexdigest()


def _resolve_ref(ref: str, uri: str, cred: str | None) -> dict[str, Any]:
    mv = ModelRegistry(uri, cred).resolve(ref)
    return {"name": mv.name, "version": mv.version, "sha256": mv.sha256, "registry": uri, "credential": cred}
