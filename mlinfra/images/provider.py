"""Dynamic provider for ScoringImage: builds and pushes at create/update (or, for a user's Dockerfile, checks the image
its docker-build child pushed); records the image as a user of each model version in its registry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.errors import ImageBuildError
from mlinfra.images.builder import (
    BuildResult,
    ImageSpec,
    _client,
    build_and_push,
    check_trusted,
    inspect_image,
    model_inputs,
    pin_base,
    split_ref,
)
from mlinfra.observed import observed_drift, say_drift
from mlinfra.registry import ModelRegistry
from mlinfra.registry.refs import model_identities

# Inputs that decide the image's content; any change rebuilds (a new digest), the old image stays in the registry.
BUILD_KEYS = (
    "repository",
    "models",
    "base",
    "requirements",
    "script",
    "script_sha256",
    "files",
    "labels",
    "tag",
    "registry_username",
    "dockerfile_sha256",
    "context_sha256",
    "built_digest",
    "trusted_keys",  # baked into the image: the server checks each model's signature at load
    "attestation_key_id",  # who signs the provenance attestation
)


def _spec(props: dict[str, Any]) -> ImageSpec:
    return ImageSpec(
        repository=props["repository"],
        models=model_inputs(props["models"]),
        base=props.get("base_pinned") or props["base"],
        requirements=list(props.get("requirements") or []),
        script=Path(props["script"]) if props.get("script") else None,
        files={k: Path(v) for k, v in (props.get("files") or {}).items()},
        labels=dict(props.get("labels") or {}),
        tag=props.get("tag") or None,
        username=props.get("registry_username") or None,
        password=props.get("registry_password") or None,
        trusted_keys=list(props.get("trusted_keys") or []),
    )


def _attest(props: dict[str, Any], result: BuildResult) -> dict[str, str]:
    """Sign and attach the image's SLSA provenance (mlinfra.images.attest): its models with their signers, the base
    image's digest, the dependency wheels' sha256 and the builder."""
    from importlib.metadata import version

    from mlinfra.engine import pinned_versions
    from mlinfra.images.attest import attach_signed, provenance_statement
    from mlinfra.images.builder import FORMAT, image_requirements, wheels_of
    from mlinfra.registry.signing import signatures

    host, repo, _ = split_ref(result.image_ref)
    spec = _spec(props)
    models = []
    for m in props["models"]:
        reg = ModelRegistry(m["registry"], m.get("credential") or None)
        signers = sorted(signatures(reg, m["name"], int(m["version"])))
        models.append(
            {"name": m["name"], "version": int(m["version"]), "sha256": m["sha256"], "signers": signers}
        )
    base_digest = result.labels.get("org.opencontainers.image.base.digest") or spec.base.rsplit("@", 1)[-1]
    # The daemonless build records every installed distribution; a Dockerfile's staging, its requirement pins.
    dists = [d for d in result.labels.get("mlinfra.image.requirements", "").split(",") if d] or [
        r.replace("==", "-") for r in image_requirements(spec.requirements)
    ]
    wheels = wheels_of(dists)
    mlinfra_version = version("mlinfra")
    if props.get("dockerfile"):
        buildkit = pinned_versions().get("BUILDKIT_VERSION", "")
        builder_id = f"https://github.com/moby/buildkit@{buildkit}"
        builder_version = {"buildkit": buildkit, "mlinfra": mlinfra_version}
    else:
        builder_id = f"https://github.com/mlinfra/mlinfra/daemonless-builder@{mlinfra_version}"
        builder_version = {"mlinfra": mlinfra_version, "format": FORMAT}
    statement = provenance_statement(
        f"{host}/{repo}",
        result.digest,
        models=models,
        base=spec.base,
        base_digest=base_digest,
        wheels=wheels,
        builder_id=builder_id,
        builder_version=builder_version,
        parameters={
            "repository": props["repository"],
            "models": [f"{m['name']}:{m['version']}" for m in models],
            "requirements": sorted(props.get("requirements") or []),
            "script_sha256": props.get("script_sha256"),
            "dockerfile_sha256": props.get("dockerfile_sha256"),
        },
    )
    return attach_signed(_client(host, spec), repo, result.digest, statement, props["attestation_key"])


def _users(props: dict[str, Any], image_ref: str, add: bool) -> None:
    for m in props.get("models") or []:
        reg = ModelRegistry(m["registry"], m.get("credential") or None)
        if add:
            reg.add_user(m["name"], int(m["version"]), f"image:{image_ref}")
        else:
            reg.remove_user(m["name"], int(m["version"]), f"image:{image_ref}")


def observe(props: dict[str, Any]) -> str:
    """``"present"`` when the registry still serves the image's manifest under its digest and every blob it names;
    else what is missing (``"manifest missing"``, ``"2 of 5 layers missing"``)."""
    host, repo, digest = split_ref(props["image_ref"])
    client = _client(host, _spec(props))
    got = client.get_manifest(repo, digest)
    if got is None:
        return "manifest missing"
    manifest = got[1]
    blobs = [manifest.get("config", {}), *manifest.get("layers", [])]
    missing = [b for b in blobs if b.get("digest") and not client.blob_exists(repo, b["digest"])]
    return f"{len(missing)} of {len(blobs)} blobs missing" if missing else "present"


class ScoringImageProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # What `up` brings the image to; after a refresh found it gone, preview shows observed → present.
        checked = {**news, "observed": "present"}
        if not news.get("import_digest") and isinstance(news.get("base"), str):
            # The base by digest, resolved at every preview: a moved tag is a visible change, never a silent one.
            checked["base_pinned"] = pin_base(news["base"])
        return CheckResult(checked, [])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the manifest and its blobs still in the registry, as ``observed``."""
        observed = observe(props)
        if observed != "present":
            say_drift(props["image_ref"], observed, "`pulumi up` pushes it again from the same inputs")
        return ReadResult(id_, {**props, "observed": observed})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        def norm(k: str, props: dict[str, Any]) -> Any:
            if k == "models":
                return model_identities(props.get(k))
            if k == "script":
                return None  # the script's path may differ between machines; its sha256 is what counts
            if k == "trusted_keys":
                return sorted(props.get(k) or [])
            return props.get(k)

        changed = [k for k in BUILD_KEYS if norm(k, olds) != norm(k, news)]
        if olds.get("base_pinned") and news.get("base_pinned") and olds["base_pinned"] != news["base_pinned"]:
            changed.append("base_pinned")  # the base tag moved to another image
        drifted = observed_drift(olds, news)
        return DiffResult(changes=bool(changed) or drifted, replaces=[], delete_before_replace=False)

    def _adopt(self, props: dict[str, Any], digest: str, what: str = "import") -> BuildResult:
        """An image already in the repository, checked: it exists and packages exactly the declared versions."""
        ref = f"{props['repository']}@{digest}"
        found = inspect_image(ref, _spec(props))
        if found is None:
            hint = (
                "check import_digest"
                if what == "import"
                else "`pulumi refresh`, then `pulumi up` rebuilds it"
            )
            raise ImageBuildError(f"cannot {what} {ref}: the registry does not hold it ({hint})")
        packaged = {(m["name"], int(m["version"]), m["sha256"]) for m in found["models"]}
        wanted = {(m["name"], int(m["version"]), m["sha256"]) for m in props["models"]}
        if packaged != wanted:
            has = ", ".join(f"{n}:{v}" for n, v, _ in sorted(packaged)) or "no mlinfra model"
            declared = ", ".join(f"{n}:{v}" for n, v, _ in sorted(wanted))
            raise ImageBuildError(
                f"cannot {what} {ref}: it packages {has}, the stack declares {declared}: import the image built "
                "from these versions, or drop import_digest to build one"
            )
        return BuildResult(ref, found["digest"], found["labels"], [], 0, sorted(found["models"], key=str))

    def _build(self, props: dict[str, Any], adopt: bool = False) -> dict[str, Any]:
        if adopt and props.get("import_digest"):
            result = self._adopt(props, props["import_digest"])
            print(f"imported {result.image_ref} (not rebuilt)", file=sys.stderr, flush=True)
        elif props.get("dockerfile"):
            # The docker-build child built and pushed it: check it is there and packages the declared versions.
            result = self._adopt(props, props["built_digest"], what="record the docker-build image")
        else:
            spec = _spec(props)
            check_trusted(spec.models, spec.trusted_keys)
            result = build_and_push(spec)
        attestation = _attest(props, result) if props.get("attestation_key") else None
        _users(props, result.image_ref, add=True)
        return {
            **props,
            **({"attestation": attestation} if attestation else {}),
            "image_ref": result.image_ref,
            "digest": result.digest,
            "image_labels": result.labels,
            "layers": result.layers,
            "bytes_pushed": result.bytes_pushed,
            "model_versions": result.models,
            "observed": "present",
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._build(props, adopt=True)
        return CreateResult(id_=outs["image_ref"], outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Docker builds are not reproducible: a rebuilt Dockerfile image is a visible update, not a repair.
        repair = (
            not news.get("dockerfile")
            and olds.get("observed", "present") != "present"
            and not self.diff(_id, {**olds, "observed": None}, news).changes
        )
        outs = self._build(news)
        if repair and outs["image_ref"] != olds["image_ref"]:
            # Endpoints run the recorded digest: a rebuild that differs is another image, never a silent swap.
            raise ImageBuildError(
                f"{olds['image_ref']} was deleted from its registry and could not be rebuilt identically from the "
                f"same inputs (the rebuild is {outs['digest']}, pushed beside it): the base image or a dependency "
                "changed. Push the original image back, or make the change explicit (e.g. a new tag or "
                "requirements pin) so the new digest rolls out as an update"
            )
        if olds.get("image_ref") and olds["image_ref"] != outs["image_ref"]:
            _users(olds, olds["image_ref"], add=False)
        return UpdateResult(outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        # The image stays in the OCI registry (a record, like model versions); the models are no longer used by it.
        if props.get("image_ref"):
            _users(props, props["image_ref"], add=False)
        _remove_staged_context(props.get("staged_context"))


def _remove_staged_context(staged: str | None) -> None:
    """The staged build context of a Dockerfile image (under the project's .mlinfra/contexts/) goes with it."""
    import shutil

    if not staged:
        return
    path = Path(staged)
    if path.is_absolute() or ".." in path.parts or path.parts[:2] != (".mlinfra", "contexts"):
        return  # only ever a folder this provider's component staged
    shutil.rmtree(path, ignore_errors=True)
    path.with_name(path.name + ".key").unlink(missing_ok=True)


class ScoringImageResource(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(ScoringImageProvider(), name, props, opts)
