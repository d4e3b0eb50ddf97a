"""The examples are integration-test targets: each one goes up, up again with no change, and down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pulumi import automation as auto

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


def test_yaml_program_uses_mlinfras_components(tmp_path: Path, backend: Path, local_services) -> None:
    """examples/yaml: a Pulumi YAML program registers a model, builds its image and serves it through mlinfra's
    multi-language component package — real engine, YAML language host, component provider, Local Docker."""
    from mlinfra.lab.samples import write_mlp
    from mlinfra.registry import ModelRegistry
    from tests.endpoint_helpers import score

    local_services("docker", "registry", "python-base", "router-base")
    work = tmp_path / "yaml"
    shutil.copytree(
        EXAMPLES / "yaml", work, ignore=shutil.ignore_patterns(".mlinfra", "Pulumi.*.yaml", "*.onnx")
    )
    project = work / "Pulumi.yaml"
    project.write_text(
        project.read_text().replace("../../mlinfra/package", str(EXAMPLES.parent / "mlinfra/package"))
    )
    stack = local_stack(work, "test", backend_dir=backend)
    with pytest.raises(auto.CommandError) as missing:
        stack.up()
    assert "model.onnx" in str(missing.value) and "does not exist" in str(missing.value), (
        "a wrong input in YAML gets mlinfra's own error, naming the value"
    )
    write_mlp(work / "model.onnx")  # the program's default modelPath, relative to the project
    up = stack.up()
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["modelRef"] == "yaml-mlp:1"
    assert up.outputs["primaryKey"].secret, "the endpoint key stays a secret through the package"
    status, body, _ = score(out["scoringUri"], out["primaryKey"])
    assert status == 200 and len(body[0]) == 10, (status, body)
    assert score(out["scoringUri"], None)[0] == 401
    collected = Path(out["collectedTo"].removeprefix("file://"))
    assert collected.is_relative_to(work), "the default collection folder is the project's"
    deadline = time.monotonic() + 60
    while (
        not (records := [p for p in collected.rglob("*.jsonl") if p.stat().st_size])
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert records, f"the scored request is captured under {collected}"
    assert "yaml-mlp" in records[0].as_posix(), records[0]
    types = {r["type"] for r in stack.export_stack().deployment["resources"]}
    for component in ("RegisteredModel", "ScoringImage", "CloudEndpoint"):
        assert f"mlinfra:index:{component}" in types, f"{component} is served by the mlinfra package"
    assert {"mlinfra:registry:RegisteredModel", "mlinfra:endpoints:CloudEndpoint"} <= types, (
        "the Python components"
    )
    version = ModelRegistry(f"file://{work / '.mlinfra' / 'registry'}").resolve("yaml-mlp:1")
    assert version.tags == {"team": "platform"}, "YAML maps reach the registry"
    preview = stack.preview()
    assert set(preview.change_summary) == {"same"}, preview.change_summary
    # GitOps on a YAML stack: `mlinfra preview` reads the Python components under the package's wrappers.
    summary = tmp_path / "preview.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlinfra.cli",
            "preview",
            "--stack",
            "test",
            "--dir",
            str(work),
            "--json",
            str(summary),
        ],
        env={**os.environ, "PULUMI_BACKEND_URL": f"file://{backend}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    plan = json.loads(summary.read_text())
    assert [m["name"] for m in plan["models"]] == ["model"] and plan["models"][0]["op"] == "same", plan[
        "models"
    ]
    assert plan["endpoints"][0]["traffic_after"] == {"main": 100.0}, plan["endpoints"]
    stack.destroy()
    assert stack.export_stack().deployment.get("resources") in (None, [])
