"""Verify a model's files against OpenSSF model-signing bundles before serving them — mlinfra's own verifier, with
nothing but ``cryptography`` (the runtime never imports mlinfra or the model-signing library).

A bundle (sigstore bundle v0.3) holds a DSSE envelope around an in-toto statement: the predicate lists every file's
sha256 (``method: files``), the subject's digest is the sha256 of those digests in order. The envelope's signature is
ECDSA over the DSSE pre-authentication encoding, by a key named in the bundle either by ``publicKey.hint`` (the
sha256 of its SubjectPublicKeyInfo PEM) or by an X.509 certificate chain.

A trust folder (``--trust DIR`` / MLINFRA_SERVE_TRUST; what ScoringImage(trusted_keys=) puts in an image)::

    DIR/keys/*.pem                               trusted public keys, or root certificates
    DIR/signatures/<model>/<version>/*.json      bundles of that version (any one by a trusted signer will do)

A model is served only if one of its bundles is by a trusted key (or a certificate chaining to a trusted root,
valid today) and every file matches — no file missing, none added, none changed. Otherwise :class:`ProvenanceError`
names the version, the keys trusted and what failed, and the model never loads.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
PREDICATE = "https://model_signing/signature/v1.0"
MAX_BUNDLE_BYTES = 16 * 1024 * 1024


class ProvenanceError(Exception):
    """A model's signatures do not prove where it came from: the message names the version and what failed."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the envelope's signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: Any) -> str:
    """sha256 of the key's SubjectPublicKeyInfo PEM: model-signing's ``hint``, mlinfra's key id."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def hash_for(key: Any) -> Any:
    """The ECDSA hash for an EC key's curve (P-256: SHA-256, P-384: SHA-384, P-521: SHA-512), as model-signing and
    cosign use."""
    from cryptography.hazmat.primitives import hashes

    return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())


def validity_problem(*certs: Any) -> str | None:
    """Why the first of CERTS that is not valid today is not, if one is not."""
    now = datetime.datetime.now(datetime.UTC)
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return (
                f"certificate {cert.subject.rfc4514_string()} is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not now (expired or not yet valid)"
            )
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TrustStore:
    """Trusted public keys (by key id) and root certificates."""

    keys: dict[str, Any] = field(default_factory=dict)
    roots: list[Any] = field(default_factory=list)
    signatures_dir: Path | None = None

    @classmethod
    def from_pems(cls, pems: list[str | bytes], signatures_dir: Path | None = None) -> TrustStore:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        store = cls(signatures_dir=signatures_dir)
        for i, pem in enumerate(pems):
            data = pem.encode() if isinstance(pem, str) else pem
            try:
                if b"-----BEGIN CERTIFICATE-----" in data:
                    store.roots.extend(x509.load_pem_x509_certificates(data))
                    continue
                key = serialization.load_pem_public_key(data)
            except ValueError as e:
                raise ProvenanceError(
                    f"trusted key #{i + 1} is not a PEM public key or certificate: {e}"
                ) from None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ProvenanceError(f"trusted key #{i + 1} is not an elliptic-curve key")
            store.keys[key_id(key)] = key
        return store

    @classmethod
    def from_dir(cls, folder: str | Path) -> TrustStore:
        d = Path(folder)
        keys = sorted((d / "keys").glob("*.pem")) if (d / "keys").is_dir() else []
        if not keys:
            raise ProvenanceError(f"trust folder {d} has no keys/*.pem: nothing would be trusted")
        return cls.from_pems([p.read_bytes() for p in keys], d / "signatures")

    def describe(self) -> str:
        parts = [f"key {k[:16]}…" for k in sorted(self.keys)]
        parts += [f"root {r.subject.rfc4514_string()}" for r in self.roots]
        return ", ".join(parts) or "nothing"

    def bundles(self, name: str, version: str) -> list[tuple[str, bytes]]:
        if self.signatures_dir is None:
            return []
        folder = self.signatures_dir / name / str(version)
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            if p.stat().st_size > MAX_BUNDLE_BYTES:
                out.append((p.stem, b""))
            else:
                out.append((p.stem, p.read_bytes()))
        return out

    def verify_model(
        self,
        name: str,
        version: str,
        path: str | Path,
        bundles: list[tuple[str, bytes]] | None = None,
        ignore: tuple[str, ...] = (),
    ) -> str:
        """The model at PATH must match one of NAME:VERSION's bundles (given, else from the trust folder) by a
        trusted signer; returns the signer's key id, else raises ProvenanceError naming the version, what is
        trusted and why each bundle failed. IGNORE: top-level names in a model folder that are not the model's (the
        edge agent's download marker)."""
        bundles = self.bundles(name, version) if bundles is None else bundles
        if not bundles:
            raise ProvenanceError(
                f"model {name}:{version} is not signed (no signature bundle); trusted: {self.describe()}"
            )
        reasons = []
        for signer, bundle in bundles:
            try:
                return self.verify_bundle(bundle, Path(path), ignore)
            except ProvenanceError as e:
                reasons.append(f"{signer[:16]}…: {e}")
        raise ProvenanceError(
            f"model {name}:{version} refused: no signature by a trusted signer matches its files "
            f"(trusted: {self.describe()}); " + "; ".join(reasons)
        )

    def verify_bundle(self, bundle: bytes, path: Path, ignore: tuple[str, ...] = ()) -> str:
        """Check one bundle: its signer is trusted, its signature is valid, its statement lists exactly PATH's
        files. Returns the signer's key id."""
        try:
            doc = json.loads(bundle)
            if not str(doc.get("mediaType", "")).startswith(BUNDLE_MEDIA_TYPE):
                raise ProvenanceError(f"not a sigstore bundle (mediaType {doc.get('mediaType')!r})")
            envelope = doc["dsseEnvelope"]
            payload = base64.b64decode(envelope["payload"], validate=True)
            payload_type = envelope["payloadType"]
            sig = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
            material = doc.get("verificationMaterial") or {}
        except ProvenanceError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as e:
            raise ProvenanceError(f"the bundle is malformed ({type(e).__name__}: {e})") from None
        key, kid = self._signer(material)
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key.verify(sig, pae(payload_type, payload), ec.ECDSA(hash_for(key)))
        except InvalidSignature:
            raise ProvenanceError(f"the signature by {kid[:16]}… is not valid for its statement") from None
        if payload_type != IN_TOTO_PAYLOAD:
            raise ProvenanceError(f"the signed payload is {payload_type!r}, not an in-toto statement")
        check_statement(payload, path, ignore)
        return kid

    def _signer(self, material: dict[str, Any]) -> tuple[Any, str]:
        chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
        if chain:
            return self._chain_key(chain)
        hint = (material.get("publicKey") or {}).get("hint", "")
        if hint in self.keys:
            return self.keys[hint], hint
        raise ProvenanceError(
            f"signed by key {hint[:16] or '(unnamed)'}…, which is not trusted (trusted: {self.describe()})"
        )

    def _chain_key(self, chain: list[dict[str, Any]]) -> tuple[Any, str]:
        from cryptography import x509

        try:
            certs = [x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"])) for c in chain]
        except (ValueError, KeyError, TypeError) as e:
            raise ProvenanceError(f"the bundle's certificates cannot be read: {e}") from None
        leaf = certs[0]
        kid = key_id(leaf.public_key())
        if kid in self.keys:  # the signing key itself is trusted: its certificate adds nothing to check
            return leaf.public_key(), kid
        problem = validity_problem(*certs)
        if problem:
            raise ProvenanceError(problem)
        _check_signing_usage(leaf)
        for child, issuer in itertools.pairwise(certs):
            _issued_by(child, issuer)
        top = certs[-1]
        for root in self.roots:
            if top == root:
                return leaf.public_key(), kid
            if top.issuer == root.subject:
                try:
                    _issued_by(top, root)
                except ProvenanceError:
                    continue
                problem = validity_problem(root)
                if problem:
                    raise ProvenanceError(f"the trusted root: {problem}")
                return leaf.public_key(), kid
        raise ProvenanceError(
            f"certificate {leaf.subject.rfc4514_string()} (issued by {top.issuer.rfc4514_string()}) does not "
            f"chain to a trusted root (trusted: {self.describe()})"
        )


def _issued_by(child: Any, issuer: Any) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509 import BasicConstraints, ExtensionNotFound

    try:
        if not issuer.extensions.get_extension_for_class(BasicConstraints).value.ca:
            raise ProvenanceError(f"{issuer.subject.rfc4514_string()} is not a CA")
    except ExtensionNotFound:
        raise ProvenanceError(
            f"{issuer.subject.rfc4514_string()} is not a CA (no basicConstraints)"
        ) from None
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise ProvenanceError(
            f"certificate {child.subject.rfc4514_string()} was not issued by {issuer.subject.rfc4514_string()}"
        ) from None


def _check_signing_usage(leaf: Any) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        if (
            ExtendedKeyUsageOID.CODE_SIGNING
            in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ):
            return
    except x509.ExtensionNotFound:
        pass
    raise ProvenanceError(f"certificate {leaf.subject.rfc4514_string()} is not for signing")


def check_statement(payload: bytes, path: Path, ignore: tuple[str, ...] = ()) -> None:
    """The in-toto statement must list exactly PATH's files with their sha256 (and its subject digest must be the
    digest of that list)."""
    try:
        st = json.loads(payload)
        if st.get("_type") != STATEMENT_V1 or st.get("predicateType") != PREDICATE:
            raise ProvenanceError(
                f"the statement is {st.get('_type')!r}/{st.get('predicateType')!r}, not a model-signing statement"
            )
        subject = st["subject"]
        if len(subject) != 1:
            raise ProvenanceError(f"the statement has {len(subject)} subjects, expected 1")
        predicate = st["predicate"]
        ser = predicate["serialization"]
        resources = predicate["resources"]
        expected_root = subject[0]["digest"]["sha256"]
    except ProvenanceError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as e:
        raise ProvenanceError(f"the statement is malformed ({type(e).__name__}: {e})") from None
    if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
        raise ProvenanceError(
            f"the statement hashes by {ser.get('method')}/{ser.get('hash_type')}: only files/sha256 is checked here"
        )
    root = hashlib.sha256()
    signed: dict[str, str] = {}
    for r in resources:
        if r.get("algorithm") != "sha256":
            raise ProvenanceError(f"resource {r.get('name')!r} uses {r.get('algorithm')!r}, not sha256")
        digest = bytes.fromhex(r["digest"])
        root.update(digest)
        signed[r["name"]] = r["digest"]
    if root.hexdigest() != expected_root:
        raise ProvenanceError("the statement is inconsistent: its resources do not hash to its subject")
    ignored = [str(p) for p in ser.get("ignore_paths", [])] + list(ignore)
    actual = files_of(path, ignored, bool(ser.get("allow_symlinks")))
    missing = sorted(set(signed) - set(actual))
    extra = sorted(set(actual) - set(signed))
    changed = sorted(n for n in set(signed) & set(actual) if signed[n] != actual[n])
    problems = []
    if changed:
        problems.append(f"changed: {', '.join(changed[:5])}")
    if missing:
        problems.append(f"missing: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"not signed: {', '.join(extra[:5])}")
    if problems:
        raise ProvenanceError("the files do not match the signature (" + "; ".join(problems) + ")")


def files_of(path: Path, ignore: list[str], allow_symlinks: bool = False) -> dict[str, str]:
    """{relative POSIX name: sha256} of a model folder's files (a single file is named ``.``), leaving out the
    top-level IGNORE paths as model-signing does."""
    if path.is_file() and not path.is_symlink():
        return {".": sha256_file(path)}
    if not path.is_dir():
        raise ProvenanceError(f"model path {path} is neither a file nor a folder")
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = Path(dirpath).relative_to(path)
        dirnames[:] = sorted(d for d in dirnames if not (rel_dir == Path(".") and d in ignore))
        for fn in sorted(filenames):
            rel = (rel_dir / fn).as_posix()
            if rel_dir == Path(".") and fn in ignore:
                continue
            full = Path(dirpath) / fn
            if full.is_symlink() and not allow_symlinks:
                raise ProvenanceError(f"{rel} is a symbolic link: a signed model holds files only")
            out[rel] = sha256_file(full)
    return out
