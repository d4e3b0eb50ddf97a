"""EdgeDeployment under mocks: the deployment it publishes (models, condition, gate) and its validation. The
broker is a closed loopback port here: the preview-time device count is skipped with a warning, not a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlinfra
from mlinfra.errors import EdgeError
from mlinfra_edge.condition import ConditionError
from tests.scoring_helpers import free_port
from tests.unit.mocks import install, registered_model, resolve


def _model(tmp_path: Path) -> mlinfra.RegisteredModel:
    return registered_model(tmp_path, "detector")


def _args(tmp_path: Path, **kw) -> mlinfra.EdgeDeploymentArgs:
    base = {
        "models": [_model(tmp_path)],
        "target_condition": "tags.site = 'plant-7' AND tags.ring IN ('canary', 'ga')",
        "broker": f"mqtt://127.0.0.1:{free_port()}",
        "broker_username": "admin",
        "broker_password": "pw",
        "gate": mlinfra.EdgeGate(min_success_fraction=0.9, timeout_s=60, max_failures=1),
    }
    return mlinfra.EdgeDeploymentArgs(**{**base, **kw})


def test_publishes_models_condition_and_gate(tmp_path: Path) -> None:
    mocks = install(
        {
            "-version": {"version": 5.0, "size_bytes": 10.0, "uri": "u"},
            "-deployment": {"targeted": 3.0, "succeeded": 3.0, "failed": 0.0, "failing_devices": []},
        }
    )
    outs = resolve(
        lambda: {
            "targeted": (d := mlinfra.EdgeDeployment("plant7", _args(tmp_path, priority=10))).targeted,
            "failed": d.failed,
        }
    )
    inputs = mocks.inputs("plant7-deployment")
    assert inputs["deployment_name"] == "plant7" and inputs["priority"] == 10
    assert inputs["target_condition"].startswith("tags.site = 'plant-7'")
    assert inputs["gate"] == {"min_success_fraction": 0.9, "timeout_s": 60, "max_failures": 1}
    assert [m["name"] for m in inputs["models"]] == ["detector"]
    assert outs == {"targeted": 3, "failed": 0}
    component = next(i for t, _n, i in mocks.created if t == "mlinfra:edge:EdgeDeployment")
    assert component.get("devices_matched") is None, (
        "an unreachable broker counts nothing (a warning, not an error)"
    )


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"target_condition": "tags.site = "}, ConditionError, "position"),
        ({"models": []}, EdgeError, "models is empty"),
        ({"deployment_name": "no spaces allowed"}, EdgeError, "deployment name 'no spaces allowed'"),
        ({"gate": mlinfra.EdgeGate(min_success_fraction=1.5)}, EdgeError, "min_success_fraction"),
    ],
)
def test_bad_input_is_refused_before_publishing(tmp_path: Path, kw: dict, error: type, message: str) -> None:
    mocks = install({"-version": {"version": 1.0, "size_bytes": 1.0, "uri": "u"}})
    with pytest.raises(error, match=message):
        resolve(lambda: {"t": mlinfra.EdgeDeployment("plant7", _args(tmp_path, **kw)).targeted})
    assert not any(n == "plant7-deployment" for _t, n, _i in mocks.created)
