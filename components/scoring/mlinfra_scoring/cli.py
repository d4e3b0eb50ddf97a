"""Command line and environment configuration of the scoring server (`mlinfra serve`, `python -m
mlinfra_scoring`). Every flag --foo-bar can also be set as MLINFRA_SERVE_FOO_BAR, which is how images and
endpoints configure it; repeatable flags take comma-separated lists there (MLINFRA_SERVE_MODEL uses os.pathsep).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from mlinfra_scoring.server import ModelSpec, ServerConfig, run

MAX_BUSY_POLL_US = 10_000
"""The longest busy-poll window --busy-poll-us takes (10 ms): a client's turnaround is tens to hundreds of µs."""
PINNED_BUSY_POLL_US = 300.0
"""The busy-poll window when none is given and the server is pinned to cores of its own (:func:`pinned`)."""


def pinned() -> bool:
    """Whether this process may run on fewer CPUs than the machine has: someone gave it cores of its own (taskset,
    ``docker run --cpuset-cpus``, Kubernetes' static CPU manager for a Guaranteed pod with whole CPUs), so spinning
    on them between requests takes nothing from anyone else."""
    try:
        return len(os.sched_getaffinity(0)) < (os.cpu_count() or 0)
    except (AttributeError, OSError):  # not Linux
        return False


class ConfigError(ValueError):
    pass


def _env(name: str) -> str | None:
    v = os.environ.get(f"MLINFRA_SERVE_{name}")
    return v if v not in (None, "") else None


def build_parser(prog: str = "mlinfra serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Serve ONNX models over the Open Inference Protocol v2."
    )
    p.add_argument(
        "--model", action="append", metavar="PATH", help="model file or folder (repeat for several)"
    )
    p.add_argument(
        "--name", action="append", help="name of the model at the same position (default: file stem)"
    )
    p.add_argument(
        "--version", action="append", help="version of the model at the same position (default: 1)"
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the Open Inference Protocol over gRPC on this port (default: off)",
    )
    p.add_argument(
        "--grpc-frontend",
        default=None,
        metavar="PATH|grpcio",
        help="gRPC through the native front end at PATH (default: mlinfra-grpcfront on PATH, as images have it), "
        "or 'grpcio' for the in-process service",
    )
    p.add_argument("--key", action="append", help="accepted bearer key (repeat to rotate); default: no auth")
    p.add_argument("--script", help="Azure ML-style scoring script with init() and run(raw_data)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="rows per merged batch, every model (1: off; default: 64 for models with a dynamic batch axis)",
    )
    p.add_argument(
        "--max-batch-delay-ms", type=float, default=None, help="batch window (default 0: same tick)"
    )
    p.add_argument("--max-body-mb", type=float, default=None, help="request body limit (default 10)")
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="close a connection with no request for this long: idle keep-alive, silent or slow headers (default 15)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=None,
        help="time to receive a request body, else 408 (default 30)",
    )
    p.add_argument(
        "--drain-linger-s",
        type=float,
        default=None,
        help="on SIGTERM, keep open connections this long at most, answering with 'Connection: close', so a proxy "
        "that pools connections (nginx behind a Kubernetes Service) is never cut mid-request (default 0)",
    )
    p.add_argument(
        "--max-connections", type=int, default=None, help="open connections at most (default 1024)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="inference requests in progress at most; one more gets 503 + Retry-After (default 256)",
    )
    p.add_argument(
        "--busy-poll-us",
        type=float,
        default=None,
        help="when a request is answered and none is waiting, keep polling for the next one up to this many "
        f"microseconds before sleeping, if the last gap was shorter (adaptive spin-then-block, at most "
        f"{MAX_BUSY_POLL_US:,}): more one-connection throughput for CPU that a CPU-based autoscaler counts; for "
        f"replicas with cores of their own (default: {PINNED_BUSY_POLL_US:g} when the server is pinned to fewer CPUs "
        "than the machine has, else 0: off)",
    )
    p.add_argument(
        "--providers", default=None, help="ONNX Runtime execution providers in order, comma-separated"
    )
    p.add_argument(
        "--trust",
        metavar="DIR",
        help="serve only models whose files match a signature by a key in DIR/keys (bundles in "
        "DIR/signatures/<model>/<version>/); see mlinfra_scoring.provenance",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not write JSON access logs to stdout")
    p.add_argument(
        "--no-direct-path",
        action="store_true",
        help="send every request through aiohttp's handler, including whole one-read inference requests that the "
        "direct path answers from the connection's bytes by default (the same answers; for comparisons)",
    )
    return p


def config_from(args: argparse.Namespace) -> ServerConfig:
    models = args.model or ((_env("MODEL") or "").split(os.pathsep) if _env("MODEL") else [])
    names = args.name or ((_env("NAME") or "").split(",") if _env("NAME") else [])
    versions = args.version or ((_env("VERSION") or "").split(",") if _env("VERSION") else [])
    if not models:
        raise ConfigError("no model given: pass --model PATH (or set MLINFRA_SERVE_MODEL)")
    if len(names) > len(models) or len(versions) > len(models):
        raise ConfigError(
            f"{len(names)} --name and {len(versions)} --version for {len(models)} --model: "
            "give at most one of each per model, in the same order"
        )
    specs = []
    for i, path in enumerate(models):
        if not Path(path).exists():
            raise ConfigError(f"model path {path!r} does not exist")
        name = names[i] if i < len(names) else Path(path).stem
        specs.append(ModelSpec(path=path, name=name, version=versions[i] if i < len(versions) else "1"))
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"model names must be unique, got {[s.name for s in specs]}: pass --name for each")
    trust = args.trust or _env("TRUST")
    if trust is not None and not Path(trust).is_dir():
        raise ConfigError(f"trust folder {trust!r} does not exist (--trust / MLINFRA_SERVE_TRUST)")
    keys = args.key or [k for k in (_env("KEYS") or "").split(",") if k]

    def num(value: object, env: str, default: float, cast: type = float, lo: float = 0) -> float:
        raw = value if value is not None else _env(env)
        if raw is None:
            return default
        try:
            v = cast(raw)
        except ValueError:
            raise ConfigError(f"MLINFRA_SERVE_{env}={raw!r} is not a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"--{env.lower().replace('_', '-')} must be a finite number, got {v}")
        if v < lo:
            raise ConfigError(f"--{env.lower().replace('_', '-')} must be ≥ {lo}, got {v}")
        return v

    port = int(num(args.port, "PORT", 8080, int, 1))
    if port > 65535:
        raise ConfigError(f"--port must be ≤ 65535, got {port}")
    grpc_port = int(num(args.grpc_port, "GRPC_PORT", 0, int, 0)) or None
    if grpc_port is not None and (grpc_port > 65535 or grpc_port == port):
        raise ConfigError(f"--grpc-port must be ≤ 65535 and differ from --port {port}, got {grpc_port}")
    frontend = args.grpc_frontend or _env("GRPC_FRONTEND")
    if frontend not in (None, "", "grpcio") and not (
        Path(frontend).is_file() and os.access(frontend, os.X_OK)
    ):
        raise ConfigError(
            f"--grpc-frontend {frontend!r} is not an executable file: give the path of mlinfra-grpcfront, or "
            "'grpcio' for the in-process gRPC service"
        )
    # Unset: on (PINNED_BUSY_POLL_US) when the server is pinned to cores of its own, else off.
    busy_poll_us = num(args.busy_poll_us, "BUSY_POLL_US", PINNED_BUSY_POLL_US if pinned() else 0.0)
    if busy_poll_us > MAX_BUSY_POLL_US:
        raise ConfigError(
            f"--busy-poll-us must be ≤ {MAX_BUSY_POLL_US} ({MAX_BUSY_POLL_US // 1000} ms), got {busy_poll_us:g}: "
            "a few hundred microseconds covers a client's turnaround"
        )
    return ServerConfig(
        models=specs,
        grpc_frontend=frontend or None,
        host=args.host or _env("HOST") or "127.0.0.1",
        port=port,
        grpc_port=grpc_port,
        keys=keys,
        script=args.script or _env("SCRIPT"),
        max_batch_size=batch
        if (batch := int(num(args.max_batch_size, "MAX_BATCH_SIZE", 0, int, 1)))
        else None,
        max_batch_delay_ms=num(args.max_batch_delay_ms, "MAX_BATCH_DELAY_MS", 0.0),
        max_body_mb=num(args.max_body_mb, "MAX_BODY_MB", 10.0, float, 0.001),
        idle_timeout_s=num(args.idle_timeout_s, "IDLE_TIMEOUT_S", 15.0, float, 0.1),
        body_timeout_s=num(args.body_timeout_s, "BODY_TIMEOUT_S", 30.0, float, 0.1),
        max_connections=int(num(args.max_connections, "MAX_CONNECTIONS", 1024, int, 1)),
        max_queue=int(num(args.max_queue, "MAX_QUEUE", 256, int, 1)),
        drain_linger_s=num(args.drain_linger_s, "DRAIN_LINGER_S", 0.0),
        busy_poll_us=busy_poll_us,
        trust=trust,
        access_log=not (args.no_access_log or _env("NO_ACCESS_LOG") in ("1", "true")),
        direct_path=not (args.no_direct_path or _env("NO_DIRECT_PATH") in ("1", "true")),
        providers=[
            p for p in (args.providers or _env("PROVIDERS") or "CPUExecutionProvider").split(",") if p
        ],
    )


def main(argv: list[str] | None = None, prog: str = "mlinfra serve") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mlinfra_scoring.collector import CollectorConfigError
    from mlinfra_scoring.otel import OtlpConfigError

    try:
        return run(config)
    except CollectorConfigError as e:
        print(f"error: data collection: {e}", file=sys.stderr)
        return 2
    except OtlpConfigError as e:
        print(f"error: telemetry: {e}", file=sys.stderr)
        return 2
