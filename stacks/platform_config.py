"""Typed configuration of the platform stack (the `mlinfra-platform:platform` config object).

Environments differ only in their Pulumi.<env>.yaml; the program has no environment names in it. Unknown or
misspelt keys are errors that name the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    name: str
    """Registry name of the model (also the resource name)."""
    path: str
    """Model file or folder, relative to the stacks/ folder."""
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)


class ImageConfig(Strict):
    name: str
    models: list[str]
    """Names of models (from `models`) packaged in this image."""
    script: str | None = None


class EdgeConfig(Strict):
    name: str
    models: list[str]
    target_condition: str
    priority: int = 0
    min_success_fraction: float = 1.0
    timeout_s: float = 120.0


class PlatformConfig(Strict):
    registry: str | None = None
    """Model registry URI. Default: a folder registry in stacks/.mlinfra/registry."""
    models: list[ModelConfig]
    images: list[ImageConfig] = Field(default_factory=list)
    edge: list[EdgeConfig] = Field(default_factory=list)


class ConfigError(ValueError):
    pass


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def load(raw: Any) -> PlatformConfig:
    """Validate the whole config object; errors name the key path, and for unknown keys the nearest valid one."""
    try:
        cfg = PlatformConfig.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            path = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                key = str(err["loc"][-1])
                owner = PlatformConfig
                for part in err["loc"][:-1]:
                    if isinstance(part, str):
                        field = owner.model_fields.get(part)
                        inner = getattr(field.annotation, "__args__", (None,))[0] if field else None
                        owner = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else owner
                near = difflib.get_close_matches(key, _fields(owner), n=1)
                msgs.append(
                    f"platform.{path}: unknown key" + (f"; did you mean {near[0]!r}?" if near else "")
                )
            else:
                msgs.append(f"platform.{path}: {err['msg']}")
        raise ConfigError("invalid stack config:\n  " + "\n  ".join(msgs)) from None
    names = {m.name for m in cfg.models}
    for group in (cfg.images, cfg.edge):
        for item in group:
            for m in item.models:
                if m not in names:
                    raise ConfigError(
                        f"platform: {item.name} uses model {m!r}, which is not in platform.models "
                        f"({', '.join(sorted(names))})"
                    )
    return cfg
