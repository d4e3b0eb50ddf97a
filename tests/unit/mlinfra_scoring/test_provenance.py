"""The scoring server's own signature check (mlinfra_scoring.provenance): bundles made by mlinfra's registry and by the
upstream model-signing library verify; tampered, unsigned, untrusted, forged and expired ones are refused with the
reason; `mlinfra serve --trust` serves a verified model and exits (code 3) on a refused one, never ready."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from mlinfra.registry.signing import key_id, sign_version, signatures
from mlinfra_scoring.provenance import ProvenanceError, TrustStore
from tests.scoring_helpers import REPO, free_port, start_server
from tests.signing_helpers import certificate_chain, ec_keypair


def _trust_dir(tmp: Path, trusted: list[str], name: str, version: str, bundles: dict[str, bytes]) -> Path:
    d = tmp / "trust"
    shutil.rmtree(d, ignore_errors=True)
    (d / "keys").mkdir(parents=True)
    for i, pem in enumerate(trusted):
        (d / "keys" / f"{i}.pem").write_text(pem)
    sig = d / "signatures" / name / version
    sig.mkdir(parents=True)
    for kid, b in bundles.items():
        (sig / f"{kid}.json").write_bytes(b)
    return d


def _upstream_sign(model: Path, private: str, tmp: Path, chain: str | None = None) -> bytes:
    """A bundle made the upstream way: model-signing hashes the files itself."""
    import model_signing

    (tmp / "k.pem").write_text(private)
    config = model_signing.signing.Config()
    if chain is None:
        config.use_elliptic_key_signer(private_key=tmp / "k.pem")
    else:
        certs = [c + "-----END CERTIFICATE-----\n" for c in chain.split("-----END CERTIFICATE-----\n") if c]
        for i, c in enumerate(certs):
            (tmp / f"c{i}.pem").write_text(c)
        config.use_certificate_signer(
            private_key=tmp / "k.pem",
            signing_certificate=tmp / "c0.pem",
            certificate_chain=[tmp / f"c{i}.pem" for i in range(1, len(certs))],
        )
    config.sign(model, tmp / "b.json")
    return (tmp / "b.json").read_bytes()


@pytest.fixture
def folder_model(tmp_path: Path) -> Path:
    d = tmp_path / "fraud"
    d.mkdir()
    write_mlp(d / "model.onnx")
    (d / "conf").mkdir()
    (d / "conf" / "labels.txt").write_text("ok\nfraud\n")
    return d


def test_mlinfra_and_upstream_bundles_verify_for_files_and_folders(
    tmp_path: Path, folder_model: Path
) -> None:
    private, public = ec_keypair()
    reg = ModelRegistry(f"file://{tmp_path / 'reg'}")
    single = write_mlp(tmp_path / "mlp.onnx")
    reg.register("mlp", single)
    reg.register("fraud", folder_model)
    kid = key_id(public)
    store = TrustStore.from_pems([public])
    for name, path in (("mlp", single), ("fraud", folder_model)):
        sign_version(reg, name, 1, private)  # from the registry record, never re-reading the files
        assert store.verify_bundle(signatures(reg, name, 1)[kid], path) == kid
        assert store.verify_bundle(_upstream_sign(path, private, tmp_path), path) == kid


def test_tampered_added_and_missing_files_are_named(tmp_path: Path, folder_model: Path) -> None:
    private, public = ec_keypair()
    bundle = _upstream_sign(folder_model, private, tmp_path)
    store = TrustStore.from_pems([public])
    with (folder_model / "conf" / "labels.txt").open("a") as f:
        f.write("backdoor\n")
    (folder_model / "extra.py").write_text("import os\n")
    (folder_model / "model.onnx").unlink()
    with pytest.raises(ProvenanceError) as e:
        store.verify_bundle(bundle, folder_model)
    msg = str(e.value)
    assert (
        "changed: conf/labels.txt" in msg and "missing: model.onnx" in msg and "not signed: extra.py" in msg
    )


def test_untrusted_forged_and_malformed_bundles_are_refused(tmp_path: Path) -> None:
    private, public = ec_keypair()
    _, other_public = ec_keypair()
    model = write_mlp(tmp_path / "mlp.onnx")
    bundle = _upstream_sign(model, private, tmp_path)
    with pytest.raises(ProvenanceError, match=f"signed by key {key_id(public)[:16]}.*not trusted"):
        TrustStore.from_pems([other_public]).verify_bundle(bundle, model)
    # The statement of another model, under the original signature: the signature no longer covers it.
    other = write_mlp(tmp_path / "other.onnx", hidden=32)
    forged = json.loads(bundle)
    forged["dsseEnvelope"]["payload"] = json.loads(_upstream_sign(other, ec_keypair()[0], tmp_path))[
        "dsseEnvelope"
    ]["payload"]
    store = TrustStore.from_pems([public])
    with pytest.raises(ProvenanceError, match="is not valid for its statement"):
        store.verify_bundle(json.dumps(forged).encode(), model)
    deep = (
        b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    )
    for bad in (
        b"",
        b"{",
        b'{"mediaType": "text/plain"}',
        json.dumps({"mediaType": 3}).encode(),
        deep,
        b"\xff\xfe",
    ):
        with pytest.raises(ProvenanceError, match=r"malformed|not a sigstore bundle"):
            store.verify_bundle(bad, model)
    no_sig = json.loads(bundle)
    no_sig["dsseEnvelope"]["signatures"] = []
    with pytest.raises(ProvenanceError, match="malformed"):
        store.verify_bundle(json.dumps(no_sig).encode(), model)
    with pytest.raises(ProvenanceError, match="trusted key #1 is not a PEM"):
        TrustStore.from_pems(["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])


def test_a_statement_whose_subject_does_not_match_its_resources_is_refused(tmp_path: Path) -> None:
    """Signed, but inconsistent: the resources must hash to the subject (as model-signing requires)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from mlinfra_scoring.provenance import pae

    private, public = ec_keypair()
    model = write_mlp(tmp_path / "mlp.onnx")
    bundle = json.loads(_upstream_sign(model, private, tmp_path))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    payload = json.dumps(statement).encode()
    key = serialization.load_pem_private_key(private.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        key.sign(pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))
    ).decode()
    with pytest.raises(ProvenanceError, match="do not hash to its subject"):
        TrustStore.from_pems([public]).verify_bundle(json.dumps(bundle).encode(), model)


def test_certificate_chains_to_a_trusted_root_and_expired_certificates(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    private, chain, root = certificate_chain()
    bundle = _upstream_sign(model, private, tmp_path, chain)
    assert TrustStore.from_pems([root]).verify_bundle(bundle, model)
    _, _, other_root = certificate_chain()
    with pytest.raises(ProvenanceError, match="does not chain to a trusted root"):
        TrustStore.from_pems([other_root]).verify_bundle(bundle, model)
    # Upstream model-signing checks a chain at the time the certificate was issued; mlinfra wants it valid today.
    old_key, old_chain, old_root = certificate_chain(days_valid=(-30, -1))
    expired = _upstream_sign(model, old_key, tmp_path, old_chain)
    with pytest.raises(ProvenanceError, match=r"CN=model signer is valid .* not now"):
        TrustStore.from_pems([old_root]).verify_bundle(expired, model)
    not_for_signing_key, nfs_chain, nfs_root = certificate_chain(code_signing=False)
    with pytest.raises(ProvenanceError, match="CN=model signer is not for signing"):
        TrustStore.from_pems([nfs_root]).verify_bundle(
            _upstream_sign(model, not_for_signing_key, tmp_path, nfs_chain), model
        )


def test_serve_with_trust_serves_a_verified_model_and_exits_on_a_refused_one(tmp_path: Path) -> None:
    private, public = ec_keypair()
    model = write_mlp(tmp_path / "mlp.onnx")
    kid = key_id(public)
    trust = _trust_dir(tmp_path, [public], "mlp", "1", {kid: _upstream_sign(model, private, tmp_path)})
    server = start_server(tmp_path, "--model", str(model), "--name", "mlp", "--trust", str(trust))
    try:
        status, _, _ = server.request("GET", "/v2/health/ready")
        assert status == 200
    finally:
        assert server.stop() == 0
    assert (
        f'"event": "model_verified", "model": "mlp", "version": "1", "signer": "{kid}"'
        in server.log.read_text()
    )

    def refused(trust_dir: Path, path: Path) -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlinfra_scoring",
                "--port",
                str(free_port()),
                "--model",
                str(path),
                "--name",
                "mlp",
                "--trust",
                str(trust_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "model_loaded" not in proc.stdout, "a refused model never loads"
        return proc.stdout

    tampered = tmp_path / "tampered" / "mlp.onnx"
    tampered.parent.mkdir()
    tampered.write_bytes(model.read_bytes()[:-1] + b"\0")
    out = refused(trust, tampered)
    assert "model mlp:1 refused" in out and "changed: ." in out and kid[:16] in out
    unsigned = _trust_dir(tmp_path, [public], "mlp", "1", {})
    assert "model mlp:1 is not signed" in refused(unsigned, model)
    _, stranger = ec_keypair()
    untrusted = _trust_dir(tmp_path, [stranger], "mlp", "1", {kid: _upstream_sign(model, private, tmp_path)})
    assert "not trusted" in refused(untrusted, model)
    empty = tmp_path / "empty-trust"
    empty.mkdir()
    assert "has no keys/*.pem" in refused(empty, model)
