"""`mlinfra version`, `mlinfra doctor` and `mlinfra services up|down|status`: the engine and the local lab."""

from __future__ import annotations

import argparse
import json
from importlib import metadata

from mlinfra import engine
from mlinfra.errors import ServiceError
from mlinfra.lab import services


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
    from importlib.metadata import version

    sdk, want_sdk = version("pulumi"), pins.get("PULUMI_SDK_VERSION", "?")
    checks.append(
        (
            "pulumi Python SDK",
            sdk == want_sdk,
            f"{sdk} (engine/versions.env pins {want_sdk}; the CLI may be newer, never older)",
            "make setup (reinstalls the project's virtualenv)",
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
    for name, key in (
        ("kubernetes", "PULUMI_KUBERNETES_VERSION"),
        ("docker-build", "PULUMI_DOCKER_BUILD_VERSION"),
    ):
        v = pins.get(key, "?")
        plugin = engine.pulumi_home() / "plugins" / f"resource-{name}-v{v}" / f"pulumi-resource-{name}"
        checks.append(
            (
                f"{name} plugin",
                plugin.exists(),
                f"v{v} in {plugin.parent}"
                if plugin.exists()
                else f"v{v} is not installed in {engine.pulumi_home()}",
                "make setup",
            )
        )
    yv = pins.get("PULUMI_YAML_VERSION", "?")
    yaml_host = bin_dir / "pulumi-language-yaml" if bin_dir is not None else None
    checks.append(
        (
            "pulumi-language-yaml",
            yaml_host is not None and yaml_host.exists(),
            f"Pulumi YAML language host v{yv} in {bin_dir} (YAML programs use the mlinfra package)"
            if yaml_host is not None and yaml_host.exists()
            else f"the Pulumi YAML language host v{yv} is missing",
            "make setup",
        )
    )
    buildkitd = services.buildkitd_binary()
    checks.append(
        (
            "buildkitd",
            buildkitd.exists(),
            f"BuildKit {pins.get('BUILDKIT_VERSION', '?')} at {buildkitd}"
            if buildkitd.exists()
            else f"buildkitd is not built at {buildkitd}",
            "make setup",
        )
    )
    from mlinfra.lab.cluster import BINARIES, kube_bin_dir
    from mlinfra.lab.node import NODE_BINARIES

    kube_missing = [b for b in (*BINARIES, *NODE_BINARIES) if not (kube_bin_dir() / b).exists()]
    checks.append(
        (
            "kubernetes binaries",
            not kube_missing,
            f"kube-apiserver, etcd, kwok, kubelet, kube-proxy, metrics-server, pause in {kube_bin_dir()}"
            if not kube_missing
            else f"{', '.join(kube_missing)} not built",
            "make kube (builds them from Go modules; part of make setup)",
        )
    )
    from mlinfra.images import grpcfront

    front = grpcfront.target()
    checks.append(
        (
            "gRPC front end",
            front is not None and front.is_file(),
            f"mlinfra-grpcfront at {front} (images carry it; mlinfra serve --grpc-port runs it)"
            if front is not None and front.is_file()
            else "mlinfra-grpcfront is not built for these sources (images would serve gRPC with grpcio)",
            "make grpcfront (go build of components/grpcfront; part of make setup)",
        )
    )
    for name, svc in services.SERVICES.items():
        try:
            ok = svc.check()
            address = svc.address()
        except ServiceError as e:
            ok, address = False, str(e)
        pid = services._read_pid(name)
        if ok:
            detail = f"{svc.description} at {address}"
            if name == "mosquitto":
                detail += _broker_security()
        elif name == "mosquitto" and services._mosquitto_outdated():
            detail = (
                f"{svc.description} at {address} runs with a password file (before the dynamic security plugin): "
                "`mlinfra services up mosquitto` restarts it (devices keep their passwords)"
            )
        elif services._pid_file(name).exists() and pid is None:
            detail = f"{svc.description} is not answering at {address}: the process mlinfra started has died"
        else:
            detail = f"{svc.description} is not answering at {address}"
        checks.append((name, ok, detail, svc.fix))
    return checks


def _broker_security() -> str:
    """The local broker's security mode and device count, for doctor's mosquitto line."""
    from mlinfra.lab.broker import security_status

    try:
        s = security_status()
    except Exception as e:  # a broker that answers but is not administrable says so, not crashes doctor
        return f" (security mode unknown: {e})"
    return f" ({s['mode']}, {s['devices']} devices)"


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
        elif args.json:
            info = {n: services.describe(n) for n in (names or services.SERVICES)}
            print(json.dumps(info[names[0]] if names and len(names) == 1 else info, indent=1))
        else:
            for name, ok in services.status(names).items():
                print(f"{name:12s} {'up' if ok else 'down'}")
    except ServiceError:
        raise
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--json", action="store_true", help="status: what each service is and where it listens")
    p.add_argument(
        "names", nargs="*", metavar="SERVICE", help=f"default: all of {', '.join(services.SERVICES)}"
    )
    p.set_defaults(func=_services)
