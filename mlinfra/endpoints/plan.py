"""Pure planning for CloudEndpoint (no I/O, unit-tested): validation of the traffic and mirror maps, revisions,
upstream weights and the progressive rollout's steps.

Vocabulary: a *deployment* (``blue``) runs one *revision* at a time — a hash of what its containers run (image,
resources, environment). An *upstream* is ``<deployment>@<revision>``. A rollout moves the router's weights from the
old upstream map to the new one in the policy's steps; a deployment whose revision changes runs both revisions
until its rollout ends.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from mlinfra.errors import EndpointError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
ENDPOINT_RE = re.compile(r"^[a-z][a-z0-9-]{0,46}[a-z0-9]$")
DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def namespace_problem(namespace: str) -> str | None:
    """Why NAMESPACE cannot name a Kubernetes namespace (it must be a DNS label), or None when it can."""
    if DNS_LABEL_RE.fullmatch(namespace):
        return None
    return (
        f"namespace {namespace!r} is not a DNS label: use at most 63 lower-case letters, digits and '-', starting "
        "and ending with a letter or digit"
    )


def validate_names(deployments: dict[str, Any], where: str) -> None:
    if not deployments:
        raise EndpointError(
            f"{where}: deployments is empty; give at least one, e.g. {{'blue': Deployment(...)}}"
        )
    for d in deployments:
        if not NAME_RE.match(d):
            raise EndpointError(
                f"{where}: deployment name {d!r} must be 1-31 lowercase letters, digits or '-', starting with a "
                "letter (it names containers and Kubernetes objects)"
            )


def validate_traffic(
    deployments: list[str], traffic: dict[str, Any] | None, mirror: dict[str, Any] | None, where: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Returns (traffic, mirror) with defaults filled: one deployment takes 100 % when traffic is not given."""
    if traffic is None:
        if len(deployments) != 1:
            raise EndpointError(
                f"{where}: traffic is not set and there are {len(deployments)} deployments "
                f"({', '.join(deployments)}): give weights that sum to 100, e.g. "
                f"{{{deployments[0]!r}: 100}}"
            )
        traffic = {deployments[0]: 100}
    mirror = dict(mirror or {})
    for kind, weights in (("traffic", traffic), ("mirror", mirror)):
        for d, w in weights.items():
            if d not in deployments:
                raise EndpointError(
                    f"{where}: {kind} names deployment {d!r}, which is not one of the deployments "
                    f"({', '.join(deployments)})"
                )
            if isinstance(w, bool) or not isinstance(w, int | float) or w != int(w) or not 0 <= w <= 100:
                raise EndpointError(f"{where}: {kind}[{d!r}] = {w!r} must be a whole percentage in 0..100")
    total = sum(int(w) for w in traffic.values())
    if total != 100:
        raise EndpointError(
            f"{where}: traffic weights sum to {total}, not 100 ({', '.join(f'{d}={w}' for d, w in traffic.items())})"
        )
    for d, w in mirror.items():
        if w and traffic.get(d, 0):
            raise EndpointError(
                f"{where}: mirror sends a copy of live traffic to {d!r}, which takes {traffic[d]} % of live traffic "
                f"itself; mirror only to a deployment with traffic 0 (a shadow)"
            )
    if sum(1 for w in mirror.values() if w) > 1:
        raise EndpointError(f"{where}: mirror to one deployment at a time, got {mirror}")
    return {d: int(w) for d, w in traffic.items()}, {d: int(w) for d, w in mirror.items() if w}


def validate_steps(steps: list[Any], where: str) -> list[float]:
    out: list[float] = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 < s <= 100:
            raise EndpointError(f"{where}: rollout step {s!r} must be a percentage in (0, 100]")
        if out and s <= out[-1]:
            raise EndpointError(f"{where}: rollout steps must increase, got {steps}")
        out.append(float(s))
    if not out or out[-1] != 100:
        out.append(100.0)
    return out


def revision(spec: dict[str, Any]) -> str:
    """What the containers run; replicas and autoscaling are not part of it (they scale in place)."""
    # Numbers come back from the engine as float64: normalize so a stored spec hashes like a fresh one.
    norm = {
        "image": spec.get("image"),
        "cpu": float(spec.get("cpu") or 0),
        "memory_mb": int(spec.get("memory_mb") or 0),
        "env": spec.get("env") or {},
    }
    blob = json.dumps(norm, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def upstream_weights(revisions: dict[str, str], traffic: dict[str, int]) -> dict[str, float]:
    return {f"{d}@{revisions[d]}": float(w) for d, w in traffic.items() if w > 0}


def interpolate(old: dict[str, float], new: dict[str, float], percent: float) -> dict[str, float]:
    """Weights `percent` % of the way from OLD to NEW, rounded to 0.01 (nginx's split_clients resolution) and
    summing to exactly 100."""
    keys = sorted(set(old) | set(new))
    raw = {k: old.get(k, 0.0) * (100 - percent) / 100 + new.get(k, 0.0) * percent / 100 for k in keys}
    out = {k: round(v, 2) for k, v in raw.items() if round(v, 2) > 0}
    if out:
        biggest = max(out, key=lambda k: out[k])
        out[biggest] = round(out[biggest] + 100 - sum(out.values()), 2)
    return out


def plan(old: dict[str, float], new: dict[str, float], steps: list[float]) -> list[dict[str, float]]:
    """The weight maps a rollout walks through; one map when nothing moves."""
    if not old or _same(old, new):
        return [interpolate(new, new, 100)]
    return [interpolate(old, new, s) for s in steps]


def gaining(old: dict[str, float], weights: dict[str, float]) -> list[str]:
    """Upstreams that take more traffic than before: the ones the gates watch."""
    return sorted(k for k, w in weights.items() if w > old.get(k, 0.0) + 1e-9)


def describe(weights: dict[str, float]) -> str:
    return ", ".join(f"{k} {w:g}%" for k, w in sorted(weights.items(), key=lambda kv: -kv[1])) or "none"


def describe_plan(old: dict[str, float], steps_maps: list[dict[str, float]], bake_s: float) -> list[str]:
    if len(steps_maps) == 1:
        return [f"traffic {describe(steps_maps[0])} (no shift)"]
    return [
        f"step {i + 1}/{len(steps_maps)}: {describe(m)}; bake {bake_s:g} s, then gates on "
        f"{', '.join(gaining(old, m)) or 'none'}"
        for i, m in enumerate(steps_maps)
    ]


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return {k: round(v, 2) for k, v in a.items() if v} == {k: round(v, 2) for k, v in b.items() if v}
