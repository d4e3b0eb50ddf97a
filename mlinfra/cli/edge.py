"""`mlinfra edge devices|provision`: the fleet as the platform sees it (the agent itself is `mlinfra edge-agent`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlinfra.edge.fleet import Broker, read_fleet
from mlinfra.lab.broker import provision_devices, security_status
from mlinfra_edge.condition import parse


def _broker(args: argparse.Namespace) -> Broker:
    if args.broker:
        return Broker(
            args.broker,
            os.environ.get("MLINFRA_MQTT_USERNAME", ""),
            os.environ.get("MLINFRA_MQTT_PASSWORD", ""),
        )
    return Broker.local()


def cmd_devices(args: argparse.Namespace) -> int:
    cond = parse(args.condition) if args.condition else None
    fleet = read_fleet(_broker(args))
    rows = []
    for device, twin in sorted(fleet.twins.items()):
        if cond and not cond.matches(twin):
            continue
        rows.append(
            {
                "device_id": device,
                "status": twin.get("status"),
                "tags": twin.get("tags", {}),
                "models": twin.get("models", {}),
                "deployments": {d: s.get("state") for d, s in fleet.statuses.get(device, {}).items()},
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'DEVICE':24s} {'STATUS':8s} {'TAGS':36s} {'MODELS':28s} DEPLOYMENTS")
    for r in rows:
        tags = ",".join(f"{k}={v}" for k, v in r["tags"].items())
        models = ",".join(f"{k}:{v['version']}" for k, v in r["models"].items())
        deps = ",".join(f"{k}={v}" for k, v in r["deployments"].items())
        print(f"{r['device_id']:24s} {r['status'] or '?':8s} {tags:36s} {models:28s} {deps}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    creds = provision_devices(args.device_ids)
    status = security_status()
    print(
        json.dumps(
            {
                "broker": Broker.local().url,
                "security": status["mode"],
                "device_count": status["devices"],
                "devices": creds,
            },
            indent=1,
        )
    )
    print(
        f"{len(creds)} device(s) provisioned on the local broker ({status['mode']}, {status['devices']} devices); "
        "only a rotated device's own session was closed",
        file=sys.stderr,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser("edge", help="the edge fleet: list devices, provision device credentials")
    esub = edge.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    p = esub.add_parser("devices", help="devices with their status, tags, models and deployment states")
    p.add_argument("--condition", help="only devices matching this target condition")
    p.add_argument(
        "--broker",
        help="mqtt://HOST:PORT (credentials: $MLINFRA_MQTT_USERNAME/PASSWORD); "
        "default: the local broker as admin",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)
    p = esub.add_parser(
        "provision", help="create or rotate device credentials on the local broker (prints them)"
    )
    p.add_argument("device_ids", nargs="+", metavar="DEVICE_ID")
    p.set_defaults(func=cmd_provision)
