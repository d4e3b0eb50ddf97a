"""mlinfra's policy pack (pulumi-policy). Run by the engine: `pulumi preview --policy-pack <this folder>
--policy-pack-config <json>`; `mlinfra preview` does both from the stack's `platform.policy` config."""

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError
from rules import EDGE, ENDPOINT, IMAGE, MODEL, RULES

TYPES = {ENDPOINT, MODEL, IMAGE, EDGE}

# No "required": the engine checks required keys even for disabled policies. A rule that is on without its
# settings reports a violation naming the missing config instead (and `mlinfra preview` rejects such config first).
SCHEMAS: dict[str, dict[str, Any]] = {
    "mlinfra-model-metric": {
        "properties": {"metric": {"type": "string"}, "threshold": {"type": "number"}},
    },
    "mlinfra-canary-step": {
        "properties": {"maxPercent": {"type": "number", "minimum": 0, "maximum": 100}},
    },
    "mlinfra-model-signed": {
        "properties": {"trustedKeyIds": {"type": "array", "items": {"type": "string"}}},
    },
}


def _validator(rule):
    def validate(args: ResourceValidationArgs, report_violation) -> None:
        if args.resource_type not in TYPES:
            return
        props = _plain(args.props)
        for message in rule(args.resource_type, args.name, props, dict(args.get_config() or {})):
            report_violation(message)

    return validate


def _plain(value):
    """pulumi-policy hands props over as proxies that raise on values known only at `up`: make plain dicts and
    lists, with such values as None (the rules skip what they cannot know yet)."""
    if isinstance(value, Mapping):
        out = {}
        for k in value:
            try:
                out[k] = _plain(value[k])
            except UnknownValueError:
                out[k] = None
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for i in range(len(value)):
            try:
                items.append(_plain(value[i]))
            except UnknownValueError:
                items.append(None)
        return items
    return value


PolicyPack(
    name="mlinfra",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        ResourceValidationPolicy(
            name=name,
            description=description,
            validate=_validator(rule),
            config_schema=PolicyConfigSchema(**SCHEMAS[name]) if name in SCHEMAS else None,
        )
        for name, (description, rule) in RULES.items()
    ],
)
