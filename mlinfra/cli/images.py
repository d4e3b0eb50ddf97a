"""`mlinfra images list`: scoring images in an OCI registry, with the model versions each one holds; `mlinfra images
verify REF --public-key K`: the image's provenance attestation, signed by K's owner (mlinfra.images.attest)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlinfra import defaults
from mlinfra.errors import ImageBuildError
from mlinfra.images.builder import _client, list_images, split_ref


def cmd_list(args: argparse.Namespace) -> int:
    images = list_images(args.registry or defaults.registry_url(), args.model)
    if args.json:
        print(json.dumps(images, indent=1))
        return 0
    print(f"{'IMAGE':80s} MODELS")
    for img in images:
        models = ", ".join(f"{m['name']}:{m['version']}" for m in img["models"])
        print(f"{img['image_ref']:80s} {models}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mlinfra.images.attest import verify_attestation

    host, repo, digest = split_ref(args.ref)
    if not digest.startswith("sha256:"):
        raise ImageBuildError(f"{args.ref}: give the image by digest (host/repo@sha256:…), not by tag")
    try:
        public = Path(args.public_key).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ImageBuildError(f"--public-key {args.public_key!r} cannot be read: {e}") from None
    try:
        statement = verify_attestation(_client(host), repo, digest, public)
    except ImageBuildError as e:
        if args.json:
            print(json.dumps({"ok": False, "image": args.ref, "reason": str(e)}, indent=1))
        else:
            print(f"{args.ref} REFUSED: {e}")
        return 1
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    if args.json:
        print(json.dumps({"ok": True, "image": args.ref, "statement": statement}, indent=1))
    else:
        print(f"{args.ref} verified: SLSA provenance signed by the key's owner")
        for d in deps:
            if d["name"] == "base" or d["name"].startswith("model:"):
                signers = ", ".join(s[:16] + "…" for s in (d.get("annotations") or {}).get("signers", []))
                print(
                    f"  {d['uri']}  sha256:{d['digest']['sha256'][:12]}…"
                    + (f"  signed by {signers}" if signers else "")
                )
        print(f"  {sum(1 for d in deps if d['name'].startswith('wheel:'))} dependency wheels by sha256")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    images = sub.add_parser("images", help="list scoring images in an OCI registry; verify their provenance")
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    p = isub.add_parser("list", help="images built by mlinfra (optionally those holding --model NAME)")
    p.add_argument("--registry", help="registry URL (default: the local registry, http://127.0.0.1:5000)")
    p.add_argument("--model", help="only images that hold this model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = isub.add_parser(
        "verify",
        help="check an image's SLSA provenance attestation (as ScoringImage attaches it) against a public key",
    )
    p.add_argument("ref", help="host/repo@sha256:…")
    p.add_argument("--public-key", required=True, help="the signer's public key (PEM file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
