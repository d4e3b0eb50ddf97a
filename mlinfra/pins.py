"""Pins: the exact artifacts a stack must run, set in its config rather than in the program.

Any program's stack can hold an ``mlinfra:pins`` config object keyed by the components' resource names::

    config:
      mlinfra:pins:
        churn-classifier: {version: 3, sha256: 9f2c…}          # a RegisteredModel
        churn-scorer: {image: 127.0.0.1:5000/acme/churn@sha256:…}  # a ScoringImage

A pinned RegisteredModel references that exact, already registered version (as ``version=``/``sha256=`` would),
registering nothing; a pinned ScoringImage uses that exact digest (as ``pinned=`` would), building nothing. The
program does not change between environments: `mlinfra promote --from dev --to staging` writes these pins from
what dev runs (docs/gitops.md).
"""

from __future__ import annotations

from typing import Any

import pulumi

KEY = "pins"
"""The config key, in the ``mlinfra`` namespace."""


class PinError(ValueError):
    pass


def all_pins() -> dict[str, dict[str, Any]]:
    """The stack's ``mlinfra:pins`` object ({} when absent), checked to be {resource name: {field: value}}."""
    raw = pulumi.Config("mlinfra").get_object(KEY)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PinError(
            "mlinfra:pins must map resource names to pins, e.g. {churn: {version: 3, sha256: …}} or "
            "{churn-scorer: {image: host/repo@sha256:…}}"
        )
    return raw


def pin_for(name: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The pin of resource NAME (None when unpinned); it must have exactly FIELDS."""
    pin = all_pins().get(name)
    if pin is None:
        return None
    if set(pin) != set(fields):
        raise PinError(
            f"mlinfra:pins.{name} has {', '.join(sorted(pin)) or 'nothing'}: a pin of this resource needs exactly "
            f"{', '.join(fields)}"
        )
    return pin
