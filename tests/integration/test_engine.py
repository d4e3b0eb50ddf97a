"""The real Pulumi engine, offline: preview, up, a no-op up, an update, destroy — on a component holding a
Python dynamic resource (the shape every mlinfra component has)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.engine import engine_bin_dir, engine_env, pinned_versions

pytestmark = pytest.mark.integration
PROGRAM = Path(__file__).parent / "programs" / "foundation"


def test_engine_is_the_pinned_version() -> None:
    bin_dir = engine_bin_dir()
    assert bin_dir is not None, "no engine: make setup"
    out = subprocess.run(
        [str(bin_dir / "pulumi"), "version"], capture_output=True, text=True, env=engine_env(), check=True
    ).stdout.strip()
    pins = pinned_versions()
    assert out == f"v{pins['PULUMI_VERSION']}"
    sdk = pins["PULUMI_SDK_VERSION"]
    repo = Path(__file__).parents[2]
    assert f'"pulumi=={sdk}"' in (repo / "pyproject.toml").read_text(), (
        "pyproject's pulumi pin != PULUMI_SDK_VERSION"
    )
    assert f"pulumi=={sdk}\n" in (repo / "mlinfra/policy/requirements.txt").read_text(), (
        "the policy pack's pin"
    )
    from importlib.metadata import version

    assert version("pulumi") == sdk
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(sdk) <= as_tuple(out[1:]), f"the Python SDK {sdk} is newer than the CLI {out}"
    from mlinfra.cli.system import doctor_checks

    checks = {name: (ok, detail) for name, ok, detail, _fix in doctor_checks()}
    assert checks["pulumi CLI"][0] and checks["pulumi CLI"][1].startswith(out), checks["pulumi CLI"]
    assert (
        checks["pulumi Python SDK"] == (True, checks["pulumi Python SDK"][1])
        and sdk in checks["pulumi Python SDK"][1]
    )
    assert checks["kubernetes plugin"][0], checks["kubernetes plugin"]
    assert checks["docker-build plugin"][0], checks["docker-build plugin"]


def test_the_docker_build_plugin_serves_upstreams_schema() -> None:
    """pulumi-docker-build built here (two metadata packages are local stand-ins, engine/docker-build) answers the
    engine with the schema upstream ships: same resources, same language metadata."""
    import json

    from mlinfra.engine import pulumi_home

    v = pinned_versions()["PULUMI_DOCKER_BUILD_VERSION"]
    plugin = pulumi_home() / "plugins" / f"resource-docker-build-v{v}" / "pulumi-resource-docker-build"
    out = subprocess.run(
        [str(engine_bin_dir() / "pulumi"), "package", "get-schema", str(plugin)],
        capture_output=True, text=True, env=engine_env(), check=True, timeout=120,
    ).stdout  # fmt: skip
    schema = json.loads(out)
    assert (schema["name"], schema["version"]) == ("docker-build", v)
    assert {"docker-build:index:Image", "docker-build:index:Index"} <= set(schema["resources"])
    java = schema["language"]["java"]
    assert (
        java["buildFiles"] == "gradle" and "basePackage" in java and "gradleTest" in java
    )  # upstream's shape
    assert schema["language"]["csharp"] == {
        "respectSchemaVersion": True,
        "packageReferences": {"Pulumi": "3.*"},
    }


def test_component_with_dynamic_child_round_trip(tmp_path: Path, backend: Path) -> None:
    stack = local_stack(
        PROGRAM, "roundtrip", backend_dir=backend, config={"directory": str(tmp_path), "content": "v1"}
    )
    target = tmp_path / "hello.txt"

    preview = stack.preview()
    assert preview.change_summary.get("create") == 3  # stack, component, dynamic child
    assert not target.exists(), "preview must not create anything"

    up = stack.up()
    assert up.summary.result == "succeeded"
    assert up.summary.resource_changes == {"create": 3}
    assert target.read_text() == "v1"
    first_sha = up.outputs["sha256"].value
    assert len(first_sha) == 64

    again = stack.up()
    assert again.summary.resource_changes == {"same": 3}, "a second up must report zero changes"
    assert stack.preview().change_summary == {"same": 3}

    stack.set_config("content", auto.ConfigValue(value="v2"))
    changed_preview = stack.preview()
    assert changed_preview.change_summary.get("update") == 1
    changed = stack.up()
    assert changed.summary.resource_changes == {"same": 2, "update": 1}
    assert target.read_text() == "v2"
    assert changed.outputs["sha256"].value != first_sha

    # The component and its child are both in state, the child parented to the component.
    state = json.loads(stack.export_stack().deployment and json.dumps(stack.export_stack().deployment))
    resources = state["resources"]
    comp = next(r for r in resources if r["type"] == "mlinfra:test:Bundle")
    child = next(r for r in resources if r["type"] == "pulumi-python:dynamic:Resource")
    assert child["parent"] == comp["urn"]

    destroyed = stack.destroy()
    assert destroyed.summary.resource_changes == {"delete": 3}
    assert not target.exists()


def test_language_host_reports_program_errors(tmp_path: Path, backend: Path) -> None:
    """A failing program gives the engine's error with the Python message, not a hang or a silent success."""
    program = tmp_path / "broken"
    program.mkdir()
    (program / "Pulumi.yaml").write_text("name: broken\nruntime: python\n")
    (program / "__main__.py").write_text("raise ValueError('bad model path: /nope.onnx')\n")
    stack = local_stack(program, "broken", backend_dir=backend)
    with pytest.raises(auto.CommandError) as err:
        stack.up()
    assert re.search(r"bad model path: /nope\.onnx", str(err.value))


def test_kubernetes_plugin_renders_manifests(tmp_path: Path, backend: Path) -> None:
    """The kubernetes plugin built from Go modules serves the pinned pulumi-kubernetes SDK."""
    out = tmp_path / "manifests"
    stack = local_stack(
        Path(__file__).parent / "programs" / "k8s-render",
        "render",
        backend_dir=backend,
        config={"out": str(out), "version": "1"},
    )
    up = stack.up()
    assert up.summary.result == "succeeded"
    rendered = list(out.rglob("*.yaml"))
    assert len(rendered) == 1
    text = rendered[0].read_text()
    assert "kind: ConfigMap" in text and 'model_version: "1"' in text.replace("'", '"')
    assert stack.up().summary.resource_changes.get("same") == 3
    stack.set_config("version", auto.ConfigValue(value="2"))
    changes = stack.up().summary.resource_changes
    # pulumi-kubernetes replaces a ConfigMap whose data changed (they are treated as immutable).
    assert changes.get("replace", 0) + changes.get("update", 0) == 1, changes
    texts = [p.read_text().replace("'", '"') for p in out.rglob("*.yaml")]
    assert len(texts) == 1 and 'model_version: "2"' in texts[0], texts
    stack.destroy()


def test_kubernetes_plugin_against_the_local_control_plane(program, backend: Path, kube_cluster) -> None:
    """pulumi-kubernetes creates objects in a real API server and its await logic waits for the rollout (kwok
    nodes make the pods Running); a second up changes nothing; a changed spec is an update."""
    stack = local_stack(
        program("k8s-deploy"),
        "kube",
        backend_dir=backend,
        config={"kubeconfig": str(kube_cluster.kubeconfig), "replicas": "2", "version": "1"},
    )
    up = stack.up()
    assert up.summary.result == "succeeded"
    assert up.outputs["ready"].value == 2, "the Deployment was awaited until its replicas were ready"
    got = kube_cluster.kubectl(
        "get", "deploy", "-n", "mlinfra-check", "-o", "jsonpath={.items[0].status.readyReplicas}"
    )
    assert got.stdout == "2"
    assert set(stack.up().summary.resource_changes) == {"same"}
    stack.set_config("replicas", auto.ConfigValue(value="3"))
    changed = stack.up()
    assert changed.summary.resource_changes.get("update") == 1
    assert changed.outputs["ready"].value == 3
    stack.destroy()
    assert (
        kube_cluster.kubectl("get", "ns", "mlinfra-check", check=False).returncode != 0
        or "Terminating" in kube_cluster.kubectl("get", "ns", "mlinfra-check", check=False).stdout
    )
