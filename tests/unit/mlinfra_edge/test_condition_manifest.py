"""Target conditions and deployment resolution (pure functions)."""

from __future__ import annotations

import json

import pytest

from mlinfra_edge.condition import ConditionError, parse
from mlinfra_edge.manifest import ManifestError, parse_manifest, resolve

TWIN = {
    "device_id": "cam-1",
    "tags": {"site": "plant-7", "ring": "canary", "floor": 3},
    "capabilities": {"gpu": False},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", True),
        ("tags.site = 'plant-7'", True),
        ("tags.site = 'plant-7' AND tags.ring IN ('canary','ga')", True),
        ("tags.site = 'plant-8' OR deviceId = 'cam-1'", True),
        ("NOT tags.ring = 'ga'", True),
        ("tags.ring NOT IN ('ga')", True),
        ("tags.missing = 'x'", False),
        ("tags.missing != 'x'", True),
        ("tags.floor = 3 and capabilities.gpu = false", True),
        ("(tags.site = 'plant-7' OR tags.site = 'plant-8') AND NOT (tags.ring = 'canary')", False),
        ("tags.site = 'it''s'", False),
    ],
)
def test_conditions(text: str, expected: bool) -> None:
    assert parse(text).matches(TWIN) is expected


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("tags.site = 'a' AND", 19, "expected a field"),
        ("tags.site == 'a'", 11, "expected a value"),
        ("tags.site = 'a' AN tags.x = 'b'", 16, "expected AND, OR or the end"),
        ("color = 'red'", 0, "unknown field 'color'"),
        ("tags.ring IN ('a',)", 18, "expected a value"),
        ("tags.site = 'open", 12, "unexpected character"),
        ("", 0, "empty"),
    ],
)
def test_condition_errors_point_at_the_position(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as e:
        parse(text)
    assert e.value.position == position, str(e.value)
    assert fragment in str(e.value)


def _dep(name: str, priority: int, condition: str, models: list[str], layered: bool = False) -> bytes:
    return json.dumps(
        {
            "name": name,
            "generation": "g",
            "priority": priority,
            "layered": layered,
            "target_condition": condition,
            "models": [
                {
                    "name": m,
                    "version": 1,
                    "sha256": "a" * 64,
                    "files": [{"path": "m.onnx", "url": "file:///x", "sha256": "b" * 64, "size": 1}],
                }
                for m in models
            ],
        }
    ).encode()


def test_priority_and_layering() -> None:
    deps = [
        parse_manifest(_dep("base", 1, "*", ["mlp"])),
        parse_manifest(_dep("canary", 5, "tags.ring = 'canary'", ["mlp", "tok"])),
        parse_manifest(_dep("extra", 3, "tags.site = 'plant-7'", ["extra", "mlp"], layered=True)),
        parse_manifest(_dep("elsewhere", 9, "tags.site = 'plant-9'", ["mlp"])),
    ]
    res = resolve(deps, TWIN)
    assert [d.name for d in res.applied] == ["canary", "extra"]
    assert [d.name for d in res.superseded] == ["base"]
    # canary (5) beats the layered extra (3) on the shared model name; extra adds its own.
    assert {k: v[1] for k, v in res.models.items()} == {"mlp": "canary", "tok": "canary", "extra": "extra"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"name": "x"}',
        _dep("bad name!", 1, "*", ["m"]),
        _dep("x", 1, "tags.a = ", ["m"]),
        b"{" + b" " * (300 * 1024) + b"}",
    ],
)
def test_malformed_manifests_are_rejected(payload: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(payload)
