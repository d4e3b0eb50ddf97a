"""`mlinfra models ...`: register, list, show, download and search models in a registry."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mlinfra import defaults
from mlinfra.progress import Progress
from mlinfra.registry import (
    ModelError,
    ModelRegistry,
    ModelVersion,
)


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ModelError(f"{what} {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _registry(args: argparse.Namespace) -> ModelRegistry:
    uri = defaults.model_registry_uri(args.registry)
    credential = os.environ.get("MLINFRA_REGISTRY_CREDENTIAL") or os.environ.get(
        "AZURE_STORAGE_CONNECTION_STRING"
    )
    return ModelRegistry(uri, credential)


def _row(mv: ModelVersion) -> str:
    tags = ",".join(f"{k}={v}" for k, v in mv.tags.items())
    return (
        f"{mv.name:24s} {mv.version:>4d}  {mv.sha256[:12]}  {mv.size_bytes:>12,d}  {mv.framework:7s} {tags}"
    )


def _print(mvs: list[ModelVersion], as_json: bool) -> None:
    if as_json:
        print(json.dumps([m.to_json() for m in mvs], indent=1))
        return
    print(f"{'NAME':24s} {'VER':>4s}  {'SHA256':12s}  {'SIZE':>12s}  {'FRAMEW.':7s} TAGS")
    for m in mvs:
        print(_row(m))


def cmd_register(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.signing_key:  # a key that cannot sign is refused before anything is registered
        from mlinfra.registry.signing import public_key_of

        public_key_of(
            _read_key(args.signing_key, "--signing-key"),
            os.environ.get("MLINFRA_SIGNING_KEY_PASSWORD") or None,
        )
    mv, created = reg.register(
        args.name,
        Path(args.path),
        framework=args.framework,
        description=args.description,
        tags=_kv(args.tag, "--tag") if args.tag else None,
        properties=_kv(args.property, "--property") if args.property else None,
        progress=Progress(Path(args.path).name),
    )
    signed_by = _sign(args, reg, mv.name, mv.version) if args.signing_key else None
    if args.json:
        print(json.dumps({**mv.to_json(), "created": created, "signed_by": signed_by}, indent=1))
    else:
        verb = "registered" if created else "unchanged, already"
        signed = f", signed by key {signed_by[:16]}…" if signed_by else ""
        print(
            f"{verb} {mv.name}:{mv.version} sha256:{mv.sha256} ({mv.size_bytes:,d} bytes) in {reg.uri}{signed}"
        )
    return 0


def _sign(args: argparse.Namespace, reg: ModelRegistry, name: str, version: int) -> str:
    """Sign with --signing-key/--key (password from $MLINFRA_SIGNING_KEY_PASSWORD), and --certificate-chain."""
    from mlinfra.registry.signing import sign_version

    key_file = getattr(args, "signing_key", None) or args.key
    chain = _read_key(args.certificate_chain, "--certificate-chain") if args.certificate_chain else None
    password = os.environ.get("MLINFRA_SIGNING_KEY_PASSWORD") or None
    return sign_version(reg, name, version, _read_key(key_file, "--signing-key"), password, chain)


def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    tags = _kv(args.tag, "--tag")
    mvs = reg.search(tags=tags, name=args.name) if (tags or args.name) else reg.search()
    if not args.all:
        latest: dict[str, ModelVersion] = {}
        for m in mvs:
            latest[m.name] = m
        mvs = list(latest.values())
    _print(mvs, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    mv = _registry(args).resolve(args.ref)
    if args.json:
        print(json.dumps(mv.to_json(), indent=1))
    else:
        doc: dict[str, Any] = mv.to_json()
        for k, v in doc.items():
            print(f"{k:12s} {json.dumps(v) if isinstance(v, dict | list) else v}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    reg = _registry(args)
    mv = reg.resolve(args.ref)
    bar = Progress(f"{mv.name}:{mv.version}")
    out = reg.download(f"{mv.name}:{mv.version}", Path(args.dest), lambda d, t: bar("downloading", d, t))
    if args.json:
        print(json.dumps({"path": str(out), "sha256": mv.sha256, "version": mv.version}))
    else:
        print(f"downloaded {mv.name}:{mv.version} to {out} (sha256 verified)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    mvs = _registry(args).search(tags=_kv(args.tag, "--tag"), properties=_kv(args.property, "--property"))
    _print(mvs, args.json)
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.delete:
        reg.delete_alias(args.name, args.alias)
        print(f"removed {args.name}@{args.alias}")
        return 0
    if args.version is None:
        now = reg.get_alias(args.name, args.alias)
        print(
            json.dumps({"alias": args.alias, "version": now})
            if args.json
            else f"{args.name}@{args.alias} -> {now}"
        )
        return 0 if now is not None else 1
    reg.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> {args.version}")
    return 0


def _read_key(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{what} {path!r} cannot be read: {e}") from None


def cmd_sign(args: argparse.Namespace) -> int:
    reg = _registry(args)
    mv = reg.resolve(args.ref)
    kid = _sign(args, reg, mv.name, mv.version)
    if args.json:
        print(json.dumps({"model": f"{mv.name}:{mv.version}", "key_id": kid}))
    else:
        print(f"signed {mv.name}:{mv.version} with key {kid[:16]}… (the version is unchanged)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mlinfra.registry.signing import verify_version

    reg = _registry(args)
    mv = reg.resolve(args.ref)
    result = verify_version(reg, mv.name, mv.version, _read_key(args.public_key, "--public-key"))
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        verdict = "verified" if result.ok else "REFUSED"
        print(f"{mv.name}:{mv.version} {verdict} for key {result.key_id[:16]}…: {result.reason}")
    return 0 if result.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="register, list, show, download, search, sign and verify models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--registry",
            help="registry URI (default: $MLINFRA_REGISTRY, else ./.mlinfra/registry); "
            "credential from $MLINFRA_REGISTRY_CREDENTIAL",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = msub.add_parser("register", help="register PATH as the next version of NAME (no-op if unchanged)")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--framework", default="onnx", choices=["onnx", "custom"])
    p.add_argument("--description")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--property", action="append", metavar="K=V")
    p.add_argument(
        "--signing-key",
        metavar="PEM",
        help="sign the new version with this EC private key (password: $MLINFRA_SIGNING_KEY_PASSWORD)",
    )
    p.add_argument(
        "--certificate-chain",
        metavar="PEM",
        help="the signing key's certificate, then its issuers: verifiers may trust the root instead of the key",
    )
    common(p)
    p.set_defaults(func=cmd_register)

    p = msub.add_parser("list", help="latest version of each model (--all: every version)")
    p.add_argument("--name")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--all", action="store_true")
    common(p)
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("show", help="one version: NAME (latest), NAME:VERSION or NAME@ALIAS")
    p.add_argument("ref")
    common(p)
    p.set_defaults(func=cmd_show)

    p = msub.add_parser("download", help="download NAME[:VERSION|@ALIAS] to DEST, verifying sha256")
    p.add_argument("ref")
    p.add_argument("dest")
    common(p)
    p.set_defaults(func=cmd_download)

    p = msub.add_parser(
        "alias",
        help="show NAME@ALIAS, point it at VERSION, or --delete it (a stack's ModelAlias is moved back by `pulumi up`"
        " after a refresh)",
    )
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", nargs="?", type=int)
    p.add_argument("--delete", action="store_true")
    common(p)
    p.set_defaults(func=cmd_alias)

    p = msub.add_parser(
        "sign",
        help="sign NAME[:VERSION|@ALIAS] with an EC private key (PEM file; its password in "
        "$MLINFRA_SIGNING_KEY_PASSWORD): adds an OpenSSF model-signing bundle, never changes the version",
    )
    p.add_argument("ref")
    p.add_argument("--key", required=True, help="private key (PEM) file")
    p.add_argument(
        "--certificate-chain", metavar="PEM", help="the key's certificate, then its issuers (PEM file)"
    )
    common(p)
    p.set_defaults(func=cmd_sign)

    p = msub.add_parser(
        "verify",
        help="check a version's files against its signature by the owner of PUBLIC_KEY (exit 1: refused)",
    )
    p.add_argument("ref")
    p.add_argument(
        "--public-key",
        required=True,
        help="public key (PEM) file of the signer — or a root certificate the signer's certificate chains to",
    )
    common(p)
    p.set_defaults(func=cmd_verify)

    p = msub.add_parser("search", help="versions whose tags and properties match all of the given ones")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--property", action="append", metavar="K=V")
    common(p)
    p.set_defaults(func=cmd_search)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
