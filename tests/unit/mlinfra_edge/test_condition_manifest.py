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


def _manifest(**model: object) -> bytes:
    base = {
        "name": "m",
        "version": 1,
        "sha256": "a" * 64,
        "files": [{"path": "m.onnx", "url": "file:///x", "sha256": "b" * 64, "size": 1}],
    }
    return json.dumps(
        {
            "name": "d",
            "generation": "g",
            "priority": 1,
            "target_condition": "*",
            "models": [{**base, **model}],
        }
    ).encode()


_F = {"url": "file:///x", "sha256": "b" * 64, "size": 1}


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"name": "../../etc"}, "is not a valid model name"),
        ({"name": "a/b"}, "is not a valid model name"),
        ({"sha256": "../../../x"}, "is not 64 lowercase hex digits"),
        ({"sha256": "A" * 64}, "is not 64 lowercase hex digits"),
        ({"version": 0}, "must be a positive integer"),
        ({"version": True}, "'version' is missing or not a int"),
        ({"is_dir": "yes"}, "is_dir must be true or false"),
        ({"files": []}, "0 files listed"),
        ({"files": [{**_F, "path": "a/b"}]}, "escapes or is not normalized"),  # a single file has no folders
        ({"is_dir": True, "files": [{**_F, "path": "a/../../b"}]}, "escapes or is not normalized"),
        ({"is_dir": True, "files": [{**_F, "path": "a\\..\\b"}]}, "escapes or is not normalized"),
        ({"is_dir": True, "files": [{**_F, "path": "./a"}]}, "escapes or is not normalized"),
        ({"is_dir": True, "files": [{**_F, "path": "x"}, {**_F, "path": "x"}]}, "listed twice"),
        ({"files": [{**_F, "path": "m.onnx", "size": -5}]}, "size (bytes)"),
        ({"files": [{**_F, "path": "m.onnx", "url": "ftp://x/y"}]}, "https, http or file"),
    ],
)
def test_model_names_sha256_and_paths_are_checked_before_they_touch_a_path(
    model: dict, fragment: str
) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(_manifest(**model))
    assert fragment in str(e.value)


def test_a_deeply_nested_condition_is_refused_not_a_recursion_error() -> None:
    from mlinfra_edge.condition import MAX_DEPTH

    assert parse("(" * MAX_DEPTH + "tags.a = 'x'" + ")" * MAX_DEPTH).matches({"tags": {"a": "x"}})
    for deep in ("(" * 2000 + "*" + ")" * 2000, "NOT " * 1000 + "*", "(" * 2000):
        with pytest.raises(ConditionError, match="nests deeper than"):
            parse(deep)


def test_no_message_can_kill_the_agents_network_thread(tmp_path, monkeypatch) -> None:
    """Whatever a retained message holds, the callback paho runs it on returns normally (an exception there would
    end the device's MQTT loop for good)."""
    from types import SimpleNamespace

    from mlinfra_edge import agent as agent_mod
    from mlinfra_edge.agent import AgentConfig, EdgeAgent

    events: list[tuple[str, dict]] = []
    a = EdgeAgent(
        AgentConfig("dev-1", "mqtt://127.0.0.1:1", "pw", state_dir=tmp_path),
        lambda k, d: events.append((k, d)),
    )

    def boom(_payload: bytes) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    for payload in (b"{" * 100_000, b"\xff\xfe", _manifest(name="../x")):
        a._on_message(None, None, SimpleNamespace(topic="mlinfra/edge/deployments/d", payload=payload))  # type: ignore[arg-type]
    monkeypatch.setattr(agent_mod, "parse_manifest", boom)
    a._on_message(None, None, SimpleNamespace(topic="mlinfra/edge/deployments/d", payload=_manifest()))  # type: ignore[arg-type]
    assert [k for k, _d in events] == ["malformed"] * 4, events
    assert "RecursionError" in events[-1][1]["error"] and a.deployments == {}
