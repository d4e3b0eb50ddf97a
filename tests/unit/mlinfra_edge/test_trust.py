"""An agent with a trust folder swaps in only verified models — fresh downloads and copies cached from before the
device trusted keys alike; a folder model's download marker is not mistaken for an unsigned file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from mlinfra.registry.signing import key_id, sign_version, signatures
from mlinfra_edge.agent import AgentConfig, EdgeAgent
from mlinfra_edge.manifest import parse_manifest
from mlinfra_scoring.provenance import ProvenanceError
from tests.signing_helpers import ec_keypair


def _artifact(reg: ModelRegistry, root: Path, name: str, signed: bool) -> object:
    mv = reg.resolve(f"{name}:1")
    files = [
        {"path": f["path"], "sha256": f["sha256"], "size": f["size"],
         "url": f"file://{root / 'blobs' / 'sha256' / f['sha256']}"}
        for f in mv.files
    ]  # fmt: skip
    model = {"name": name, "version": 1, "sha256": mv.sha256, "files": files, "is_dir": mv.is_dir}
    if signed:
        model["signatures"] = {k: b.decode() for k, b in signatures(reg, name, 1).items()}
    doc = {"name": "d", "generation": "g1", "priority": 1, "target_condition": "*", "models": [model]}
    return parse_manifest(json.dumps(doc).encode()).models[0]


def _agent(state: Path, trusted: list[str] | None) -> EdgeAgent:
    trust = None
    if trusted is not None:
        trust = state.parent / f"trust-{len(trusted)}-{key_id(trusted[0])[:8]}"
        (trust / "keys").mkdir(parents=True, exist_ok=True)
        for i, pem in enumerate(trusted):
            (trust / "keys" / f"{i}.pem").write_text(pem)
    return EdgeAgent(AgentConfig("dev-1", "mqtt://127.0.0.1:1", "pw", state_dir=state, trust=trust))


def test_fresh_and_cached_models_are_verified(tmp_path: Path) -> None:
    private, public = ec_keypair()
    _, stranger = ec_keypair()
    root = tmp_path / "registry"
    reg = ModelRegistry(f"file://{root}")
    folder = tmp_path / "fraud"
    (folder / "conf").mkdir(parents=True)
    write_mlp(folder / "model.onnx")
    (folder / "conf" / "labels.txt").write_text("ok\nfraud\n")
    reg.register("fraud", folder)
    sign_version(reg, "fraud", 1, private)
    state = tmp_path / "state"

    with pytest.raises(ProvenanceError, match="model fraud:1 is not signed"):
        _agent(state, [public])._fetch(_artifact(reg, root, "fraud", signed=False))
    assert not (state / "models" / "fraud").exists() or not any((state / "models" / "fraud").iterdir())

    path = _agent(state, [public])._fetch(_artifact(reg, root, "fraud", signed=True))
    assert (path / ".complete").exists() and (path / "conf" / "labels.txt").exists()
    assert _agent(state, [public])._fetch(_artifact(reg, root, "fraud", signed=True)) == path, (
        "cached, verified"
    )
    with pytest.raises(
        ProvenanceError, match="not trusted"
    ):  # the cached copy is checked against today's trust
        _agent(state, [stranger])._fetch(_artifact(reg, root, "fraud", signed=True))
    (path / "conf" / "labels.txt").write_text("tampered\n")
    with pytest.raises(ProvenanceError, match=r"changed: conf/labels\.txt"):
        _agent(state, [public])._fetch(_artifact(reg, root, "fraud", signed=True))
    assert _agent(state, None)._fetch(_artifact(reg, root, "fraud", signed=False)) == path, (
        "no trust: no check"
    )


def test_last_good_models_are_verified_before_they_serve_again(tmp_path: Path) -> None:
    """At start, a device with a trust folder serves only the last good models that still verify."""
    private, public = ec_keypair()
    root = tmp_path / "registry"
    reg = ModelRegistry(f"file://{root}")
    reg.register("mlp", write_mlp(tmp_path / "mlp.onnx"))
    sign_version(reg, "mlp", 1, private)
    state = tmp_path / "state"
    agent = _agent(state, None)
    art = _artifact(reg, root, "mlp", signed=True)
    path = agent._fetch(art)
    agent.current["mlp"] = art
    agent._save_state()

    class Server:
        def __init__(self) -> None:
            self.served: list[str] = []

        def swap_model(self, name: str, version: str, path: str) -> None:
            self.served.append(name)

    trusting = _agent(state, [public])
    trusting.server = Server()
    trusting._serve_last_good()
    assert trusting.server.served == ["mlp"] and "mlp" in trusting.current
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # the disk changed since
    again = _agent(state, [public])
    again.server = Server()
    again._serve_last_good()
    assert again.server.served == [] and again.current == {}, "a model that no longer verifies is not served"
