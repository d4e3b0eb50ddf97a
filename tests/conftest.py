"""Shared fixtures: the real local services and an isolated Pulumi backend per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra import services

# Tests never reach a package index: image builds install from the wheelhouse `make setup` filled.
os.environ["MLINFRA_PIP_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def local_services() -> Callable[..., None]:
    """Call with service names; starts what is not running, fails the test with the reason when one cannot."""

    def ensure(*names: str) -> None:
        try:
            services.ensure(list(names), progress=lambda _msg: None)
        except services.ServiceError as e:
            pytest.fail(f"local service could not start: {e}", pytrace=False)

    return ensure


@pytest.fixture
def backend(tmp_path: Path) -> Path:
    """A fresh file:// state backend for one test."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def program(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a test program (tests/integration/programs/NAME) to a fresh folder, so stack config files written by
    one test never leak into another."""
    import shutil

    def copy(name: str) -> Path:
        dest = tmp_path / "programs" / name
        shutil.copytree(Path(__file__).parent / "integration" / "programs" / name, dest)
        return dest

    return copy
