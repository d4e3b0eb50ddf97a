"""ScoringImage on the real engine with the local OCI registry and Docker engine."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.images.builder import ImageBuildError, ImageSpec, ModelInput, build_and_push, inspect_image
from mlinfra.lab import services
from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelError, ModelRegistry
from tests.scoring_helpers import free_port
from tests.state_helpers import plaintext_secrets

pytestmark = pytest.mark.integration
DOCKER = "/usr/bin/docker"


@pytest.fixture
def services_up(local_services) -> None:
    local_services("docker", "registry", "python-base", "buildkit")


def _infer(port: int, rows: np.ndarray) -> np.ndarray:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/mlp/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out = json.loads(r.read())["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def _run_and_score(image_ref: str, model_file: Path, grpc: bool = True) -> None:
    """Run IMAGE_REF read-only and unprivileged and score MODEL_FILE's rows over REST (and, for images mlinfra built,
    over gRPC through the image's native front end; GRPC False: a user's Dockerfile, which serves REST only)."""
    port, grpc_port = free_port(), free_port()
    cid = subprocess.run(
        [
            DOCKER,
            "run",
            "-d",
            "--rm",
            "-p",
            f"127.0.0.1:{port}:8080",
            "-p",
            f"127.0.0.1:{grpc_port}:8081",
            "--read-only",
            "--cap-drop",
            "ALL",
            image_ref,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            logs = subprocess.run([DOCKER, "logs", cid], capture_output=True, text=True).stdout
            pytest.fail(f"container never became ready: {logs[-2000:]}")
        rows = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
        want = ort.InferenceSession(str(model_file)).run(None, {"input": rows})[0]
        np.testing.assert_allclose(_infer(port, rows), want, rtol=1e-5)
        user = subprocess.run(
            [DOCKER, "exec", cid, "id", "-u"], capture_output=True, text=True
        ).stdout.strip()
        assert user == "10001", "the scoring server must run as non-root"
        if not grpc:
            return
        # gRPC is served by the native front end the image carries (mlinfra-grpcfront), read-only and unprivileged.
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        x = triton.InferInput("input", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        np.testing.assert_allclose(client.infer("mlp", [x]).as_numpy("probabilities"), want, rtol=1e-5)
        client.close()
        logs = subprocess.run([DOCKER, "logs", cid], capture_output=True, text=True).stdout
        assert (
            '"event": "grpc_frontend_listening"' in logs and '"grpc_frontend": "/opt/mlinfra/bin/' in logs
        ), logs
    finally:
        subprocess.run([DOCKER, "rm", "-f", cid], capture_output=True)


def test_build_run_score_and_reproduce(tmp_path: Path, backend: Path, program, services_up) -> None:
    model_file = write_mlp(tmp_path / "model.onnx")
    repo = f"{services.registry_host()}/test/scorer-{uuid.uuid4().hex[:8]}"
    reg_uri = f"file://{tmp_path / 'registry'}"
    cfg = {"path": str(model_file), "registry": reg_uri, "repository": repo}
    stack = local_stack(program("scoring-image"), "img", backend_dir=backend, config=cfg)

    up = stack.up()
    ref, digest = up.outputs["image_ref"].value, up.outputs["digest"].value
    assert ref == f"{repo}@{digest}" and digest.startswith("sha256:")
    labels = up.outputs["labels"].value
    assert labels["mlinfra.model.0.name"] == "mlp" and labels["mlinfra.model.0.version"] == "1"
    assert up.outputs["models"].value == [
        {"name": "mlp", "version": 1, "sha256": ModelRegistry(reg_uri).resolve("mlp:1").sha256}
    ]
    _run_and_score(ref, model_file)

    again = stack.up()
    assert again.summary.resource_changes == {"same": 5}
    assert again.outputs["digest"].value == digest

    # In use: the registry refuses to delete the version the image holds.
    with pytest.raises(ModelError, match=f"in use by image:{repo}@{digest}"):
        ModelRegistry(reg_uri).delete_version("mlp", 1)

    # Nothing of this machine's paths (interpreter, checkout) is baked into the layers mlinfra built.
    import gzip
    import sys

    from mlinfra.images.oci import RegistryClient

    host, rest = ref.split("/", 1)
    client = RegistryClient(f"http://{host}")
    for digest_ in _layers(ref)[-3:]:  # dependencies, app, model
        content = gzip.decompress(client.get_blob(rest.split("@")[0], digest_))
        for local in (sys.prefix, str(Path(__file__).parents[2])):
            assert local.encode() not in content, f"layer {digest_[:19]} contains the local path {local}"

    # The same inputs from another working directory and a cold cache give the same digest.
    other = local_stack(
        _copy(program, tmp_path / "elsewhere"),
        "img2",
        backend_dir=tmp_path / "state2",
        config=cfg,
        env={"MLINFRA_CACHE": str(tmp_path / "cold-cache")},
    )
    assert other.up().outputs["digest"].value == digest
    other.destroy()

    # A model-only change changes only the model layer.
    layers_before = _layers(ref)
    write_mlp(model_file, seed=9)
    changed = stack.up()
    new_ref = changed.outputs["image_ref"].value
    assert changed.outputs["model_version"].value == 2
    assert new_ref != ref
    layers_after = _layers(new_ref)
    assert layers_after[:-1] == layers_before[:-1], "only the model layer may change"
    assert layers_after[-1] != layers_before[-1]
    _run_and_score(new_ref, model_file)

    stack.destroy()
    ModelRegistry(reg_uri).delete_version("mlp", 1)  # no longer in use


def _copy(program, dest: Path) -> Path:
    import shutil

    shutil.copytree(Path(__file__).parent / "programs" / "scoring-image", dest)
    return dest


def _layers(ref: str) -> list[str]:
    from mlinfra.images.oci import RegistryClient

    host, rest = ref.split("/", 1)
    repo, digest = rest.split("@")
    got = RegistryClient(f"http://{host}").get_manifest(repo, digest)
    assert got is not None
    return [layer["digest"] for layer in got[1]["layers"]]


def test_script_syntax_error_fails_preview_with_file_and_line(
    tmp_path: Path, backend: Path, program, services_up
) -> None:
    model_file = write_mlp(tmp_path / "model.onnx")
    script = tmp_path / "score.py"
    script.write_text("import json\n\ndef run(raw_data):\n    return json.loads(raw_data\n")
    stack = local_stack(
        program("scoring-image"),
        "bad",
        backend_dir=backend,
        config={
            "path": str(model_file),
            "registry": f"file://{tmp_path / 'registry'}",
            "repository": f"{services.registry_host()}/test/bad",
            "script": str(script),
        },
    )
    with pytest.raises(auto.CommandError) as e:
        stack.preview()
    assert f"{script}:4" in str(e.value) or f"{script}:5" in str(e.value)


def _spec(tmp_path: Path, **kw) -> ImageSpec:
    reg_uri = f"file://{tmp_path / 'registry'}"
    mv, _ = ModelRegistry(reg_uri).register("mlp", write_mlp(tmp_path / "m.onnx"))
    base = dict(
        repository=f"{services.registry_host()}/test/errors",
        base=services.base_image_ref(),
        models=[ModelInput("mlp", mv.version, mv.sha256, reg_uri)],
    )
    base.update(kw)
    return ImageSpec(**base)  # type: ignore[arg-type]


def test_bad_inputs_are_named(tmp_path: Path, services_up, monkeypatch) -> None:
    with pytest.raises(ImageBuildError, match="pip could not install") as e:
        build_and_push(_spec(tmp_path, requirements=["mlinfra-no-such-package-xyz==9.9"]))
    assert "mlinfra-no-such-package-xyz" in str(e.value)

    with pytest.raises(ImageBuildError, match="unreachable") as e:
        build_and_push(_spec(tmp_path, repository="127.0.0.1:1/test/down"))
    assert "127.0.0.1:1" in str(e.value)

    # A base image without python3.
    from mlinfra.images.layers import Entry, build_layer
    from mlinfra.images.oci import RegistryClient, image_config, push_image

    layer = build_layer([Entry("/etc/os-release", 5, b"none\n")], tmp_path / "nopy.tar.gz")
    client = RegistryClient(services.registry_url())
    push_image(client, "test/nopython", "v1", [layer.path], image_config([layer.diff_id]))
    with pytest.raises(ImageBuildError, match="has no python3"):
        build_and_push(_spec(tmp_path, base=f"{services.registry_host()}/test/nopython:v1"))

    # Stored model bytes that no longer match their sha256.
    spec = _spec(tmp_path, repository=f"{services.registry_host()}/test/corrupt")
    blob = tmp_path / "registry" / "blobs" / "sha256" / spec.models[0].sha256
    blob.write_bytes(blob.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    monkeypatch.setenv("MLINFRA_CACHE", str(tmp_path / "fresh-cache"))  # no cached model layer
    with pytest.raises(ImageBuildError, match="does not match its sha256"):
        build_and_push(spec)


def test_images_list_finds_images_by_model(tmp_path: Path, services_up) -> None:
    import sys

    spec = _spec(tmp_path, repository=f"{services.registry_host()}/test/listed-{uuid.uuid4().hex[:6]}")
    result = build_and_push(spec)
    out = subprocess.run(
        [sys.executable, "-m", "mlinfra.cli", "images", "list", "--model", "mlp", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {i["image_ref"]: i for i in json.loads(out)}
    assert result.image_ref in listed
    assert listed[result.image_ref]["models"][0]["name"] == "mlp"
    none = subprocess.run(
        [sys.executable, "-m", "mlinfra.cli", "images", "list", "--model", "no-such-model", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert result.image_ref not in {i["image_ref"] for i in json.loads(none)}


def test_users_own_dockerfile_is_built_by_docker_build(
    tmp_path: Path, backend: Path, program, services_up
) -> None:
    """`dockerfile=` is a pulumi_docker_build.Image child built by BuildKit (the local buildkitd) and pushed: the image
    runs and scores; a second `up` changes nothing; an edited Dockerfile rebuilds exactly the build and the image."""
    model_file = write_mlp(tmp_path / "model.onnx")
    repo = f"{services.registry_host()}/test/byo-{uuid.uuid4().hex[:8]}"
    project = program("dockerfile-image")
    stack = local_stack(
        project,
        "byo",
        backend_dir=backend,
        config={"path": str(model_file), "registry": f"file://{tmp_path / 'registry'}", "repository": repo},
    )
    up = stack.up()
    ref = up.outputs["image_ref"].value
    assert ref.startswith(f"{repo}@sha256:")
    resources = {r["urn"].rsplit("::", 1)[1]: r for r in stack.export_stack().deployment["resources"]}
    build = resources["byo-build"]
    assert build["type"] == "docker-build:index:Image", "the Dockerfile is built by a docker-build resource"
    assert build["parent"] == resources["byo"]["urn"], "as the ScoringImage's child"
    assert ref == f"{repo}@{build['outputs']['digest']}", (
        "the image the component outputs is the one it pushed"
    )
    _run_and_score(ref, model_file, grpc=False)
    assert stack.up().summary.resource_changes == {"same": 6}, "unchanged inputs must not rebuild"
    moved = tmp_path / "another-checkout"
    shutil.copytree(project, moved, ignore=shutil.ignore_patterns(".mlinfra"))
    elsewhere = local_stack(moved, "byo", backend_dir=backend).preview()
    assert elsewhere.change_summary == {"same": 6}, (
        "the same program in another folder stages a byte-identical context: no change"
    )

    dockerfile = project / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + 'LABEL org.opencontainers.image.title="byo, edited"\n')
    events: list = []
    preview = stack.preview(on_event=events.append)
    steps = {
        e.resource_pre_event.metadata.urn.rsplit("::", 1)[1]: str(e.resource_pre_event.metadata.op)
        for e in events
        if e.resource_pre_event is not None
    }
    assert preview.change_summary == {"same": 4, "update": 2}, preview.change_summary
    assert "update" in steps["byo-build"].lower() and "update" in steps["byo-image"].lower(), steps
    edited = stack.up().outputs["image_ref"].value
    assert edited != ref and edited.startswith(f"{repo}@sha256:"), "the edited Dockerfile is a new image"
    assert inspect_image(edited)["labels"]["org.opencontainers.image.title"] == "byo, edited"
    staged = project / ".mlinfra" / "contexts" / "byo" / "byo"
    assert (staged / "mlinfra" / "models" / "mlp" / "1").is_dir(), (
        "the verified model is staged in the context"
    )
    stack.destroy()
    assert stack.export_stack().deployment.get("resources") in (None, [])
    assert not staged.exists(), "destroy removes the staged build context"


@pytest.fixture
def login_registry(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A second local registry that wants a login (htpasswd, bcrypt): (host, username, password)."""
    import warnings

    with warnings.catch_warnings():  # bcrypt through libxcrypt; deprecated in 3.11 but present (the registry
        warnings.simplefilter("ignore", DeprecationWarning)  # takes only bcrypt)
        import crypt

    user, password = "pusher", f"pw-{uuid.uuid4().hex}"
    d = tmp_path / "login-registry"
    d.mkdir()
    (d / "htpasswd").write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    port = free_port()
    (d / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: mlinfra-test\n"
        f"    path: {d / 'htpasswd'}\n"
    )
    proc = subprocess.Popen(
        ["/usr/bin/docker-registry", "serve", str(d / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while services.port_is_bound(port) is False and time.monotonic() < deadline:
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", user, password
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_dockerfile_image_is_pushed_with_the_stacks_registry_login(
    tmp_path: Path, backend: Path, program, services_up, login_registry
) -> None:
    """`dockerfile=` pushes with registry_username/registry_password (they were ignored: Docker's own login was
    used): logged in through a private Docker configuration that the build deletes, the password on standard input
    only, nothing left in the user's Docker configuration, the password a secret in the state."""
    host, user, password = login_registry
    model_file = write_mlp(tmp_path / "model.onnx")
    repo = f"{host}/test/byo-login"
    stack = local_stack(
        program("dockerfile-image"),
        "byo-login",
        backend_dir=backend,
        config={"path": str(model_file), "registry": f"file://{tmp_path / 'registry'}", "repository": repo},
    )
    with pytest.raises(auto.CommandError) as e:
        stack.up()
    assert "registry_username and registry_password" in str(e.value), "an anonymous push names the fix"
    stack.set_config("registry_username", auto.ConfigValue(user))
    stack.set_config("registry_password", auto.ConfigValue(password, secret=True))
    ref = stack.up().outputs["image_ref"].value
    assert ref.startswith(f"{repo}@sha256:")
    digest = ref.split("@", 1)[1]
    url = f"http://{host}/v2/test/byo-login/manifests/{digest}"
    accept = (
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    )
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=5)
    assert denied.value.code == 401, "the registry really wants a login"
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(
        url, method="HEAD", headers={"Accept": accept, "Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200, "the pushed image is in the registry that wanted a login"
    mine = Path.home() / ".docker" / "config.json"
    assert not mine.exists() or host not in mine.read_text(), (
        "the login did not leak into Docker's configuration"
    )
    assert plaintext_secrets(backend, password) == [], "the password is a secret in the state"
    assert stack.up().summary.resource_changes == {"same": 6}
    stack.destroy()


def test_an_image_packages_only_models_signed_by_a_trusted_key(
    tmp_path: Path, backend: Path, program, services_up
) -> None:
    """trusted_keys: a model signed by another key is refused before anything is packaged (the error names the
    version, the signer and the reason); trusting the signer builds; the image runs and scores."""
    from mlinfra.registry.signing import key_id
    from tests.signing_helpers import ec_keypair

    (key_a, pub_a), (_key_b, pub_b) = ec_keypair(), ec_keypair()
    model_file = write_mlp(tmp_path / "model.onnx")
    repo = f"{services.registry_host()}/test/signed-{uuid.uuid4().hex[:8]}"
    cfg = {
        "path": str(model_file),
        "registry": f"file://{tmp_path / 'registry'}",
        "repository": repo,
        "signing_key": auto.ConfigValue(key_a, secret=True),
        "trusted_keys": json.dumps([pub_b]),
    }
    stack = local_stack(program("scoring-image"), "signed", backend_dir=backend, config=cfg)
    with pytest.raises(auto.CommandError) as refused:
        stack.up()
    msg = str(refused.value)
    assert "refusing to package: model mlp:1 is not signed by a trusted key" in msg, msg[-1500:]
    assert key_id(pub_a)[:16] in msg and key_id(pub_b)[:16] in msg, "names who signed and the key expected"
    outputs = stack.outputs()
    assert "image_ref" not in outputs, "no image was built"
    stack.set_config("trusted_keys", auto.ConfigValue(json.dumps([pub_b, pub_a])))
    up = stack.up()
    ref = up.outputs["image_ref"].value
    assert ref.startswith(f"{repo}@sha256:")
    _run_and_score(ref, model_file)

    # The server checks the model again at load, against the keys and bundles the image carries: the files it
    # serves verify; the same image with its model file swapped exits (code 3) naming the version and what changed.
    def run(*extra: str) -> tuple[int, str]:
        proc = subprocess.run(
            [DOCKER, "run", "--rm", "--read-only", "--cap-drop", "ALL", "--network", "none", *extra, ref,
             "--port", "18080"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return proc.returncode, proc.stdout + proc.stderr

    logs = subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c",
         "find /opt/mlinfra/trust -type f | sort; echo MLINFRA_SERVE_TRUST=$MLINFRA_SERVE_TRUST"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"/opt/mlinfra/trust/keys/{key_id(pub_a)}.pem" in logs and f"keys/{key_id(pub_b)}.pem" in logs
    assert f"/opt/mlinfra/trust/signatures/mlp/1/{key_id(pub_a)}.json" in logs
    assert "MLINFRA_SERVE_TRUST=/opt/mlinfra/trust" in logs
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(model_file.read_bytes()[:-1] + b"\0")
    tampered.chmod(0o644)
    code, out = run("-v", f"{tampered}:/models/mlp/1/model.onnx:ro")
    assert code == 3, out[-2000:]
    assert "model mlp:1 refused" in out and "changed: ." in out and key_id(pub_a)[:16] in out, out[-2000:]
    assert "model_loaded" not in out, "the tampered model never loads"
    stack.destroy()


def _cosign(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """cosign (built by `make setup`) kept on this machine: no Rekor (--insecure-ignore-tlog), no TUF root fetched
    (SIGSTORE_REKOR_PUBLIC_KEY set; a dead proxy besides, so any other lookup fails here)."""
    from mlinfra.engine import cosign_binary

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "TUF_ROOT": str(tmp / "tuf"),
        "SIGSTORE_REKOR_PUBLIC_KEY": str(tmp / "pub.pem"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return subprocess.run([str(cosign_binary()), *args], capture_output=True, text=True, timeout=120, env=env)


def _cosign_verify(ref: str, public_key: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return _cosign(
        "verify-attestation", "--key", str(public_key), "--type", "slsaprovenance1", "--insecure-ignore-tlog=true",
        ref, tmp=tmp,
    )  # fmt: skip


def test_an_image_carries_signed_provenance_that_cosign_verifies(
    tmp_path: Path, backend: Path, program, services_up
) -> None:
    """attestation_key: the image gets an SLSA provenance statement (models and their signers, base digest, wheels,
    builder) signed and attached the cosign way; upstream `cosign verify-attestation --key` accepts it and refuses
    another key; a second up attaches nothing new; promote --copy brings the attestation along; the key is a
    secret in the state."""
    from mlinfra.images.attest import attestation_tag
    from mlinfra.images.builder import copy_image
    from mlinfra.registry.signing import key_id
    from tests.signing_helpers import ec_keypair

    private, public = ec_keypair()
    (tmp_path / "pub.pem").write_text(public)
    model_file = write_mlp(tmp_path / "model.onnx")
    repo = f"{services.registry_host()}/test/attested-{uuid.uuid4().hex[:8]}"
    cfg = {
        "path": str(model_file),
        "registry": f"file://{tmp_path / 'registry'}",
        "repository": repo,
        "signing_key": auto.ConfigValue(private, secret=True),
        "attestation_key": auto.ConfigValue(private, secret=True),
    }
    stack = local_stack(program("scoring-image"), "attested", backend_dir=backend, config=cfg)
    up = stack.up()
    ref = up.outputs["image_ref"].value
    att = up.outputs["attestation"].value
    assert att["key_id"] == key_id(public) and att["tag"] == attestation_tag(ref.split("@")[1]), att

    res = _cosign_verify(ref, tmp_path / "pub.pem", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "signatures were verified against the specified public key" in res.stderr
    statement = json.loads(base64.b64decode(json.loads(res.stdout.splitlines()[0])["payload"]))
    assert statement["subject"][0]["digest"]["sha256"] == ref.split("sha256:")[1]
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    mv = ModelRegistry(cfg["registry"]).get("mlp", 1)
    assert deps["model:mlp"]["digest"]["sha256"] == mv.sha256
    assert deps["model:mlp"]["annotations"]["signers"] == [key_id(public)], "the model's signers are recorded"
    assert (
        deps["base"]["digest"]["sha256"]
        == up.outputs["labels"].value["org.opencontainers.image.base.digest"][7:]
    )
    assert any(n.startswith("wheel:onnxruntime-") for n in deps), sorted(deps)
    assert statement["predicate"]["runDetails"]["builder"]["id"].startswith("https://github.com/mlinfra/")

    mine = subprocess.run(
        [str(Path(sys.executable).parent / "mlinfra"), "images", "verify", ref, "--public-key",
         str(tmp_path / "pub.pem")], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert mine.returncode == 0 and "verified" in mine.stdout and "mlinfra-model:mlp:1" in mine.stdout, mine
    _, other = ec_keypair()
    (tmp_path / "other.pem").write_text(other)
    theirs = subprocess.run(
        [str(Path(sys.executable).parent / "mlinfra"), "images", "verify", ref, "--public-key",
         str(tmp_path / "other.pem")], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        theirs.returncode == 1
        and "no https://slsa.dev/provenance/v1 attestation signed by key" in theirs.stdout
    )
    refused = _cosign_verify(ref, tmp_path / "other.pem", tmp_path)
    assert refused.returncode != 0, refused.stdout[-500:]

    again = stack.up()
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes
    assert again.outputs["attestation"].value["manifest_digest"] == att["manifest_digest"], (
        "nothing re-attached"
    )
    assert plaintext_secrets(backend, private.splitlines()[1]) == [], "the attestation key is a secret"

    # Another attestation key: an update that adds its attestation beside the first; both verify.
    private2, public2 = ec_keypair()
    (tmp_path / "pub2.pem").write_text(public2)
    stack.set_config("attestation_key", auto.ConfigValue(private2, secret=True))
    assert stack.preview().change_summary.get("update", 0) >= 1
    assert stack.up().outputs["attestation"].value["key_id"] == key_id(public2)
    for pub in ("pub.pem", "pub2.pem"):
        res = _cosign_verify(ref, tmp_path / pub, tmp_path)
        assert res.returncode == 0, (pub, res.stderr[-2000:])

    copied = copy_image(ref, f"{repo}-prod")
    promoted = _cosign_verify(copied, tmp_path / "pub.pem", tmp_path)
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    stack.destroy()
