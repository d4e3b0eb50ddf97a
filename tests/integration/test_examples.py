"""The examples are integration-test targets: each one goes up, up again with no change, and down."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlinfra.automation import local_stack

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize(
    "name",
    ["registered-model", "scoring-image", "cloud-endpoint", "fpga-endpoint", "data-collection", "kubernetes"],
)
def test_example_up_noop_destroy(name: str, tmp_path: Path, backend: Path, local_services) -> None:
    if name in ("scoring-image", "cloud-endpoint", "fpga-endpoint", "data-collection"):
        local_services("docker", "registry", "python-base", "router-base", "azurite")
    if name == "kubernetes":
        local_services("docker", "registry", "python-base", "router-base", "kubernetes")
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work, ignore=shutil.ignore_patterns(".mlinfra", "Pulumi.*.yaml"))
    project = work / "Pulumi.yaml"  # its virtualenv is relative to the examples folder
    project.write_text(project.read_text().replace("../../.venv", str(EXAMPLES.parent / ".venv")))
    stack = local_stack(work, "test", backend_dir=backend)
    up = stack.up()
    assert up.summary.result == "succeeded"
    assert set(stack.up().summary.resource_changes) - {"read"} == {"same"}  # read: a Service.get, no change
    if name == "kubernetes":  # real pods behind the router's ClusterIP
        import time

        from tests.endpoint_helpers import score

        key, uri = up.outputs["primary_key"].value, up.outputs["local_scoring_uri"].value
        deadline = time.monotonic() + 60
        while (got := score(uri, key))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert got[0] == 200 and len(got[1][0]) == 10, got[:2]
        assert score(uri, None)[0] == 401
    if name == "cloud-endpoint":
        from mlinfra.registry import ModelRegistry
        from tests.endpoint_helpers import score

        key = up.outputs["primary_key"].value
        status, body, headers = score(up.outputs["scoring_uri"].value, key)
        assert status == 200 and len(body[0]) == 10 and headers["x-mlinfra-deployment"] == "blue"
        users = ModelRegistry(f"file://{work / '.mlinfra' / 'registry'}").users("fraud-detector", 1)
        assert "endpoint:fraud-test" in users, users  # the served version cannot be deleted
    stack.destroy()
    if name == "cloud-endpoint":
        assert "endpoint:fraud-test" not in ModelRegistry(f"file://{work / '.mlinfra' / 'registry'}").users(
            "fraud-detector", 1
        )


def test_edge_example_on_its_own_broker(tmp_path: Path, backend: Path, broker) -> None:
    """With no device online the condition targets nobody: a warning, and the gate passes trivially."""
    import os

    work = tmp_path / "edge-deployment"
    shutil.copytree(
        EXAMPLES / "edge-deployment", work, ignore=shutil.ignore_patterns(".mlinfra", "Pulumi.*.yaml")
    )
    project = work / "Pulumi.yaml"
    project.write_text(project.read_text().replace("../../.venv", str(EXAMPLES.parent / ".venv")))
    env = {k: os.environ[k] for k in ("MLINFRA_CACHE", "MLINFRA_MQTT_PORT")}
    stack = local_stack(work, "test", backend_dir=backend, env=env)
    up = stack.up()
    assert up.outputs["targeted"].value == 0
    assert "matches no device" in up.stdout
    assert set(stack.up().summary.resource_changes) - {"read"} == {"same"}  # read: a Service.get, no change
    stack.destroy()


def test_platform_stack_previews_on_the_real_engine(tmp_path: Path, backend: Path) -> None:
    work = tmp_path / "stacks"
    shutil.copytree(
        EXAMPLES.parent / "stacks", work, ignore=shutil.ignore_patterns(".mlinfra", "__pycache__")
    )
    project = work / "Pulumi.yaml"
    project.write_text(project.read_text().replace("../.venv", str(EXAMPLES.parent / ".venv")))
    stack = local_stack(work, "dev", backend_dir=backend)
    preview = stack.preview()
    assert preview.change_summary.get("create", 0) >= 5, preview.change_summary
