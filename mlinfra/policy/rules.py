"""The rules of mlinfra's policy pack, as plain functions over a component's inputs (its props).

This file must import nothing outside the standard library: the pack runs in its own virtualenv (`.venv-policy`,
made by `make setup`) where only pulumi and pulumi-policy are installed. Each rule returns the violations' messages;
a message names the resource's value and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENDPOINT = "mlinfra:endpoints:CloudEndpoint"
MODEL = "mlinfra:registry:RegisteredModel"
IMAGE = "mlinfra:images:ScoringImage"
EDGE = "mlinfra:edge:EdgeDeployment"

Rule = Callable[[str, str, dict[str, Any], dict[str, Any]], list[str]]


def _model_ref(name: str, props: dict[str, Any]) -> str:
    """``model:version`` (the version when known at preview)."""
    version = props.get("version")
    return f"{props.get('model_name') or name}" + (
        f":{int(version)}" if isinstance(version, int | float) else ""
    )


def endpoint_auth(rtype: str, name: str, props: dict[str, Any], _cfg: dict[str, Any]) -> list[str]:
    if rtype == ENDPOINT and props.get("auth") == "none":
        return [f"endpoint {name} has auth 'none': set auth to 'key' (or TLS client certificates)"]
    return []


def endpoint_data_collection(rtype: str, name: str, props: dict[str, Any], _cfg: dict[str, Any]) -> list[str]:
    if rtype == ENDPOINT and "data_collection" in props and not props.get("data_collection"):
        return [
            f"endpoint {name} has no data collection: add data_collection (inputs/outputs to blob storage)"
        ]
    return []


def model_metric(rtype: str, name: str, props: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    if rtype != MODEL:
        return []
    metric, threshold = cfg.get("metric"), cfg.get("threshold")
    if not isinstance(metric, str) or not isinstance(threshold, int | float):
        return [
            "policy mlinfra-model-metric needs config 'metric' (a model property name) and 'threshold' (a number): "
            "set platform.policy.model_metric {name, threshold} in the stack's config"
        ]
    ref = _model_ref(name, props)
    raw = (props.get("properties") or {}).get(metric)
    if raw is None:
        return [
            f"model {ref} has no property {metric!r}: record its evaluation (needs {metric} ≥ {threshold:g})"
        ]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return [f"model {ref} property {metric} = {raw!r} is not a number (needs {metric} ≥ {threshold:g})"]
    if value < threshold:
        return [f"model {ref} has {metric} = {value:g}, below the threshold {threshold:g}"]
    return []


def canary_step(rtype: str, name: str, props: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    if rtype != ENDPOINT:
        return []
    limit = cfg.get("maxPercent")
    if not isinstance(limit, int | float):
        return [
            "policy mlinfra-canary-step needs config 'maxPercent': set platform.policy.max_canary_percent"
        ]
    steps = (props.get("rollout") or {}).get("steps") or []
    if steps and isinstance(steps[0], int | float) and steps[0] > limit:
        return [
            f"endpoint {name} shifts {steps[0]:g} % of traffic in its first rollout step (limit {limit:g} %): "
            f"start with a smaller canary, e.g. steps [{limit:g}, 50, 100]"
        ]
    return []


def image_digest(rtype: str, name: str, props: dict[str, Any], _cfg: dict[str, Any]) -> list[str]:
    out = []
    if rtype == ENDPOINT:
        for d, spec in sorted((props.get("deployments") or {}).items()):
            image = (spec or {}).get("image")
            if isinstance(image, str) and image and "@sha256:" not in image:
                out.append(
                    f"endpoint {name} deployment {d} runs image {image!r} by tag: pin it by digest "
                    "(host/repo@sha256:…) or use a ScoringImage"
                )
    if rtype == IMAGE:
        pinned = props.get("pinned")
        if isinstance(pinned, str) and "@sha256:" not in pinned:
            out.append(f"image {name} is pinned by tag {pinned!r}: pin it by digest")
    return out


def edge_gate(rtype: str, name: str, props: dict[str, Any], _cfg: dict[str, Any]) -> list[str]:
    if rtype != EDGE:
        return []
    gate = props.get("gate") or {}
    frac = gate.get("min_success_fraction")
    if not isinstance(frac, int | float) or frac <= 0:
        return [
            f"edge deployment {name} has no failure gate (min_success_fraction = {frac!r}): require a share of "
            "devices to succeed, e.g. min_success_fraction 0.9"
        ]
    return []


def model_signed(rtype: str, name: str, props: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    if rtype not in (MODEL, IMAGE):
        return []
    trusted = cfg.get("trustedKeyIds")
    if not isinstance(trusted, list) or not trusted or not all(isinstance(k, str) for k in trusted):
        return [
            "policy mlinfra-model-signed needs config 'trustedKeyIds' (the key ids `mlinfra models sign` prints): "
            "set platform.policy.trusted_signers in the stack's config"
        ]
    if rtype == IMAGE:
        if props.get(
            "pinned"
        ):  # attested where it was built; `mlinfra promote --copy` brings the attestation along
            return []
        attested = props.get("attested_by")
        if not isinstance(attested, str) or not attested:
            return [
                f"image {name} has no signed provenance attestation: give it attestation_key (default: the stack's "
                "secret mlinfra:signingKey)"
            ]
        if attested.lower() not in {k.lower() for k in trusted}:
            return [
                f"image {name}'s provenance is signed by {attested[:16]}…, none of the stack's trusted keys "
                f"({', '.join(k[:16] + '…' for k in trusted)})"
            ]
        return []
    ref = _model_ref(name, props)
    signers = [s for s in props.get("signers") or [] if isinstance(s, str)]
    if not signers:
        return [
            f"model {ref} is not signed: sign it with a trusted key (RegisteredModel signing_key, or `mlinfra models "
            "sign` before promoting)"
        ]
    if not set(signers) & {k.lower() for k in trusted}:
        return [
            f"model {ref} is signed by {', '.join(s[:16] + '…' for s in signers)}, none of the stack's trusted keys "
            f"({', '.join(k[:16] + '…' for k in trusted)})"
        ]
    return []


RULES: dict[str, tuple[str, Rule]] = {
    "mlinfra-endpoint-auth": ("Endpoints must authenticate callers (key or TLS).", endpoint_auth),
    "mlinfra-endpoint-data-collection": (
        "Endpoints must capture inputs and outputs (DataCollection).",
        endpoint_data_collection,
    ),
    "mlinfra-model-metric": (
        "Models must carry an evaluation metric at or above the threshold.",
        model_metric,
    ),
    "mlinfra-canary-step": ("Rollouts must start with a canary of at most N % of traffic.", canary_step),
    "mlinfra-image-digest": ("Images must be referenced by digest, never by tag alone.", image_digest),
    "mlinfra-edge-gate": ("Edge deployments must have a failure gate.", edge_gate),
    "mlinfra-model-signed": (
        "Models must be signed by one of the stack's trusted keys; images the stack builds carry provenance "
        "signed by one.",
        model_signed,
    ),
}
