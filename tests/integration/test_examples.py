"""The examples are integration-test targets: each one goes up, up again with no change, and down."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlinfra.automation import local_stack

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("name", ["registered-model", "scoring-image"])
def test_example_up_noop_destroy(name: str, tmp_path: Path, backend: Path, local_services) -> None:
    if name == "scoring-image":
        local_services("registry", "python-base")
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work, ignore=shutil.ignore_patterns(".mlinfra", "Pulumi.*.yaml"))
    stack = local_stack(work, "test", backend_dir=backend)
    up = stack.up()
    assert up.summary.result == "succeeded"
    assert set(stack.up().summary.resource_changes) == {"same"}
    stack.destroy()
