"""The `mlinfra` command line.

Errors a user can act on are printed as one `error:` line naming the value and the fix, with exit code 2 — never a
bare traceback (set MLINFRA_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from importlib import metadata

from mlinfra import engine, services


class UserError(Exception):
    """An error caused by input or environment that the user can fix; the message says how."""


def _version(args: argparse.Namespace) -> int:
    status = engine.engine_status()
    info = {
        "mlinfra": metadata.version("mlinfra"),
        "pulumi_sdk": metadata.version("pulumi"),
        "engine": status.version or "missing",
        "engine_dir": str(status.bin_dir) if status.bin_dir else None,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"mlinfra {info['mlinfra']} (pulumi SDK {info['pulumi_sdk']}, engine {info['engine']})")
    return 0


def doctor_checks() -> list[tuple[str, bool, str, str]]:
    """(name, ok, detail, fix) for the engine, each plugin and each service."""
    checks: list[tuple[str, bool, str, str]] = []
    pins = engine.pinned_versions()
    st = engine.engine_status()
    checks.append(
        (
            "pulumi CLI",
            st.ok,
            f"{st.version} at {st.bin_dir}" if st.version else "no pulumi found (.mlinfra/engine or PATH)",
            f"make setup (builds pulumi v{st.expected} from Go modules)",
        )
    )
    bin_dir = st.bin_dir
    for name, what in [
        ("pulumi-language-python", "Python language host"),
        ("pulumi-language-python-exec", "the language host's executor script"),
        ("pulumi-resource-pulumi-python", "Python dynamic provider launcher"),
    ]:
        present = bin_dir is not None and (bin_dir / name).exists()
        checks.append((name, present, what + (f" in {bin_dir}" if present else " is missing"), "make setup"))
    kv = pins.get("PULUMI_KUBERNETES_VERSION", "?")
    plugin = engine.pulumi_home() / "plugins" / f"resource-kubernetes-v{kv}" / "pulumi-resource-kubernetes"
    checks.append(
        (
            "kubernetes plugin",
            plugin.exists(),
            f"v{kv} in {plugin.parent}"
            if plugin.exists()
            else f"v{kv} is not installed in {engine.pulumi_home()}",
            "make setup",
        )
    )
    from mlinfra.kube import BINARIES, kube_bin_dir

    kube_missing = [b for b in BINARIES if not (kube_bin_dir() / b).exists()]
    checks.append(
        (
            "kubernetes control plane",
            not kube_missing,
            f"kube-apiserver, etcd, kwok, ... in {kube_bin_dir()}"
            if not kube_missing
            else f"{', '.join(kube_missing)} not built",
            "make kube (builds them from Go modules; part of make setup)",
        )
    )
    for name, svc in services.SERVICES.items():
        try:
            ok = svc.check()
            address = svc.address()
        except services.ServiceError as e:
            ok, address = False, str(e)
        pid = services._read_pid(name)
        if ok:
            detail = f"{svc.description} at {address}"
        elif services._pid_file(name).exists() and pid is None:
            detail = f"{svc.description} is not answering at {address}: the process mlinfra started has died"
        else:
            detail = f"{svc.description} is not answering at {address}"
        checks.append((name, ok, detail, svc.fix))
    return checks


def _doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks()
    if args.json:
        print(json.dumps([{"name": n, "ok": ok, "detail": d, "fix": f} for n, ok, d, f in checks]))
    else:
        width = max(len(n) for n, *_ in checks)
        for name, ok, detail, fix in checks:
            mark = "ok " if ok else "MISSING"
            line = f"{mark:7s} {name:{width}s}  {detail}"
            if not ok:
                line += f"\n        {'':{width}s}  fix: {fix}"
            print(line)
        bad = [n for n, ok, *_ in checks if not ok]
        print("all good" if not bad else f"{len(bad)} problem(s): {', '.join(bad)}")
    return 0 if all(ok for _, ok, *_ in checks) else 1


def _services(args: argparse.Namespace) -> int:
    names = args.names or None
    try:
        if args.action == "up":
            services.ensure(names)
        elif args.action == "down":
            services.down(names)
        else:
            for name, ok in services.status().items():
                print(f"{name:12s} {'up' if ok else 'down'}")
    except services.ServiceError as e:
        raise UserError(str(e)) from e
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlinfra",
        description="Declarative ML model lifecycle on Pulumi: register, package, deploy, monitor, update.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("version", help="print mlinfra, SDK and engine versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_version)

    p = sub.add_parser(
        "doctor", help="check the engine, plugins and local services; say how to fix what is missing"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_doctor)

    p = sub.add_parser(
        "services", help="start, stop or list the local services (docker, registry, azurite, ...)"
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "names", nargs="*", metavar="SERVICE", help=f"default: all of {', '.join(services.SERVICES)}"
    )
    p.set_defaults(func=_services)

    for register in _extensions():
        register(sub)
    return parser


def _serve_register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "serve",
        help="serve ONNX models over the Open Inference Protocol (mlinfra serve --help)",
        add_help=False,
    )


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:
    from mlinfra import cli_edge, cli_endpoints, cli_gitops, cli_images, cli_models, monitor

    return [
        cli_models.register,
        cli_gitops.register,
        cli_images.register,
        cli_edge.register,
        cli_endpoints.register,
        monitor.register,
        _serve_register,
    ]


def _user_errors() -> tuple[type[Exception], ...]:
    from mlinfra import cli_edge, cli_endpoints, cli_gitops, cli_images, cli_models, monitor

    return (
        *cli_gitops.USER_ERRORS,
        *monitor.USER_ERRORS,
        UserError,
        *cli_models.USER_ERRORS,
        *cli_images.USER_ERRORS,
        *cli_edge.USER_ERRORS,
        *cli_endpoints.USER_ERRORS,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the scoring server has its own parser (components never import mlinfra)
        from components.scoring.cli import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["edge-agent"]:
        from components.edge.cli import main as agent_main

        return agent_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("MLINFRA_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set MLINFRA_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
