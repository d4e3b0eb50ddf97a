"""Signed versions: model-signing bundles made with an EC key, kept beside the version, checked on its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from mlinfra.registry.signing import SignatureError, key_id, sign_version, signatures, verify_version
from tests.signing_helpers import ec_keypair


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    r = ModelRegistry(f"file://{tmp_path / 'registry'}")
    r.register("mlp", write_mlp(tmp_path / "mlp.onnx"))
    return r


def test_a_signed_version_verifies_with_its_key_only(reg: ModelRegistry) -> None:
    private, public = ec_keypair()
    record_before = reg.get("mlp", 1)
    kid = sign_version(reg, "mlp", 1, private)
    assert kid == key_id(public)
    assert reg.get("mlp", 1) == record_before, "signing never changes the version"
    ok = verify_version(reg, "mlp", 1, public)
    assert ok.ok and ok.signers == [kid], ok
    _, other = ec_keypair()
    refused = verify_version(reg, "mlp", 1, other)
    assert not refused.ok and f"no signature by key {key_id(other)[:16]}" in refused.reason
    assert kid[:16] in refused.reason, "the refusal names who did sign"


def test_a_second_signer_adds_a_signature(reg: ModelRegistry) -> None:
    (p1, pub1), (p2, pub2) = ec_keypair(), ec_keypair()
    sign_version(reg, "mlp", 1, p1)
    sign_version(reg, "mlp", 1, p2)
    assert set(signatures(reg, "mlp", 1)) == {key_id(pub1), key_id(pub2)}
    assert verify_version(reg, "mlp", 1, pub1).ok and verify_version(reg, "mlp", 1, pub2).ok


def test_unsigned_tampered_and_bad_keys_are_refused_with_the_reason(
    reg: ModelRegistry, tmp_path: Path
) -> None:
    private, public = ec_keypair()
    assert verify_version(reg, "mlp", 1, public).reason == "the version is not signed"
    sign_version(reg, "mlp", 1, private)
    # A forged bundle: the signed statement of another model's files, stored under this key's id.
    reg.register("other", write_mlp(tmp_path / "other.onnx", hidden=32))
    sign_version(reg, "other", 1, private)
    forged = signatures(reg, "other", 1)[key_id(public)]
    reg.store.put(f"models/mlp/signatures/{1:010d}/{key_id(public)}.json", forged)
    bad = verify_version(reg, "mlp", 1, public)
    assert not bad.ok and "does not match" in bad.reason, bad.reason
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_version(reg, "mlp", 1, "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(SignatureError, match="elliptic-curve") as e:
        sign_version(reg, "mlp", 1, pem)
    assert "PRIVATE KEY" not in str(e.value), "the key never appears in an error"
    with pytest.raises(SignatureError, match="not a PEM private key"):
        sign_version(reg, "mlp", 1, "garbage")


def test_a_tampered_blob_fails_verification(reg: ModelRegistry) -> None:
    private, public = ec_keypair()
    sign_version(reg, "mlp", 1, private)
    blob = next(k for k in reg.store.list("blobs/"))
    data, _ = reg.store.get(blob)
    reg.store.put(blob, data[:-1] + bytes([data[-1] ^ 1]))
    bad = verify_version(reg, "mlp", 1, public)
    assert not bad.ok and "corrupt" in bad.reason, bad.reason


def test_the_model_signing_cli_accepts_mlinfras_bundle(reg: ModelRegistry, tmp_path: Path) -> None:
    """Interop: upstream's own verifier (the `model_signing` CLI) accepts the bundle on the downloaded files."""
    private, public = ec_keypair()
    kid = sign_version(reg, "mlp", 1, private)
    (tmp_path / "pub.pem").write_text(public)
    (tmp_path / "sig.json").write_bytes(signatures(reg, "mlp", 1)[kid])
    assert json.loads((tmp_path / "sig.json").read_text())["mediaType"].startswith(
        "application/vnd.dev.sigstore"
    )
    model = reg.download("mlp:1", (tmp_path / "dl").mkdir() or tmp_path / "dl")
    cli = Path(sys.executable).parent / "model_signing"
    res = subprocess.run(
        [str(cli), "verify", "key", "--signature", str(tmp_path / "sig.json"), "--public_key",
         str(tmp_path / "pub.pem"), str(model)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    _, other = ec_keypair()
    (tmp_path / "other.pem").write_text(other)
    res = subprocess.run(
        [str(cli), "verify", "key", "--signature", str(tmp_path / "sig.json"), "--public_key",
         str(tmp_path / "other.pem"), str(model)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode != 0, "another key is refused by upstream too"


def test_a_copied_version_keeps_its_signatures(reg: ModelRegistry, tmp_path: Path) -> None:
    """`promote --copy` (copy_version) carries the bundles with the bytes; a signer added later follows on the next
    copy; the copy verifies in the target registry."""
    (p1, pub1), (p2, pub2) = ec_keypair(), ec_keypair()
    sign_version(reg, "mlp", 1, p1)
    target = ModelRegistry(f"file://{tmp_path / 'prod'}")
    mv = reg.get("mlp", 1)
    target.copy_version(reg, "mlp", 1, mv.sha256)
    assert verify_version(target, "mlp", 1, pub1).ok
    sign_version(reg, "mlp", 1, p2)
    target.copy_version(reg, "mlp", 1, mv.sha256)  # already there: only the new signature comes
    assert verify_version(target, "mlp", 1, pub2).ok


def test_a_folder_signed_from_its_record_verifies_upstream(tmp_path: Path) -> None:
    """Signing builds the statement from the record (no re-read); upstream hashes the downloaded folder itself and
    agrees — nested files, and the git paths its hashing leaves out."""
    folder = tmp_path / "fraud"
    (folder / "conf").mkdir(parents=True)
    write_mlp(folder / "model.onnx")
    (folder / "conf" / "labels.txt").write_text("ok\nfraud\n")
    (folder / ".gitattributes").write_text("*.onnx filter=lfs\n")
    reg = ModelRegistry(f"file://{tmp_path / 'registry'}")
    reg.register("fraud", folder)
    private, public = ec_keypair()
    kid = sign_version(reg, "fraud", 1, private)
    (tmp_path / "pub.pem").write_text(public)
    (tmp_path / "sig.json").write_bytes(signatures(reg, "fraud", 1)[kid])
    dl = reg.download("fraud:1", (tmp_path / "dl").mkdir() or tmp_path / "dl")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "model_signing"), "verify", "key", "--signature",
         str(tmp_path / "sig.json"), "--public_key", str(tmp_path / "pub.pem"), str(dl)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_certificate_signing_trusts_the_root_and_refuses_expired_certificates(
    reg: ModelRegistry, tmp_path: Path
) -> None:
    import model_signing

    from tests.signing_helpers import certificate_chain

    private, chain, root = certificate_chain()
    kid = sign_version(reg, "mlp", 1, private, certificate_chain=chain)
    ok = verify_version(reg, "mlp", 1, root)
    assert ok.ok and ok.key_id == kid, ok
    _, _, other_root = certificate_chain()
    assert not verify_version(reg, "mlp", 1, other_root).ok
    with pytest.raises(SignatureError, match="is not the signing key's"):
        sign_version(reg, "mlp", 1, ec_keypair()[0], certificate_chain=chain)
    old_key, old_chain, old_root = certificate_chain(days_valid=(-30, -1))
    with pytest.raises(
        SignatureError, match=r"CN=model signer is valid .* not now \(expired or not yet valid\): renew it"
    ):
        sign_version(reg, "mlp", 1, old_key, certificate_chain=old_chain)
    # A bundle made while the certificate was valid (upstream, which does not look at today's date): refused now.
    (tmp_path / "k.pem").write_text(old_key)
    leaf, root_pem = [
        c + "-----END CERTIFICATE-----\n" for c in old_chain.split("-----END CERTIFICATE-----\n")
    ][:2]
    (tmp_path / "leaf.pem").write_text(leaf)
    (tmp_path / "root.pem").write_text(root_pem)
    dl = reg.download("mlp:1", (tmp_path / "dl").mkdir() or tmp_path / "dl")
    model_signing.signing.Config().use_certificate_signer(
        private_key=tmp_path / "k.pem",
        signing_certificate=tmp_path / "leaf.pem",
        certificate_chain=[tmp_path / "root.pem"],
    ).sign(dl, tmp_path / "b.json")
    reg.store.put(f"models/mlp/signatures/{1:010d}/{key_id(leaf)}.json", (tmp_path / "b.json").read_bytes())
    expired = verify_version(reg, "mlp", 1, old_root)
    assert not expired.ok and "not now (expired" in expired.reason, expired
