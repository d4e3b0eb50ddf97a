"""Dynamic providers for model versions and aliases in a ModelRegistry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.observed import observed_drift, say_drift
from mlinfra.registry import ModelError, ModelRegistry, ModelRegistryError

# Inputs whose change means another registry record (a replacement), and ones that are metadata (in place).
REPLACE_KEYS = ("model_name", "registry")
METADATA_KEYS = ("tags", "description", "properties")


def _registry(props: dict[str, Any]) -> ModelRegistry:
    return ModelRegistry(props["registry"], props.get("registry_credential") or None)


def _outs(props: dict[str, Any], mv: Any) -> dict[str, Any]:
    return {
        **props,
        "version": mv.version,
        "uri": mv.uri,
        "created_at": mv.created_at,
        "files": [f["path"] for f in mv.files],
        "observed": "present",
    }


class ModelVersionProvider(ResourceProvider):
    """One RegisteredModel's current version. Content change -> update to a new version (old ones stay);
    tag/description/property change -> metadata update in place; name or registry change -> replace."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if not news.get("sha256"):
            failures.append(CheckFailure("sha256", "the model content was not hashed"))
        # What `up` brings the version to; after a refresh found its bytes gone, preview shows observed → present.
        return CheckResult({**news, "observed": "present"}, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("sha256", "framework", *REPLACE_KEYS, *METADATA_KEYS, "delete_versions_on_destroy")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return DiffResult(
            changes=bool(changed) or observed_drift(olds, news),
            replaces=[k for k in changed if k in REPLACE_KEYS],
            stables=["model_name", "registry"],
            delete_before_replace=False,
        )

    def _register(self, props: dict[str, Any]) -> Any:
        reg = _registry(props)
        path = Path(props["path"])
        if not path.exists():
            raise ModelError(f"model path {str(path)!r} does not exist any more: restore it or change path")
        mv, _created = reg.register(
            props["model_name"],
            path,
            framework=props["framework"],
            description=props.get("description", ""),
            tags=props.get("tags") or {},
            properties=props.get("properties") or {},
        )
        if mv.sha256 != props["sha256"]:
            raise ModelError(
                f"{path} changed between preview and update (sha256 {props['sha256'][:12]}… became "
                f"{mv.sha256[:12]}…): run the update again"
            )
        return mv

    def _adopt(self, props: dict[str, Any]) -> Any:
        """`import_version`: the existing version, if it holds exactly this content; its metadata as declared."""
        reg, name, version = _registry(props), props["model_name"], int(props["import_version"])
        mv = reg.get(name, version)
        if mv is None:
            raise ModelError(
                f"cannot import {name}:{version}: {reg.uri} has no such version (has: {reg.versions(name)})"
            )
        if mv.sha256 != props["sha256"]:
            raise ModelError(
                f"cannot import {name}:{version}: it holds sha256 {mv.sha256[:12]}…, {props['path']} is "
                f"{props['sha256'][:12]}…: point path at that version's file (`mlinfra models download "
                f"{name}:{version} FILE`) or drop import_version to register the file as a new version"
            )
        state = reg.check_version(name, version)
        if state != "present":
            raise ModelError(f"cannot import {name}:{version}: {state} in {reg.uri}")
        print(f"imported {name}:{version} (nothing uploaded)", file=sys.stderr, flush=True)
        return reg.set_metadata(
            name,
            version,
            props.get("tags") or {},
            props.get("description", ""),
            props.get("properties") or {},
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        mv = self._adopt(props) if props.get("import_version") else self._register(props)
        return CreateResult(id_=f"{props['model_name']}:{mv.sha256}", outs=_outs(props, mv))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if olds.get("sha256") != news.get("sha256") or olds.get("framework") != news.get("framework"):
            mv = self._register(news)
        else:
            if observed_drift(
                olds, news
            ):  # bytes lost behind Pulumi's back: the same bytes, from the same path
                restored = _registry(news).restore_files(
                    news["model_name"], int(olds["version"]), news["path"]
                )
                print(
                    f"{news['model_name']}:{int(olds['version'])}: restored {', '.join(restored) or 'nothing'}",
                    file=sys.stderr,
                    flush=True,
                )
            mv = _registry(news).set_metadata(
                news["model_name"],
                int(olds["version"]),
                news.get("tags") or {},
                news.get("description", ""),
                news.get("properties") or {},
            )
        return UpdateResult(outs=_outs(news, mv))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the version record and every file's bytes, as ``observed``."""
        observed = _registry(props).check_version(props["model_name"], int(props["version"]))
        if observed != "present":
            say_drift(
                f"{props['model_name']}:{int(props['version'])}",
                observed,
                f"`pulumi up` restores it from {props.get('path')}",
            )
        return ReadResult(id_, {**props, "observed": observed})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if not props.get("delete_versions_on_destroy"):
            return  # a registry is a record: versions outlive the stack that registered them
        reg = _registry(props)
        name = props["model_name"]
        for v in reg.versions(name):
            if reg.users(name, v):
                continue  # in use: kept
            reg.delete_version(name, v)


class ModelAliasProvider(ResourceProvider):
    """An alias (e.g. `champion`) pointing at a version; moving it is an in-place update."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        try:
            observed = f"points at {int(news.get('version'))}"  # type: ignore[arg-type]
        except (
            TypeError,
            ValueError,
        ):  # registered by this same `up`: unknown at preview, nothing to compare yet
            return CheckResult({k: v for k, v in news.items() if k != "observed"}, [])
        return CheckResult({**news, "observed": observed}, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("model_name", "registry", "alias", "version") if olds.get(k) != news.get(k)]
        return DiffResult(
            changes=bool(changed), replaces=[k for k in changed if k in ("model_name", "registry", "alias")]
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        try:
            _registry(props).set_alias(props["model_name"], props["alias"], int(props["version"]))
        except (ModelError, ModelRegistryError) as e:
            raise ModelError(str(e)) from None
        return CreateResult(
            id_=f"{props['model_name']}@{props['alias']}",
            outs={**props, "observed": f"points at {int(props['version'])}"},
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        _registry(news).set_alias(news["model_name"], news["alias"], int(news["version"]))
        return UpdateResult(outs={**news, "observed": f"points at {int(news['version'])}"})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: where the alias points now (``version`` None if it was removed); `up` moves it back."""
        now = _registry(props).get_alias(props["model_name"], props["alias"])
        if now != int(props["version"]):
            say_drift(
                f"{props['model_name']}@{props['alias']}",
                f"points at {now if now is not None else 'nothing'}, declared {int(props['version'])}",
                "`pulumi up` moves it back",
            )
        observed = f"points at {now if now is not None else 'nothing'}"
        return ReadResult(id_, {**props, "version": now, "observed": observed})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _registry(props).delete_alias(props["model_name"], props["alias"])


class ModelSignatureProvider(ResourceProvider):
    """One signer's signature of a RegisteredModel's current version (mlinfra.registry.signing). A new version or
    another key signs again; the bundles stay in the registry when the resource goes (signatures are a record)."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("model_name", "registry", "version", "sha256", "key_id", "certificate_chain")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed) or observed_drift(olds, news), replaces=[])

    def _sign(self, props: dict[str, Any]) -> dict[str, Any]:
        from mlinfra.registry.signing import sign_version

        kid = sign_version(
            _registry(props),
            props["model_name"],
            int(props["version"]),
            props["signing_key"],
            certificate_chain=props.get("certificate_chain") or None,
        )
        if kid != props["key_id"]:  # the key changed between preview and update
            raise ModelError("the signing key changed between preview and update: run the update again")
        return {**props, "observed": "present"}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(
            id_=f"{props['model_name']}:{int(props['version'])}:{props['key_id']}", outs=self._sign(props)
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._sign(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the bundle is still beside the version."""
        from mlinfra.registry.signing import signatures

        present = props["key_id"] in signatures(_registry(props), props["model_name"], int(props["version"]))
        observed = "present" if present else "signature missing"
        if not present:
            say_drift(
                f"{props['model_name']}:{int(props['version'])}", observed, "`pulumi up` signs it again"
            )
        return ReadResult(id_, {**props, "observed": observed})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        pass


class ModelSignatureResource(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(ModelSignatureProvider(), name, props, opts)


class ModelVersionResource(Resource):
    """The dynamic resource behind RegisteredModel (type pulumi-python:dynamic:ModelVersionResource)."""

    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(ModelVersionProvider(), name, props, opts)


class ModelAliasResource(Resource):
    """The dynamic resource behind ModelAlias."""

    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(ModelAliasProvider(), name, props, opts)
