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
                }
                for a in self.models
            ],
        }


def _need(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d or not isinstance(d[key], kind) or (isinstance(d[key], bool) and kind is int):
        raise ManifestError(f"{where}: {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return d[key]


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
    for m in _need(doc, "models", list, name):
        if not isinstance(m, dict):
            raise ManifestError(f"{name}: each model must be an object")
        files = _need(m, "files", list, name)
        for f in files:
            if (
                not isinstance(f, dict)
                or not isinstance(f.get("path"), str)
                or not isinstance(f.get("url"), str)
                or not re.fullmatch(r"[0-9a-f]{64}", str(f.get("sha256")))
                or not isinstance(f.get("size"), int)
            ):
                raise ManifestError(f"{name}: model file entries need path, url, sha256 (hex) and size")
            if f["path"].startswith("/") or ".." in f["path"].split("/"):
                raise ManifestError(f"{name}: model file path {f['path']!r} escapes the model folder")
        models.append(
            Artifact(
                _need(m, "name", str, name),
                int(_need(m, "version", int, name)),
                _need(m, "sha256", str, name),
                tuple(files),
                bool(m.get("is_dir", False)),
            )
        )
    return Deployment(
        name=name,
        generation=str(_need(doc, "generation", str, name)),
        priority=int(_need(doc, "priority", int, name)),
        layered=bool(doc.get("layered", False)),
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
