"""The house's rules that import-linter alone does not cover: every library module is in the "library never
imports the lab" contract, the wheel holds only the three top-level packages, and old module names resolve."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_library_module_is_kept_apart_from_the_lab() -> None:
    lab = next(c for c in _contracts() if c.get("forbidden_modules") == ["mlinfra.lab"])
    listed = set(lab["source_modules"])
    present = {
        f"mlinfra.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "mlinfra").iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "_legacy")) or (p / "__init__.py").exists()
    }
    missing = present - listed - {"mlinfra.lab", "mlinfra.cli"}
    assert not missing, f"add {sorted(missing)} to the lab contract's source_modules in pyproject.toml"


@pytest.mark.parametrize(
    ("old", "attr", "new_module"),
    [
        ("mlinfra.providers.cloud_endpoint", "LocalEndpointProvider", "mlinfra.endpoints.provider"),
        ("mlinfra.providers.model_version", "ModelAliasProvider", "mlinfra.registry.provider"),
        ("mlinfra.providers.scoring_image", "ScoringImageProvider", "mlinfra.images.provider"),
        ("mlinfra.providers.edge_deployment", "EdgeDeploymentProvider", "mlinfra.edge.provider"),
        (
            "mlinfra.providers.quantized_model",
            "QuantizedModelProvider",
            "mlinfra.endpoints.quantized_provider",
        ),
        ("mlinfra.data_collection", "_Provider", "mlinfra.monitoring.provider"),
        ("mlinfra.endpoint.local", "find_containers", "mlinfra.endpoints.local"),
        ("mlinfra.services", "ensure", "mlinfra.lab.services"),
    ],
)
def test_old_module_names_resolve_to_the_new_homes(old: str, attr: str, new_module: str) -> None:
    import mlinfra  # noqa: F401  (installs the finder)

    obj = getattr(importlib.import_module(old), attr)
    assert obj.__module__ == new_module


def test_wheel_installs_only_the_three_top_level_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the tree it builds
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("mlinfra", "components"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("mlinfra-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"mlinfra", "mlinfra_scoring", "mlinfra_edge"}, top
    assert "mlinfra_scoring/server.py" in names and "mlinfra_edge/agent.py" in names
    assert "mlinfra/policy/PulumiPolicy.yaml" in names, "the policy pack ships with mlinfra"
