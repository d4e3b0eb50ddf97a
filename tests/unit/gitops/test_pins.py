"""mlinfra:pins — what any program's stack pins, and how promotion writes it (the real engine:
tests/integration/test_gitops.py::test_preview_policy_and_up_on_any_program)."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from mlinfra.engine import REPO_ROOT
from mlinfra.gitops.stacks import _with_pins
from mlinfra.pins import PinError, pin_for


@pytest.fixture
def pins_config():
    def set_pins(value: object) -> None:
        pulumi.runtime.set_all_config({"mlinfra:pins": json.dumps(value)})

    yield set_pins
    pulumi.runtime.set_all_config({})


def test_a_pin_is_found_by_resource_name_and_must_be_whole(pins_config) -> None:
    pins_config({"churn": {"version": 3, "sha256": "ab"}, "scorer": {"image": "h/r@sha256:cd"}})
    assert pin_for("churn", ("version", "sha256")) == {"version": 3, "sha256": "ab"}
    assert pin_for("scorer", ("image",)) == {"image": "h/r@sha256:cd"}
    assert pin_for("other", ("image",)) is None
    with pytest.raises(PinError, match=r"mlinfra:pins\.churn has sha256, version: .* needs exactly image"):
        pin_for("churn", ("image",))
    pins_config({"churn": 3})
    with pytest.raises(PinError, match="must map resource names to pins"):
        pin_for("churn", ("version", "sha256"))


def test_promotion_rewrites_only_the_pins_block() -> None:
    text = (
        "# staging\nencryptionsalt: x\nconfig:\n  mlinfra:registry: file:///r  # shared\n"
        "  mlinfra:pins:\n    old: {version: 1, sha256: aa}\n  other: 1\n"
    )
    out = _with_pins(text, {"m": {"version": 2, "sha256": "bb"}})
    assert out == (
        "# staging\nencryptionsalt: x\nconfig:\n  mlinfra:pins:\n    m: {version: 2, sha256: bb}\n"
        "  mlinfra:registry: file:///r  # shared\n  other: 1\n"
    )
    assert _with_pins("config: {}\n", {"m": {"version": 2, "sha256": "bb"}}) == (
        "config:\n  mlinfra:pins:\n    m: {version: 2, sha256: bb}\n"
    )
    assert _with_pins("# empty\n", {"i": {"image": "h/r@sha256:cc"}}) == (
        "# empty\nconfig:\n  mlinfra:pins:\n    i: {image: h/r@sha256:cc}\n"
    )


def test_promotion_into_the_platform_project_adds_only_pins() -> None:
    """stacks/ is promoted the same way: its platform object, comments and layout stay line for line."""
    text = (REPO_ROOT / "stacks" / "Pulumi.staging.yaml").read_text()
    pins = {"churn": {"version": 2, "sha256": "ab" * 32}, "churn-scorer": {"image": "h/r@sha256:" + "c" * 64}}
    out = _with_pins(text, pins)
    assert [ln for ln in text.splitlines() if ln not in out.splitlines()] == []
    added = [ln for ln in out.splitlines() if ln not in text.splitlines()]
    assert added == [
        "  mlinfra:pins:",
        f"    churn: {{version: 2, sha256: {'ab' * 32}}}",
        f"    churn-scorer: {{image: h/r@sha256:{'c' * 64}}}",
    ]
    before, after = yaml.safe_load(text)["config"], yaml.safe_load(out)["config"]
    assert after.pop("mlinfra:pins") == pins and after == before
