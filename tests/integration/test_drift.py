"""Drift (issue 24) on the real engine: change the world behind Pulumi's back, `pulumi refresh` reports it, `pulumi
up` brings it back as declared, a second `up` changes nothing."""

from __future__ import annotations

import contextlib
import json
import subprocess

import pytest

from mlinfra.automation import local_stack
from mlinfra.endpoints.local import find_containers, router_name
from mlinfra.images.builder import ImageSpec, ModelInput, build_and_push
from mlinfra.lab import services
from mlinfra.lab.samples import scoring_image, write_mlp
from mlinfra.registry import ModelRegistry
from tests.endpoint_helpers import score

pytestmark = pytest.mark.integration


def _quiet(_line: str) -> None:
    pass


def _changes(summary: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in summary.items() if k != "same" and v}


def _replicas(endpoint: str) -> list[dict]:
    return [c for c in find_containers(endpoint) if c["labels"].get("mlinfra.io/role") != "router"]


def _status(uri: str, key: str) -> int | None:
    try:
        return score(uri, key)[0]
    except OSError:  # nothing listens: the router is gone
        return None


def test_endpoint_replica_and_router_removed_by_hand_are_reported_and_repaired(
    local_services, program, backend, tmp_path
) -> None:
    local_services("docker", "registry", "python-base", "router-base")
    reg_uri = f"file://{tmp_path / 'registry'}"
    image = scoring_image(reg_uri, "127.0.0.1:5000/mlinfra-test/drift", write_mlp(tmp_path / "mlp.onnx"))
    st = local_stack(
        program("cloud-endpoint"),
        "drift",
        backend,
        {"deployments": json.dumps({"blue": {"image": image, "replicas": 2}})},
    )
    ep = "scoring-drift"
    try:
        out = {k: v.value for k, v in st.up(on_output=_quiet).outputs.items()}
        uri, key = out["scoring_uri"], out["primary_key"]
        assert _status(uri, key) == 200
        before = sorted(c["name"] for c in _replicas(ep))
        assert len(before) == 2

        # A refresh of a healthy endpoint finds nothing.
        assert _changes(st.refresh(on_output=_quiet).summary.resource_changes) == {}

        # --- a crash removes one replica: the other still serves; refresh names what is missing ---------------
        subprocess.run(["docker", "rm", "-f", before[0]], check=True, capture_output=True)
        assert _status(uri, key) == 200, "the router sends to the replica that still runs"
        refreshed = st.refresh(on_output=_quiet)
        assert _changes(refreshed.summary.resource_changes) == {"update": 1}, refreshed.stdout[-2000:]
        assert "drift: deployments.blue: 1 of 2 replicas running" in refreshed.stdout, refreshed.stdout[
            -2000:
        ]

        # --- and the router goes too: the endpoint answers nothing ---------------------------------------------
        subprocess.run(["docker", "rm", "-f", router_name(ep)], check=True, capture_output=True)
        assert _status(uri, key) is None
        refreshed = st.refresh(on_output=_quiet)
        assert "drift: deployments.blue: 1 of 2 replicas running; router: missing" in refreshed.stdout, (
            refreshed.stdout[-2000:]
        )

        # preview shows the repair (observed → declared); up performs it on the same address
        pv = st.preview(diff=True, on_output=_quiet)
        assert _changes(pv.change_summary) == {"update": 1}, pv.stdout[-2000:]
        assert "2 of 2 replicas running" in pv.stdout, pv.stdout[-2000:]
        res = st.up(on_output=_quiet)
        assert _changes(res.summary.resource_changes) == {"update": 1}
        assert res.outputs["scoring_uri"].value == uri
        assert _status(uri, key) == 200
        after = sorted(c["name"] for c in _replicas(ep))
        assert after == before, "the lost replica comes back under its own name and port; the survivor stays"
        assert all(c["state"] == "running" for c in find_containers(ep))

        # --- converged: nothing left to do -------------------------------------------------------------------
        assert _changes(st.up(on_output=_quiet).summary.resource_changes) == {}
        assert _changes(st.refresh(on_output=_quiet).summary.resource_changes) == {}
    finally:
        st.destroy(on_output=_quiet)
    assert find_containers(ep) == []


def _mlinfra(*args: str) -> subprocess.CompletedProcess[str]:
    import sys
    from pathlib import Path

    cli = Path(sys.executable).with_name("mlinfra")  # the installed console script, as a user runs it
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=120)


def test_model_bytes_image_manifest_and_alias_changed_by_hand_are_reported_and_repaired(
    local_services, program, backend, tmp_path
) -> None:
    """A version's blob deleted from the registry, the image's manifest deleted from the OCI registry and an alias
    moved with the CLI: refresh reports all three, up restores the same bytes, pushes the same digest and moves the
    alias back; without the original file the repair refuses, naming the file and what to do."""
    from mlinfra.images.oci import RegistryClient

    local_services("docker", "registry", "python-base")
    reg_root = tmp_path / "registry"
    reg_uri = f"file://{reg_root}"
    model_path = write_mlp(tmp_path / "mlp.onnx")
    ModelRegistry(reg_uri).register(
        "mlp", write_mlp(tmp_path / "other.onnx", seed=7)
    )  # version 1: another model
    st = local_stack(
        program("scoring-image"),
        "drift-img",
        backend,
        {"path": str(model_path), "registry": reg_uri, "repository": "127.0.0.1:5000/mlinfra-test/drift-img"},
    )
    models = local_stack(
        program("registered-model"),
        "drift-alias",
        backend,
        {"path": str(model_path), "registry": reg_uri, "alias_version": "2"},
    )
    try:
        out = {k: v.value for k, v in st.up(on_output=_quiet).outputs.items()}
        assert out["model_version"] == 2
        image_ref = out["image_ref"]
        assert "create" in models.up(on_output=_quiet).summary.resource_changes
        assert ModelRegistry(reg_uri).get_alias("mlp", "champion") == 2

        # --- behind Pulumi's back ------------------------------------------------------------------------------
        sha = ModelRegistry(reg_uri).get("mlp", 2).files[0]["sha256"]
        blob = reg_root / "blobs" / "sha256" / sha
        size = blob.stat().st_size
        blob.unlink()
        _host, rest = image_ref.split("/", 1)
        repo, digest = rest.split("@")
        client = RegistryClient("http://127.0.0.1:5000")
        status, _, body = client.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        assert status == 202, (status, body)
        assert client.get_manifest(repo, digest) is None
        moved = _mlinfra("models", "alias", "mlp", "champion", "1", "--registry", reg_uri)
        assert moved.returncode == 0, moved.stderr
        assert ModelRegistry(reg_uri).get_alias("mlp", "champion") == 1

        # --- refresh reports each ------------------------------------------------------------------------------
        r = st.refresh(on_output=_quiet)
        assert _changes(r.summary.resource_changes) == {"update": 2}, r.stdout[-2000:]
        assert f"mlp:2: drift: file {model_path.name} missing" in r.stdout, r.stdout[-2000:]
        assert f"{image_ref}: drift: manifest missing" in r.stdout, r.stdout[-2000:]
        r = models.refresh(on_output=_quiet)
        assert "mlp@champion: drift: points at 1, declared 2" in r.stdout, r.stdout[-2000:]
        # (the RegisteredModel of the alias stack is the same version: its refresh reports the blob too)

        # --- up repairs: the same bytes, the same digest, the alias back ---------------------------------------
        res = st.up(on_output=_quiet)
        assert _changes(res.summary.resource_changes) == {"update": 2}, res.stdout[-2000:]
        assert res.outputs["image_ref"].value == image_ref, "the repaired image is the very same digest"
        assert blob.stat().st_size == size and ModelRegistry(reg_uri).check_version("mlp", 2) == "present"
        assert client.get_manifest(repo, digest) is not None
        models.up(on_output=_quiet)
        assert ModelRegistry(reg_uri).get_alias("mlp", "champion") == 2
        for s in (st, models):
            assert _changes(s.up(on_output=_quiet).summary.resource_changes) == {}
            assert _changes(s.refresh(on_output=_quiet).summary.resource_changes) == {}

        # --- bytes gone from storage and from the user's disk: refused, never a different artifact -------------
        blob.unlink()
        model_path.unlink()
        st.refresh(on_output=_quiet)
        with pytest.raises(Exception) as e:
            st.up(on_output=_quiet)
        assert f"model path '{model_path}' does not exist" in str(e.value), str(e.value)[-1500:]
        assert ModelRegistry(reg_uri).check_version("mlp", 2) == f"file {model_path.name} missing"
    finally:
        models.destroy(on_output=_quiet)
        st.destroy(on_output=_quiet)


def test_collection_container_deleted_and_sas_expired_are_reported_and_repaired(
    local_services, program, backend, monkeypatch
) -> None:
    """The collection container deleted by hand and the servers' SAS past its expiry: refresh reports both (the
    container checked with $MLINFRA_COLLECT_CREDENTIAL — the state holds no key), up creates the container again
    and issues a new SAS, a second up changes nothing."""
    import os
    import time

    from azure.storage.blob import BlobServiceClient
    from pulumi import automation as auto

    local_services("azurite")
    container = f"drift-{os.getpid()}"
    storage = f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}"
    monkeypatch.setenv(
        "MLINFRA_COLLECT_CREDENTIAL", services.AZURITE_KEY
    )  # the engine's providers inherit it
    st = local_stack(
        program("collection-storage"),
        "drift-dc",
        backend,
        {
            "storage": storage,
            "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
            "sas_ttl_hours": str(4 / 3600),  # 4 s: expired by the time of the refresh
        },
    )
    svc = BlobServiceClient(
        services.azurite_blob_url(),
        credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
    )
    try:
        out = {k: v.value for k, v in st.up(on_output=_quiet).outputs.items()}
        assert svc.get_container_client(container).exists()
        first_expiry, first_sas = out["sas_expires"], out["sas"]
        svc.delete_container(container)
        time.sleep(5)
        r = st.refresh(on_output=_quiet)
        assert _changes(r.summary.resource_changes) == {"update": 1}, r.stdout[-1500:]
        assert "drift: container: missing; sas: expired at " + first_expiry in r.stdout, r.stdout[-1500:]
        assert services.AZURITE_KEY not in r.stdout
        res = st.up(on_output=_quiet)  # the same inputs: only the drift makes this an update
        assert _changes(res.summary.resource_changes) == {"update": 1}, res.stdout[-1500:]
        assert svc.get_container_client(container).exists()
        assert res.outputs["sas_expires"].value > first_expiry and res.outputs["sas"].value != first_sas
        assert _changes(st.up(on_output=_quiet).summary.resource_changes) == {}
    finally:
        st.destroy(on_output=_quiet)
        with contextlib.suppress(Exception):
            svc.delete_container(container)


def test_import_an_existing_model_version_and_image(local_services, program, backend, tmp_path) -> None:
    """A version registered and an image built outside any stack are adopted (import_version, import_digest):
    nothing uploaded, registered or built; the next up is no change; a wrong import fails naming what differs."""
    from pulumi import automation as auto

    local_services("docker", "registry", "python-base")
    reg_uri = f"file://{tmp_path / 'registry'}"
    path = write_mlp(tmp_path / "mlp.onnx")
    mv, _ = ModelRegistry(reg_uri).register("mlp", path)
    repository = "127.0.0.1:5000/mlinfra-test/imported"
    built = build_and_push(
        ImageSpec(
            repository=repository,
            models=[ModelInput("mlp", mv.version, mv.sha256, reg_uri)],
            base=services.base_image_ref(),
        )
    )
    config = {
        "path": str(path),
        "registry": reg_uri,
        "repository": repository,
        "import_version": "1",
        "import_digest": built.digest,
    }
    folder = program("scoring-image")
    st = local_stack(folder, "imported", backend, config)
    try:
        res = st.up(on_output=_quiet)
        assert res.outputs["image_ref"].value == built.image_ref and res.outputs["model_version"].value == 1
        assert (
            "imported mlp:1 (nothing uploaded)" in res.stdout and f"imported {built.image_ref}" in res.stdout
        )
        assert ModelRegistry(reg_uri).versions("mlp") == [1]
        assert f"image:{built.image_ref}" in ModelRegistry(reg_uri).users("mlp", 1)
        assert _changes(st.up(on_output=_quiet).summary.resource_changes) == {}
        assert _changes(st.refresh(on_output=_quiet).summary.resource_changes) == {}
    finally:
        st.destroy(on_output=_quiet)

    # The wrong version: refused, nothing registered.
    other = local_stack(folder, "wrong", backend, {**config, "import_version": "2"})
    with pytest.raises(auto.CommandError) as e:
        other.up(on_output=_quiet)
    assert "cannot import mlp:2" in str(e.value) and "has no such version (has: [1])" in str(e.value)
    assert ModelRegistry(reg_uri).versions("mlp") == [1]
    other.destroy(on_output=_quiet)
