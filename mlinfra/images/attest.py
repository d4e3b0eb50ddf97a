"""Image provenance: a signed SLSA provenance statement for each ScoringImage, attached in its OCI registry the way
cosign attaches attestations, so that ``cosign verify-attestation --key`` accepts it.

The statement (in-toto Statement v1, predicate SLSA provenance v1) names the image by digest and what it was made
from: every model version with its sha256 and signers, the base image's digest, the dependency wheels with their
sha256, the scoring server's format and the builder (mlinfra's daemonless builder, or BuildKit for a Dockerfile). It
has no timestamps: the same inputs give the same statement.

It is signed as a DSSE envelope (ECDSA over the pre-authentication encoding) with the stack's signing key and
stored where cosign looks for attestations: an OCI image tagged ``sha256-<image digest hex>.att`` in the image's
repository, one layer per attestation (media type ``application/vnd.dsse.envelope.v1+json``, annotated with its
``predicateType``). Attaching again with the same key and statement changes nothing; another statement or signer is
added beside the ones there. No transparency log (Rekor needs public services these machines cannot reach): verify
with ``cosign verify-attestation --key K --type slsaprovenance1 --insecure-ignore-tlog``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from mlinfra.errors import ImageBuildError
from mlinfra.images.oci import RegistryClient, put_oci_manifest
from mlinfra_scoring.provenance import hash_for, pae

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
BUILD_TYPE = "https://github.com/mlinfra/mlinfra/scoring-image/v1"


def attestation_tag(digest: str) -> str:
    """Where cosign keeps an image's attestations: ``sha256-<hex>.att``."""
    return digest.replace(":", "-") + ".att"


def provenance_statement(
    image: str,
    digest: str,
    *,
    models: list[dict[str, Any]],
    base: str,
    base_digest: str,
    wheels: dict[str, str],
    builder_id: str,
    builder_version: dict[str, str],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """The in-toto statement of IMAGE@DIGEST (IMAGE is host/repo). MODELS: name, version, sha256, signers (key ids);
    WHEELS: {wheel file name: sha256}."""
    deps: list[dict[str, Any]] = [
        {"name": "base", "uri": f"oci://{base.split('@', 1)[0]}", "digest": {"sha256": _hex(base_digest)}}
    ]
    for m in sorted(models, key=lambda m: m["name"]):
        deps.append(
            {
                "name": f"model:{m['name']}",
                "uri": f"mlinfra-model:{m['name']}:{int(m['version'])}",
                "digest": {"sha256": m["sha256"]},
                "annotations": {"signers": sorted(m.get("signers") or [])},
            }
        )
    for wheel, sha in sorted(wheels.items()):
        deps.append({"name": f"wheel:{wheel}", "uri": f"pypi:{wheel}", "digest": {"sha256": sha}})
    return {
        "_type": STATEMENT_V1,
        "subject": [{"name": image, "digest": {"sha256": _hex(digest)}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": parameters,
                "resolvedDependencies": deps,
            },
            "runDetails": {"builder": {"id": builder_id, "version": builder_version}},
        },
    }


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _payload(statement: dict[str, Any]) -> bytes:
    """The statement as signed: canonical JSON (sorted keys, no spaces), so the same statement is the same bytes."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_envelope(statement: dict[str, Any], private_key_pem: str) -> bytes:
    """A DSSE envelope of STATEMENT signed with the EC key (SHA-256/384/512 by curve size, as cosign verifies)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from mlinfra.registry.signing import _load_private_key

    key = _load_private_key(private_key_pem)
    payload = _payload(statement)
    sig = key.sign(pae(IN_TOTO, payload), ec.ECDSA(hash_for(key)))
    envelope = {
        "payloadType": IN_TOTO,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def _verifies(envelope: dict[str, Any], public_key: Any) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        for s in envelope.get("signatures") or []:
            try:
                public_key.verify(
                    base64.b64decode(s["sig"]),
                    pae(envelope["payloadType"], payload),
                    ec.ECDSA(hash_for(public_key)),
                )
                return True
            except InvalidSignature:
                continue
    except (ValueError, KeyError, TypeError):
        return False
    return False


def _attestations(client: RegistryClient, repo: str, digest: str) -> list[tuple[dict[str, Any], bytes]]:
    """The layers (descriptor, envelope bytes) of the image's attestation manifest; [] when it has none."""
    found = client.get_manifest(repo, attestation_tag(digest))
    if found is None:
        return []
    return [(layer, client.get_blob(repo, layer["digest"])) for layer in found[1].get("layers") or []]


def attach(
    client: RegistryClient,
    repo: str,
    digest: str,
    envelope: bytes,
    predicate_type: str,
    existing: list[tuple[dict[str, Any], bytes]] | None = None,
) -> str:
    """Add ENVELOPE to the image's attestations (``sha256-<hex>.att``), keeping the ones there (EXISTING, when the
    caller has just read them). Returns the attestation manifest's digest."""
    if existing is None:
        existing = _attestations(client, repo, digest)
    layer_digest = "sha256:" + hashlib.sha256(envelope).hexdigest()
    client.push_blob(repo, layer_digest, envelope)
    layers = [layer for layer, _ in existing] + [
        {
            "mediaType": DSSE_LAYER,
            "digest": layer_digest,
            "size": len(envelope),
            "annotations": {"dev.cosignproject.cosign/signature": "", "predicateType": predicate_type},
        }
    ]
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return put_oci_manifest(client, repo, attestation_tag(digest), config, layers)


def attach_signed(
    client: RegistryClient, repo: str, digest: str, statement: dict[str, Any], private_key_pem: str
) -> dict[str, str]:
    """Sign STATEMENT with the key and attach it (unless the same statement by the same key is there already).
    Returns {"tag", "manifest_digest", "key_id", "predicate_type"}."""
    from mlinfra.registry.signing import _load_public_key, key_id, public_key_of

    pem = public_key_of(private_key_pem)
    public = _load_public_key(pem)
    payload = base64.b64encode(_payload(statement)).decode()
    existing = _attestations(client, repo, digest)
    for _layer, data in existing:
        try:
            other = json.loads(data)
        except ValueError:
            continue
        if other.get("payload") == payload and _verifies(other, public):
            manifest_digest = client.manifest_digest(repo, attestation_tag(digest)) or ""
            break
    else:
        envelope = sign_envelope(statement, private_key_pem)
        manifest_digest = attach(client, repo, digest, envelope, statement["predicateType"], existing)
    return {
        "tag": attestation_tag(digest),
        "manifest_digest": manifest_digest,
        "key_id": key_id(pem),
        "predicate_type": statement["predicateType"],
    }


def verify_attestation(
    client: RegistryClient,
    repo: str,
    digest: str,
    public_key_pem: str,
    predicate_type: str = SLSA_PROVENANCE_V1,
) -> dict[str, Any]:
    """The statement of the image's attestation signed by the public key's owner, of PREDICATE_TYPE, whose subject
    is the image's digest; raises ImageBuildError saying what is missing or wrong."""
    from mlinfra.registry.signing import _load_public_key, key_id

    public = _load_public_key(public_key_pem)
    atts = _attestations(client, repo, digest)
    if not atts:
        raise ImageBuildError(
            f"{repo}@{digest[:19]}… has no attestations ({attestation_tag(digest)} is missing)"
        )
    reasons = []
    for layer, data in atts:
        if layer.get("mediaType") != DSSE_LAYER:
            continue
        try:
            envelope = json.loads(data)
            statement = json.loads(base64.b64decode(envelope["payload"]))
        except (ValueError, KeyError, TypeError):
            reasons.append("an attestation is not a DSSE envelope of a JSON statement")
            continue
        if statement.get("predicateType") != predicate_type:
            continue
        if not _verifies(envelope, public):
            reasons.append(
                f"a {predicate_type} attestation is not signed by key {key_id(public_key_pem)[:16]}…"
            )
            continue
        subjects = [s.get("digest", {}).get("sha256") for s in statement.get("subject") or []]
        if _hex(digest) not in subjects:
            reasons.append("a signed attestation names another image")
            continue
        return dict(statement)
    raise ImageBuildError(
        f"{repo}@{digest[:19]}… has no {predicate_type} attestation signed by key {key_id(public_key_pem)[:16]}…"
        + (f": {'; '.join(reasons)}" if reasons else "")
    )
