"""Signed model versions: OpenSSF model-signing bundles over every file of a version, kept beside its record.

A signature is the `model_signing` library's bundle (sigstore bundle v0.3, a DSSE envelope around an in-toto
statement of every file's sha256), made with an elliptic-curve private key — no network, no transparency log (keyless
signing needs public services these machines cannot reach). It is stored at
``models/<name>/signatures/<version>/<key id>.json``, where the key id is the sha256 of the public key's PEM
(SubjectPublicKeyInfo) — the ``hint`` model-signing writes and checks. Signing never changes a version; a second
signer adds a second bundle. Versions are signed and verified as the registry hands them out (downloaded to a
scratch folder), so what a verifier downloads is exactly what was signed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlinfra.errors import ModelError, ModelRegistryError
from mlinfra.registry.registry import ModelRegistry, signatures_prefix


class SignatureError(ModelError):
    """A version's signature is missing, by another key, or does not match its files."""


def _load_private_key(pem: str | bytes, password: str | None = None):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as e:
        # Never echo the key: say what it is not.
        raise SignatureError(
            f"the signing key is not a PEM private key (or its password is wrong): {e}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError(
            f"the signing key is a {type(key).__name__.lstrip('_')}: model signing takes an elliptic-curve key "
            "(e.g. `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`)"
        )
    return key


def _load_public_key(pem: str | bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"the public key is not a PEM public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(
            f"the public key is a {type(key).__name__.lstrip('_')}, not an elliptic-curve key"
        )
    return key


def key_id(public_key_pem: str | bytes) -> str:
    """sha256 of the public key's PEM (SubjectPublicKeyInfo), as model-signing's bundle ``hint``."""
    from cryptography.hazmat.primitives import serialization

    key = _load_public_key(public_key_pem)
    raw = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(raw).hexdigest()


def public_key_of(private_key_pem: str | bytes, password: str | None = None) -> str:
    from cryptography.hazmat.primitives import serialization

    key = _load_private_key(private_key_pem, password)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signatures(reg: ModelRegistry, name: str, version: int) -> dict[str, bytes]:
    """{key id: bundle} of NAME:VERSION."""
    prefix = signatures_prefix(name, version)
    out = {}
    for k in reg.store.list(prefix):
        got = reg.store.get(k)
        if got is not None:
            out[k[len(prefix) :].removesuffix(".json")] = got[0]
    return out


def _materialize(reg: ModelRegistry, name: str, version: int, scratch: Path) -> Path:
    """The version as the registry hands it out (every file's sha256 checked), under SCRATCH/<name>."""
    folder = scratch / name
    folder.mkdir(parents=True)
    return reg.download(f"{name}:{version}", folder)


def sign_version(
    reg: ModelRegistry, name: str, version: int, private_key_pem: str | bytes, password: str | None = None
) -> str:
    """Sign NAME:VERSION with the private key (PEM) and store the bundle; returns the key id. Signing again with
    the same key replaces that key's bundle; other signers' bundles stay."""
    import model_signing

    if reg.get(name, version) is None:
        raise SignatureError(f"model {name}:{version} is not in {reg.uri}: nothing to sign")
    kid = key_id(public_key_of(private_key_pem, password))
    with tempfile.TemporaryDirectory(prefix="mlinfra-sign-") as tmp:
        scratch = Path(tmp)
        key_file = scratch / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only, deleted with tmp
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem)
        model = _materialize(reg, name, version, scratch)
        bundle = scratch / "bundle.json"
        try:
            model_signing.signing.Config().use_elliptic_key_signer(
                private_key=key_file, password=password
            ).sign(model, bundle)
        except Exception as e:  # the library's own errors name the file; never the key
            raise SignatureError(f"signing {name}:{version} failed: {type(e).__name__}: {e}") from None
        reg.store.put(f"{signatures_prefix(name, version)}{kid}.json", bundle.read_bytes())
    return kid


@dataclass
class Verification:
    ok: bool
    name: str
    version: int
    key_id: str
    reason: str
    signers: list[str]

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "model": f"{self.name}:{self.version}",
            "key_id": self.key_id,
            "reason": self.reason,
            "signers": self.signers,
        }


def verify_version(reg: ModelRegistry, name: str, version: int, public_key_pem: str | bytes) -> Verification:
    """Check NAME:VERSION's files against its signature by the public key's owner (never raises for a failed
    check: ``ok`` and ``reason`` say what failed — no signature, another signer, files that do not match)."""
    import model_signing

    kid = key_id(public_key_pem)
    if reg.get(name, version) is None:
        raise SignatureError(f"model {name}:{version} is not in {reg.uri}")
    bundles = signatures(reg, name, version)
    signers = sorted(bundles)
    if not bundles:
        return Verification(False, name, version, kid, "the version is not signed", signers)
    if kid not in bundles:
        return Verification(
            False,
            name,
            version,
            kid,
            f"no signature by key {kid[:16]}… (signed by {', '.join(s[:16] + '…' for s in signers)})",
            signers,
        )
    with tempfile.TemporaryDirectory(prefix="mlinfra-verify-") as tmp:
        scratch = Path(tmp)
        (scratch / "public.pem").write_bytes(
            public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        )
        (scratch / "bundle.json").write_bytes(bundles[kid])
        try:
            json.loads(bundles[kid])
        except ValueError:
            return Verification(
                False, name, version, kid, "the stored signature is not a JSON bundle", signers
            )
        try:
            model = _materialize(reg, name, version, scratch / "m")
        except (ModelError, ModelRegistryError) as e:  # a stored blob that no longer matches its record
            return Verification(False, name, version, kid, f"the files are corrupt: {e}", signers)
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(
                public_key=scratch / "public.pem"
            ).verify(model, scratch / "bundle.json")
        except Exception as e:
            return Verification(
                False, name, version, kid, f"the signature does not match: {e}"[:600], signers
            )
    return Verification(True, name, version, kid, "signature verified", signers)


def require_trusted(reg: ModelRegistry, name: str, version: int, trusted: list[str]) -> str:
    """NAME:VERSION must verify with one of the TRUSTED public keys (PEM); returns that key's id, else raises
    SignatureError naming the version, the keys trusted, who signed and what failed."""
    if not trusted:
        raise SignatureError("no trusted keys given")
    reasons = []
    signers: list[str] = []
    for pem in trusted:
        result = verify_version(reg, name, version, pem)
        if result.ok:
            return result.key_id
        signers = result.signers
        reasons.append(f"{result.key_id[:16]}…: {result.reason}")
    raise SignatureError(
        f"model {name}:{version} is not signed by a trusted key (signed by: "
        f"{', '.join(s[:16] + '…' for s in signers) or 'nobody'}); " + "; ".join(reasons)
    )
