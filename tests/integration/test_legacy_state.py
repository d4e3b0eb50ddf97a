"""Stacks created before the house moved keep working (issue 15).

tests/fixtures/legacy-state/state.json is the state of tests/integration/programs/legacy-state — every mlinfra
dynamic provider — recorded by tests/fixtures/legacy-state/record.py with the code of commit 200a66c, when the
providers lived in ``mlinfra.providers.*`` and ``mlinfra.data_collection``. Pulumi keeps each provider in state
as a pickle that names its module, so the new code must still resolve those names (``mlinfra._legacy``): without
it, ``preview`` shows the providers as changed and ``destroy`` fails to unpickle them.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.registry import ModelRegistry

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-state"
OLD_MODULES = {
    b"mlinfra.providers.model_version",
    b"mlinfra.providers.scoring_image",
    b"mlinfra.providers.cloud_endpoint",
    b"mlinfra.providers.edge_deployment",
    b"mlinfra.providers.quantized_model",
    b"mlinfra.data_collection",
}


def _provider_modules(deployment: dict) -> set[bytes]:
    """The module names the state's pickled dynamic providers refer to."""
    found: set[bytes] = set()
    for r in deployment["deployment"].get("resources", []):
        blob = (r.get("inputs") or {}).get("__provider")
        if isinstance(blob, dict):  # stored as a secret; the fixture keeps it as plaintext
            blob = json.loads(blob["plaintext"])
        if isinstance(blob, str):
            raw = base64.b64decode(blob)
            found |= {m for m in OLD_MODULES if m in raw}
    return found


def test_a_stack_recorded_before_the_move_previews_clean_and_destroys(
    tmp_path: Path, program, backend: Path, local_services, broker
) -> None:
    local_services("docker", "registry")
    root = tmp_path / "root"
    shutil.copytree(FIXTURE / "root", root)
    text = (FIXTURE / "state.json").read_text()
    for placeholder, value in {
        "@@ROOT@@": str(root),
        "@@BROKER@@": broker.url,
        "@@BROKER_USER@@": broker.username,
        "@@BROKER_PASSWORD@@": broker.password,
    }.items():
        text = text.replace(placeholder, value)
    deployment = json.loads(text)
    assert _provider_modules(deployment) == OLD_MODULES, "the fixture must name the pre-move provider modules"

    st = local_stack(
        program("legacy-state"),
        "legacy",
        backend,
        {
            "root": str(root),
            "broker": broker.url,
            "brokerUser": broker.username,
            "brokerPassword": auto.ConfigValue(broker.password, secret=True),
        },
    )
    st.workspace.import_stack(
        "legacy", auto.Deployment(version=deployment["version"], deployment=deployment["deployment"])
    )

    preview = st.preview(diff=True)
    changes = {k: v for k, v in preview.change_summary.items() if k != "same" and v}
    # One addition since, per endpoint (the CloudEndpoint and the FpgaEndpoint's): the internal key (the router's
    # credential towards its replicas, which new replicas require). Nothing else may change.
    assert changes == {"create": 2} and preview.stdout.count("-internal]") == 2, (
        f"the recorded stack must preview with no other change under the new code, got {changes}:\n{preview.stdout[-3000:]}"
    )

    registry = ModelRegistry(f"file://{root}/registry")
    users_before = registry.users("legacy", 1)
    assert any(u.startswith("endpoint:") for u in users_before), users_before
    assert registry.get_alias("legacy", "champion") == 1

    st.destroy(on_output=lambda _line: None)
    assert not st.export_stack().deployment.get("resources"), "destroy left resources in the state"
    # The old providers really ran their delete: the endpoint and the image no longer use the model version,
    # and versions are kept (a registry is a record).
    users_after = registry.users("legacy", 1)
    assert not any(u.startswith(("endpoint:", "image:")) for u in users_after), users_after
    assert registry.get_alias("legacy", "champion") is None
    assert registry.get("legacy", 1).sha256
