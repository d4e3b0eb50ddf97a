"""Deployment manifests and how a device resolves the deployments that target it (IoT Edge semantics):

- a deployment *targets* a device when its condition matches the device's twin;
- the *base* is the targeted non-layered deployment with the highest priority (ties: name order); other targeted
  non-layered deployments are *superseded*;
- every targeted *layered* deployment is applied on top of the base, in ascending priority, so where two provide
  the same model name the higher priority wins.

MQTT topics (prefix `mlinfra/edge`):
  deployments/<name>                     retained QoS 1 manifest (JSON); an empty retained payload withdraws it
  devices/<id>/twin                      retained, by the device: tags, capabilities, current models, status
  devices/<id>/status/<deployment>       retained, by the device: targeted|applied|success|failure|superseded
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mlinfra_edge.condition import Condition, ConditionError, parse

PREFIX = "mlinfra/edge"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # the registry's model names (no '..')
MAX_MANIFEST = 256 * 1024


def deployment_topic(name: str) -> str:
    return f"{PREFIX}/deployments/{name}"


def twin_topic(device: str) -> str:
    return f"{PREFIX}/devices/{device}/twin"


def status_topic(device: str, deployment: str) -> str:
    return f"{PREFIX}/devices/{device}/status/{deployment}"


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Artifact:
    """One model version: its files with sha256, size and a download URL (https SAS, http or file)."""

    name: str
    version: int
    sha256: str
    files: tuple[dict[str, Any], ...]
    is_dir: bool = False
    signatures: tuple[tuple[str, str], ...] = ()  # (signer key id, model-signing bundle JSON)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}:{self.sha256}"


@dataclass(frozen=True)
class Deployment:
    name: str
    generation: str
    priority: int
    layered: bool
    condition: Condition
    models: tuple[Artifact, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "generation": self.generation,
            "priority": self.priority,
            "layered": self.layered,
            "target_condition": self.condition.text,
            "models": [
                {
                    "name": a.name,
                    "version": a.version,
                    "sha256": a.sha256,
                    "files": list(a.files),
                    "is_dir": a.is_dir,
                    **({"signatures": dict(a.signatures)} if a.signatures else {}),
                }
                for a in self.models
            ],
        }


def _need(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d or not isinstance(d[key], kind) or (isinstance(d[key], bool) and kind is int):
        raise ManifestError(f"{where}: {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return d[key]


def _check_files(files: list[Any], is_dir: bool, where: str) -> None:
    """Every file entry: a relative, normalized, unique path inside the model's folder (one file unless is_dir), an
    http(s) or file URL, a 64-hex sha256 and a byte count — checked before any of it touches a path."""
    if not files or (not is_dir and len(files) != 1):
        raise ManifestError(f"{where}: {len(files)} files listed; a model has one file (or a folder: is_dir)")
    paths: set[str] = set()
    for j, f in enumerate(files):
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("path"), str)
            or not isinstance(f.get("url"), str)
            or not SHA256_RE.fullmatch(str(f.get("sha256")))
            or isinstance(f.get("size"), bool)
            or not isinstance(f.get("size"), int)
            or f["size"] < 0
        ):
            raise ManifestError(f"{where}: files[{j}] needs path, url, sha256 (64 hex) and size (bytes)")
        path = f["path"]
        parts = path.split("/")
        if (
            not path
            or len(path) > 1024
            or path.startswith("/")
            or "\\" in path
            or "\0" in path
            or any(part in ("", ".", "..") for part in parts)
            or (not is_dir and len(parts) != 1)
        ):
            raise ManifestError(
                f"{where}: file path {path[:120]!r} escapes or is not normalized in the model folder"
            )
        if path in paths:
            raise ManifestError(f"{where}: file path {path!r} is listed twice")
        paths.add(path)
        if f["url"].split(":", 1)[0].lower() not in ("https", "http", "file"):
            raise ManifestError(f"{where}: files[{j}] url must be https, http or file")


MAX_SIGNATURES = 16
MAX_BUNDLE = 32 * 1024


def _signatures(sigs: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A model's signature bundles, {signer key id (64 hex): bundle JSON}: checked for shape here, for what they
    prove by the agent (mlinfra_scoring.provenance) against the keys the device trusts."""
    if not isinstance(sigs, dict) or len(sigs) > MAX_SIGNATURES:
        raise ManifestError(f"{where}: signatures must be an object of at most {MAX_SIGNATURES} bundles")
    for kid, bundle in sigs.items():
        if not SHA256_RE.fullmatch(kid):
            raise ManifestError(f"{where}: signature key id {kid[:80]!r} is not 64 lowercase hex digits")
        if not isinstance(bundle, str) or len(bundle) > MAX_BUNDLE:
            raise ManifestError(
                f"{where}: signature {kid[:16]}… must be a bundle (JSON text) under {MAX_BUNDLE} bytes"
            )
    return tuple(sorted(sigs.items()))


def parse_manifest(payload: bytes) -> Deployment:
    """Validate a manifest; ManifestError names what is wrong (the agent logs it and ignores the message)."""
    if len(payload) > MAX_MANIFEST:
        raise ManifestError(f"manifest of {len(payload)} bytes exceeds {MAX_MANIFEST}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    name = _need(doc, "name", str, "manifest")
    if not NAME_RE.match(name):
        raise ManifestError(f"manifest name {name!r} is not a valid deployment name")
    try:
        cond = parse(_need(doc, "target_condition", str, name))
    except ConditionError as e:
        raise ManifestError(f"{name}: {e}") from None
    models = []
    seen_models: set[str] = set()
    for i, m in enumerate(_need(doc, "models", list, name)):
        if not isinstance(m, dict):
            raise ManifestError(f"{name}: models[{i}] must be an object")
        model = _need(m, "name", str, f"{name}: models[{i}]")
        if not MODEL_RE.match(model) or ".." in model:
            raise ManifestError(f"{name}: models[{i}].name {model[:80]!r} is not a valid model name")
        if model in seen_models:
            raise ManifestError(f"{name}: model {model!r} is listed twice")
        seen_models.add(model)
        version = _need(m, "version", int, f"{name}: {model}")
        if not 1 <= version < 2**31:
            raise ManifestError(f"{name}: {model}: version {version} must be a positive integer")
        sha = _need(m, "sha256", str, f"{name}: {model}")
        if not SHA256_RE.fullmatch(sha):
            raise ManifestError(f"{name}: {model}: sha256 {sha[:80]!r} is not 64 lowercase hex digits")
        is_dir = m.get("is_dir", False)
        if not isinstance(is_dir, bool):
            raise ManifestError(f"{name}: {model}: is_dir must be true or false")
        files = _need(m, "files", list, f"{name}: {model}")
        _check_files(files, is_dir, f"{name}: {model}")
        sigs = _signatures(m.get("signatures", {}), f"{name}: {model}")
        models.append(Artifact(model, version, sha, tuple(files), is_dir, sigs))
    generation = _need(doc, "generation", str, name)
    if not 0 < len(generation) <= 128:
        raise ManifestError(f"{name}: generation must be 1 to 128 characters")
    layered = doc.get("layered", False)
    if not isinstance(layered, bool):
        raise ManifestError(f"{name}: layered must be true or false")
    return Deployment(
        name=name,
        generation=generation,
        priority=int(_need(doc, "priority", int, name)),
        layered=layered,
        condition=cond,
        models=tuple(models),
    )


@dataclass
class Resolution:
    targeting: list[Deployment]  # every deployment whose condition matches
    applied: list[Deployment]  # base + layered
    superseded: list[Deployment]
    models: dict[str, tuple[Artifact, str]]  # model name -> (artifact, deployment that provides it)


def resolve(deployments: list[Deployment], twin: dict[str, Any]) -> Resolution:
    targeting = sorted(
        (d for d in deployments if d.condition.matches(twin)), key=lambda d: (d.priority, d.name)
    )
    bases = [d for d in targeting if not d.layered]
    base = max(bases, key=lambda d: (d.priority, [-ord(c) for c in d.name])) if bases else None
    layered = [d for d in targeting if d.layered]
    applied = ([base] if base else []) + layered
    models: dict[str, tuple[Artifact, str]] = {}
    for d in sorted(applied, key=lambda d: (d.priority, d.layered, d.name)):  # higher priority wins
        for a in d.models:
            models[a.name] = (a, d.name)
    superseded = [d for d in bases if d is not base]
    return Resolution(targeting, applied, superseded, models)
