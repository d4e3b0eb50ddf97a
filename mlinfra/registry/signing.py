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
from pathlib import Path, PurePosixPath
from typing import Any

from mlinfra.errors import ModelError, ModelRegistryError
from mlinfra.registry.registry import ModelRegistry, signatures_prefix
from mlinfra_scoring.provenance import validity_problem


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
    """sha256 of the public key's PEM (SubjectPublicKeyInfo), as model-signing's bundle ``hint`` (of a certificate: its
    key's)."""
    from cryptography.hazmat.primitives import serialization

    if is_certificate(public_key_pem):
        from cryptography import x509

        data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError as e:
            raise SignatureError(f"the trusted certificate is not a PEM X.509 certificate: {e}") from None
    else:
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


# What model-signing's default hashing leaves out of a folder's manifest (and names in the bundle it writes).
GIT_PATHS = [".github", ".gitattributes", ".git", ".gitignore"]


def record_manifest(reg: ModelRegistry, name: str, version: int) -> Any:
    """NAME:VERSION's model-signing manifest made from its record: each file's sha256 as registered (the digests
    every download checks), so signing never reads the bytes again. The same manifest model-signing's hashing makes
    of the version's download: a folder's files by relative path (git paths left out, as its default does), a single
    file as ``.`` named after the file."""
    from model_signing import manifest
    from model_signing._hashing.hashing import Digest

    mv = reg.get(name, version)
    if mv is None:
        raise SignatureError(f"model {name}:{version} is not in {reg.uri}: nothing to sign")

    def item(path: str, sha256: str) -> Any:
        return manifest.FileManifestItem(
            path=PurePosixPath(path), digest=Digest("sha256", bytes.fromhex(sha256))
        )

    serialization = manifest._FileSerialization("sha256", False, [Path(g) for g in GIT_PATHS])
    if not mv.is_dir:
        return manifest.Manifest(mv.files[0]["path"], [item(".", mv.files[0]["sha256"])], serialization)
    files = [f for f in mv.files if f["path"].split("/", 1)[0] not in GIT_PATHS]
    return manifest.Manifest(name, [item(f["path"], f["sha256"]) for f in files], serialization)


def sign_version(
    reg: ModelRegistry,
    name: str,
    version: int,
    private_key_pem: str | bytes,
    password: str | None = None,
    certificate_chain: str | None = None,
) -> str:
    """Sign NAME:VERSION with the private key (PEM; with CERTIFICATE_CHAIN, PEM certificates with the key's own
    first, the bundle carries the chain) and store the bundle; returns the key id. Signing again with the same key
    replaces that key's bundle; other signers' bundles stay. The statement is made from the version's record
    (:func:`record_manifest`): signing a 1 GiB version costs what signing a small one does."""
    from cryptography.hazmat.primitives import serialization
    from model_signing._signing import sign_certificate, sign_ec_key, signing

    manifest = record_manifest(reg, name, version)
    public = public_key_of(private_key_pem, password)
    kid = key_id(public)
    certs = check_certificate_chain(certificate_chain, public) if certificate_chain is not None else []
    with tempfile.TemporaryDirectory(prefix="mlinfra-sign-") as tmp:
        scratch = Path(tmp)
        key_file = scratch / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only, deleted with tmp
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem)
        bundle = scratch / "bundle.json"
        try:
            if not certs:
                # model-signing hands the password to cryptography, which takes bytes (its own Config passes a str).
                signer: Any = sign_ec_key.Signer(key_file, password.encode() if password else None)  # type: ignore[arg-type]
            else:
                if password:
                    raise SignatureError(
                        "signing with a certificate takes an unencrypted private key (model-signing reads it "
                        "without a password): decrypt it to a file only you can read"
                    )
                for i, cert in enumerate(certs):
                    (scratch / f"cert-{i}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                signer = sign_certificate.Signer(
                    key_file,
                    scratch / "cert-0.pem",
                    [scratch / f"cert-{i}.pem" for i in range(1, len(certs))],
                )
            signer.sign(signing.Payload(manifest)).write(bundle)
        except SignatureError:
            raise
        except Exception as e:  # the library's own errors name the file; never the key
            raise SignatureError(f"signing {name}:{version} failed: {type(e).__name__}: {e}") from None
        reg.store.put(f"{signatures_prefix(name, version)}{kid}.json", bundle.read_bytes())
    return kid


def check_certificate_chain(chain_pem: str, public_key_pem: str) -> list[Any]:
    """The chain's certificates (x509), checked: the first must be the signing key's, and every one valid now — an
    expired or mismatched certificate is refused before anything is signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as e:
        raise SignatureError(f"the certificate chain is not PEM X.509 certificates: {e}") from None
    leaf = certs[0]
    leaf_key = leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_key.decode() != public_key_pem:
        raise SignatureError(
            f"the first certificate ({leaf.subject.rfc4514_string()}) is not the signing key's: put the key's own "
            "certificate first, then its issuers"
        )
    problem = validity_problem(*certs)
    if problem:
        raise SignatureError(f"{problem}: renew it")
    return certs


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


def is_certificate(pem: str | bytes) -> bool:
    return b"-----BEGIN CERTIFICATE-----" in (pem.encode() if isinstance(pem, str) else pem)


def _bundle_chain(bundle: bytes) -> list[Any]:
    """The certificates (x509) a bundle carries, signing certificate first; none for a key-signed bundle (or one
    whose certificates cannot be read: model-signing's verifier then says why)."""
    import base64

    from cryptography import x509

    try:
        material = json.loads(bundle).get("verificationMaterial") or {}
        return [
            x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"]))
            for c in material["x509CertificateChain"]["certificates"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def verify_version(reg: ModelRegistry, name: str, version: int, trusted_pem: str | bytes) -> Verification:
    """Check NAME:VERSION's files against its signature by a trusted signer (never raises for a failed check:
    ``ok`` and ``reason`` say what failed — no signature, another signer, files that do not match, an expired
    certificate). TRUSTED_PEM is a public key (its owner's bundle is checked) or a root certificate (any bundle
    whose certificate chain leads to it)."""
    import model_signing

    kid = key_id(trusted_pem)
    if reg.get(name, version) is None:
        raise SignatureError(f"model {name}:{version} is not in {reg.uri}")
    bundles = signatures(reg, name, version)
    signers = sorted(bundles)
    if not bundles:
        return Verification(False, name, version, kid, "the version is not signed", signers)
    root = is_certificate(trusted_pem)
    candidates = {k: b for k, b in bundles.items() if _bundle_chain(b)} if root else {}
    if not root and kid in bundles:
        candidates = {kid: bundles[kid]}
    if not candidates:
        return Verification(
            False,
            name,
            version,
            kid,
            (f"no certificate-signed signature (signed by keys {', '.join(s[:16] + '…' for s in signers)})")
            if root
            else f"no signature by key {kid[:16]}… (signed by {', '.join(s[:16] + '…' for s in signers)})",
            signers,
        )
    reasons: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mlinfra-verify-") as tmp:
        scratch = Path(tmp)
        trusted_file = scratch / "trusted.pem"
        trusted_file.write_bytes(trusted_pem.encode() if isinstance(trusted_pem, str) else trusted_pem)
        try:
            model = _materialize(reg, name, version, scratch / "m")
        except (ModelError, ModelRegistryError) as e:  # a stored blob that no longer matches its record
            return Verification(False, name, version, kid, f"the files are corrupt: {e}", signers)
        for signer, bundle in candidates.items():
            try:
                json.loads(bundle)
            except ValueError:
                reasons.append(f"{signer[:16]}…: the stored signature is not a JSON bundle")
                continue
            # model-signing checks a chain at the time its signing certificate was issued; without a signed
            # timestamp, mlinfra also wants it valid today.
            expired = validity_problem(*_bundle_chain(bundle))
            if expired:
                reasons.append(f"{signer[:16]}…: {expired}")
                continue
            (scratch / "bundle.json").write_bytes(bundle)
            config = model_signing.verifying.Config()
            if root:
                config.use_certificate_verifier(certificate_chain=[trusted_file])
            else:
                config.use_elliptic_key_verifier(public_key=trusted_file)
            try:
                config.verify(model, scratch / "bundle.json")
            except Exception as e:
                reasons.append(f"{signer[:16]}…: the signature does not match: {e}"[:600])
                continue
            return Verification(
                True, name, version, kid if not root else signer, "signature verified", signers
            )
    return Verification(False, name, version, kid, "; ".join(reasons), signers)


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
