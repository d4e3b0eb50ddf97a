"""RegisteredModel on the real engine against both registry backends (local folder, Azurite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.lab import services
from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(params=["file", "azblob"])
def registry(request, tmp_path: Path, local_services) -> tuple[str, str | None]:
    """(registry URI, credential) for each backend; a fresh container per test on Azurite."""
    if request.param == "file":
        return f"file://{tmp_path / 'registry'}", None
    local_services("azurite")
    container = f"reg{os.getpid()}{int(time.time() * 1000) % 10**9}"
    uri = f"azblob://{services.AZURITE_ACCOUNT}/{container}/models?endpoint={services.azurite_blob_url()}"
    return uri, services.AZURITE_KEY


def _stack(program_dir: Path, backend: Path, registry: tuple[str, str | None], model: Path, **config: str):
    uri, cred = registry
    cfg: dict = {"path": str(model), "registry": uri, **config}
    if cred:
        cfg["credential"] = auto.ConfigValue(value=cred, secret=True)
    return local_stack(program_dir, "test", backend_dir=backend, config=cfg)


def _verify_cli(registry: tuple[str, str | None], trusted: Path) -> tuple[int, dict]:
    """`mlinfra models verify mlp:1 --public-key TRUSTED --json`: (exit code, answer)."""
    uri, cred = registry
    res = subprocess.run(
        [sys.executable, "-m", "mlinfra.cli", "models", "verify", "mlp:1", "--public-key", str(trusted),
         "--registry", uri, "--json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **({"MLINFRA_REGISTRY_CREDENTIAL": cred} if cred else {})},
    )  # fmt: skip
    return res.returncode, json.loads(res.stdout or "{}")


def test_lifecycle_on_the_real_engine(tmp_path: Path, backend: Path, registry, program) -> None:
    model = write_mlp(tmp_path / "model.onnx")
    stack = _stack(program("registered-model"), backend, registry, model, tags=json.dumps({"stage": "dev"}))

    up = stack.up()
    assert up.outputs["version"].value == 1 and isinstance(up.outputs["version"].value, int)
    assert up.outputs["signature"].value["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [-1, 64],
    }
    sha1 = up.outputs["sha256"].value

    again = stack.up()
    assert again.summary.resource_changes == {"same": 3}, "unchanged content must be no change"
    assert stack.preview().change_summary == {"same": 3}

    # Changed content: version 2, version 1 still downloadable.
    write_mlp(model, seed=1)
    changed = stack.up()
    assert (
        changed.summary.resource_changes.get("update") == 2
    )  # the version, and the component's inputs (sha256)
    assert changed.outputs["version"].value == 2
    reg = ModelRegistry(*registry)
    v1 = reg.download("mlp:1", tmp_path / "v1.onnx")
    assert write_mlp(tmp_path / "again.onnx").read_bytes() == v1.read_bytes()
    assert reg.resolve("mlp:1").sha256 == sha1

    # Tags only: metadata in place, no new version.
    stack.set_config("tags", auto.ConfigValue(value=json.dumps({"stage": "prod"})))
    retag = stack.up()
    assert retag.summary.resource_changes.get("update") == 2  # metadata in place, and the component's inputs
    assert retag.outputs["version"].value == 2
    assert reg.versions("mlp") == [1, 2]
    assert reg.resolve("mlp:2").tags == {"stage": "prod"}

    # Alias: a one-line move.
    stack.set_config("alias_version", auto.ConfigValue(value="1"))
    stack.up()
    assert reg.resolve("mlp@champion").version == 1
    stack.set_config("alias_version", auto.ConfigValue(value="2"))
    moved = stack.up()
    assert moved.summary.resource_changes.get("update") == 1
    assert reg.resolve("mlp@champion").version == 2

    # Secrets never land in state in plain text (the state files on disk, not `export --show-secrets`).
    if registry[1]:
        state_files = list(backend.rglob("*.json"))
        assert state_files
        for f in state_files:
            assert registry[1] not in f.read_text(), f"credential in plain text in {f}"
            assert registry[1][:20] not in f.read_text()

    stack.destroy()
    assert reg.versions("mlp") == [1, 2], "destroy keeps registered versions"


def test_invalid_model_fails_preview_and_writes_nothing(tmp_path: Path, backend: Path, program) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    reg_dir = tmp_path / "registry"
    stack = _stack(program("registered-model"), backend, (f"file://{reg_dir}", None), bad)
    with pytest.raises(auto.CommandError) as e:
        stack.preview()
    assert "is not a valid ONNX model" in str(e.value)
    assert not reg_dir.exists() or not any(reg_dir.rglob("*.json"))


def _register_cli(
    uri: str, cred: str | None, name: str, path: Path, framework: str = "onnx", **kw
) -> subprocess.Popen:
    env = {**os.environ, "MLINFRA_REGISTRY_CREDENTIAL": cred or ""}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlinfra.cli",
            "models",
            "register",
            name,
            str(path),
            "--registry",
            uri,
            "--json",
            "--framework",
            framework,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_eight_concurrent_writers_get_versions_one_to_eight(tmp_path: Path, registry) -> None:
    uri, cred = registry
    paths = [write_mlp(tmp_path / f"m{i}.onnx", seed=100 + i) for i in range(8)]
    procs = [_register_cli(uri, cred, "race", p) for p in paths]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["version"] for r in results) == list(range(1, 9))
    reg = ModelRegistry(uri, cred)
    assert reg.versions("race") == list(range(1, 9))
    for r, path in zip(results, paths, strict=True):
        got = reg.download(f"race:{r['version']}", tmp_path / f"dl{r['version']}.onnx")
        assert got.read_bytes() == path.read_bytes(), f"version {r['version']} holds another writer's content"


def test_killed_upload_leaves_no_version_and_a_rerun_completes(tmp_path: Path, registry) -> None:
    uri, cred = registry
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # 400 MiB of non-repeating bytes
        for i in range(100):
            f.write(os.urandom(1 << 20) * 4 if i % 2 else os.urandom(4 << 20))
    proc = _register_cli(uri, cred, "big", big, framework="custom", start_new_session=True)
    assert proc.stderr is not None
    # Wait until the upload is under way (progress lines are printed every 10 %), then SIGKILL.
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if line.startswith("uploading") and (" 10%" in line or " 20%" in line):
            break
        if proc.poll() is not None:
            break
    assert proc.poll() is None, f"registration finished before it could be killed: {seen}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reg = ModelRegistry(uri, cred)
    assert reg.versions("big") == [], "a killed upload must leave no version"
    rerun = _register_cli(uri, cred, "big", big, framework="custom")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads(out)["version"] == 1
    assert reg.versions("big") == [1]


def test_delete_versions_on_destroy_keeps_versions_in_use(tmp_path: Path, backend: Path, program) -> None:
    model = write_mlp(tmp_path / "model.onnx")
    reg_uri = f"file://{tmp_path / 'registry'}"
    stack = _stack(program("registered-model"), backend, (reg_uri, None), model, delete_on_destroy="true")
    stack.up()
    write_mlp(model, seed=4)
    stack.up()
    reg = ModelRegistry(reg_uri)
    assert reg.versions("mlp") == [1, 2]
    reg.add_user("mlp", 1, "endpoint:prod/churn")
    stack.destroy()
    assert reg.versions("mlp") == [1], "unused versions are deleted, versions in use are kept"


def test_wrong_key_and_unreachable_registry_name_the_registry_not_the_key(
    tmp_path: Path, local_services
) -> None:
    local_services("azurite")
    model = write_mlp(tmp_path / "m.onnx")
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    uri = f"azblob://{services.AZURITE_ACCOUNT}/wrongkey/models?endpoint={services.azurite_blob_url()}"
    proc = _register_cli(uri, wrong, "m", model)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"registry {uri} refused the credential" in err
    assert wrong not in err and wrong not in out
    down = "azblob://devstoreaccount1/models?endpoint=http://127.0.0.1:9/devstoreaccount1"
    proc = _register_cli(down, services.AZURITE_KEY, "m", model)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is unreachable at http://127.0.0.1:9" in err
    assert services.AZURITE_KEY not in err


def _ec_keypair(d: Path, name: str) -> tuple[str, Path]:
    from tests.signing_helpers import ec_keypair

    private, public = ec_keypair()
    (d / f"{name}.pub.pem").write_text(public)
    return private, d / f"{name}.pub.pem"


def test_a_version_is_signed_at_up_and_a_new_signer_adds_a_signature(
    tmp_path: Path, backend: Path, registry, program
) -> None:
    """signing_key (a secret) signs the version at `up`; `mlinfra models verify` accepts it with the public key and
    refuses another key; a second up changes nothing; a new key adds its signature without a new version; a
    tampered blob is refused; the key never reaches the state in plain text."""
    from mlinfra.registry.signing import key_id
    from tests.state_helpers import plaintext_secrets

    key_a, pub_a = _ec_keypair(tmp_path, "a")
    key_b, pub_b = _ec_keypair(tmp_path, "b")
    model = write_mlp(tmp_path / "mlp.onnx")
    stack = _stack(
        program("registered-model"), backend, registry, model,
        signing_key=auto.ConfigValue(value=key_a, secret=True),
    )  # fmt: skip
    up = stack.up()
    assert up.outputs["signed_by"].value == [key_id(pub_a.read_text())]
    uri, cred = registry

    def verify(public: Path) -> tuple[int, dict]:
        return _verify_cli(registry, public)

    assert verify(pub_a) == (0, verify(pub_a)[1]) and verify(pub_a)[1]["ok"]
    rc, out = verify(pub_b)
    assert rc == 1 and "no signature by key" in out["reason"], out
    assert plaintext_secrets(backend, key_a.strip().splitlines()[1]) == [], "the signing key is a secret"
    assert stack.up().summary.resource_changes == {"same": 4}

    stack.set_config("signing_key", auto.ConfigValue(value=key_b, secret=True))
    up = stack.up()
    # The component (its signers, what policies read) and the signature change; the version does not.
    assert up.summary.resource_changes == {"same": 2, "update": 2}
    assert up.outputs["version"].value == 1, "signing never makes a new version"
    assert verify(pub_a)[0] == 0 and verify(pub_b)[0] == 0, "the first signer's signature stays"

    reg = ModelRegistry(uri, cred)
    blob = next(k for k in reg.store.list("blobs/"))
    data, _ = reg.store.get(blob)
    reg.store.put(blob, data[:-1] + bytes([data[-1] ^ 1]))
    rc, out = verify(pub_b)
    assert rc == 1 and "corrupt" in out["reason"], out
    stack.destroy()


def test_a_version_signed_with_a_certificate_verifies_with_the_root(
    tmp_path: Path, backend: Path, registry, program
) -> None:
    """signing_certificate_chain: the bundle carries the chain; `mlinfra models verify --public-key ROOT` accepts it
    and another root is refused; an expired certificate fails the `up` naming its dates and the fix."""
    from tests.signing_helpers import certificate_chain

    key, chain, root = certificate_chain()
    (tmp_path / "root.pem").write_text(root)
    _, _, other_root = certificate_chain()
    (tmp_path / "other-root.pem").write_text(other_root)
    stack = _stack(
        program("registered-model"), backend, registry, write_mlp(tmp_path / "mlp.onnx"),
        signing_key=auto.ConfigValue(value=key, secret=True), certificate_chain=chain,
    )  # fmt: skip
    stack.up()

    def verify(trusted: Path) -> tuple[int, dict]:
        return _verify_cli(registry, trusted)

    rc, out = verify(tmp_path / "root.pem")
    assert rc == 0 and out["ok"], out
    rc, out = verify(tmp_path / "other-root.pem")
    assert rc == 1 and "certificate signature failure" in out["reason"], out
    assert set(stack.up().summary.resource_changes) == {"same"}

    old_key, old_chain, _ = certificate_chain(days_valid=(-30, -1))
    stack.set_config("signing_key", auto.ConfigValue(value=old_key, secret=True))
    stack.set_config("certificate_chain", auto.ConfigValue(value=old_chain))
    with pytest.raises(
        auto.CommandError, match=r"CN=model signer is valid .* not now \(expired or not yet valid\): renew it"
    ):
        stack.up()
    stack.destroy()
