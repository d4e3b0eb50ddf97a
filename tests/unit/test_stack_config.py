"""The platform stack's typed config: every environment's file is valid; mistakes name the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

STACKS = Path(__file__).parents[2] / "stacks"
sys.path.insert(0, str(STACKS))

from platform_config import ConfigError, load  # noqa: E402


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_every_environment_is_valid(env: str) -> None:
    raw = yaml.safe_load((STACKS / f"Pulumi.{env}.yaml").read_text())["config"]["mlinfra-platform:platform"]
    cfg = load(raw)
    assert cfg.models and cfg.models[0].tags["stage"] == env


def test_environments_differ_only_in_config() -> None:
    program = (STACKS / "__main__.py").read_text()
    for env in ("dev", "staging", "prod"):
        assert f'"{env}"' not in program and f"'{env}'" not in program


def test_misspelt_keys_name_the_nearest_valid_one() -> None:
    with pytest.raises(ConfigError, match=r"platform\.models\.0\.tgas: unknown key; did you mean 'tags'\?"):
        load({"models": [{"name": "m", "path": "m.onnx", "tgas": {}}]})
    with pytest.raises(ConfigError, match=r"platform\.registy: unknown key; did you mean 'registry'\?"):
        load({"registy": "file:///x", "models": []})
    with pytest.raises(ConfigError, match=r"platform\.models: Field required"):
        load({})
    with pytest.raises(ConfigError, match=r"uses model 'ghost', which is not in platform\.models"):
        load({"models": [{"name": "m", "path": "m.onnx"}], "images": [{"name": "i", "models": ["ghost"]}]})
