"""`mlinfra endpoints list`: the endpoints mlinfra runs on the local Docker engine and on a Kubernetes cluster,
found by their labels (mlinfra.io/endpoint, deployment, model, model-version, image-digest)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections import defaultdict
from typing import Any

from mlinfra.endpoints.local import find_containers
from mlinfra.endpoints.plan import EndpointError


def _local() -> list[dict[str, Any]]:
    by_ep: dict[str, dict[str, Any]] = defaultdict(lambda: {"target": "local-docker", "deployments": {}})
    for c in find_containers():
        lab = c["labels"]
        ep = by_ep[lab["mlinfra.io/endpoint"]]
        ep["endpoint"] = lab["mlinfra.io/endpoint"]
        if lab.get("mlinfra.io/role") == "router":
            ep["uri"] = f"http://127.0.0.1:{lab.get('mlinfra.io/port')}/score"
            ep["router"] = c["state"]
            continue
        d = ep["deployments"].setdefault(lab.get("mlinfra.io/deployment", "?"), _deployment(lab))
        d["replicas"] += 1
        d["running"] += c["state"] == "running"
    return list(by_ep.values())


def _deployment(lab: dict[str, str]) -> dict[str, Any]:
    return {
        "model": lab.get("mlinfra.io/model"),
        "model_version": lab.get("mlinfra.io/model-version"),
        "image_digest": lab.get("mlinfra.io/image-digest"),
        "replicas": 0,
        "running": 0,
    }


def _kubernetes(kubeconfig: str, context: str | None) -> list[dict[str, Any]]:
    from mlinfra.lab.cluster import kube_bin_dir

    kubectl = shutil.which("kubectl") or str(kube_bin_dir() / "kubectl")
    cmd = [kubectl, "--kubeconfig", kubeconfig, *(["--context", context] if context else [])]
    r = subprocess.run(
        [*cmd, "get", "deploy", "-A", "-l", "mlinfra.io/endpoint", "-o", "json", "--request-timeout=10s"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise EndpointError(f"kubectl could not list endpoints with {kubeconfig}: {r.stderr.strip()[-400:]}")
    by_ep: dict[str, dict[str, Any]] = {}
    for o in json.loads(r.stdout)["items"]:
        lab, ns = o["metadata"]["labels"], o["metadata"]["namespace"]
        name = lab["mlinfra.io/endpoint"]
        ep = by_ep.setdefault(
            f"{ns}/{name}",
            {
                "endpoint": name,
                "target": f"kubernetes:{ns}",
                "uri": f"http://{name}.{ns}.svc.cluster.local/score",
                "deployments": {},
            },
        )
        if lab.get("mlinfra.io/role") == "router":
            continue
        # During a rollout a deployment has two slot Deployments (old and new revision): counted together, and
        # the model and digest shown are those of the slot with more ready pods.
        d = ep["deployments"].setdefault(lab.get("mlinfra.io/deployment", "?"), _deployment(lab))
        ready = (o.get("status") or {}).get("readyReplicas", 0)
        if ready > d["running"] or not d["replicas"]:
            d.update({k: v for k, v in _deployment(lab).items() if k not in ("replicas", "running")})
        d["replicas"] += o["spec"].get("replicas", 0)
        d["running"] += ready
    return list(by_ep.values())


def _local_cluster() -> str | None:
    """The kubeconfig of the local cluster (`mlinfra services up kubernetes`) when it runs, else None."""
    from mlinfra.lab import node

    path = node.kubeconfig_path()
    return str(path) if path.is_file() and node.node_ready() else None


def _matches(ep: dict[str, Any], model: str | None, image: str | None) -> bool:
    deps = ep["deployments"].values()
    if model and not any(model in (d["model"] or "").split(".") for d in deps):
        return False
    digest = (image or "").removeprefix("sha256:")
    return not digest or any((d["image_digest"] or "").startswith(digest[:63]) for d in deps)


def cmd_list(args: argparse.Namespace) -> int:
    endpoints = _local()
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or _local_cluster()
    if kubeconfig:
        endpoints += _kubernetes(kubeconfig, args.context)
    endpoints = [e for e in endpoints if _matches(e, args.model, args.image)]
    if args.json:
        print(json.dumps(endpoints, indent=1))
        return 0
    print(
        f"{'ENDPOINT':28s} {'TARGET':22s} {'DEPLOYMENT':12s} {'MODEL':18s} {'REPLICAS':9s} {'IMAGE DIGEST':14s} URI"
    )
    for e in sorted(endpoints, key=lambda e: (e["target"], e["endpoint"])):
        for dname, d in sorted(e["deployments"].items()):
            model = f"{d['model']}:{d['model_version']}" if d["model"] else "-"
            print(
                f"{e['endpoint']:28s} {e['target']:22s} {dname:12s} {model:18s} "
                f"{d['running']}/{d['replicas']:<7} {(d['image_digest'] or '-')[:12]:14s} {e.get('uri', '-')}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    eps = sub.add_parser("endpoints", help="list CloudEndpoints (local Docker and Kubernetes)")
    esub = eps.add_subparsers(dest="endpoints_command", metavar="ACTION", required=True)
    p = esub.add_parser("list", help="endpoints with their deployments, models and image digests")
    p.add_argument("--model", help="only endpoints serving this model name")
    p.add_argument("--image", help="only endpoints running this image digest (sha256:… or a prefix)")
    p.add_argument(
        "--kubeconfig",
        help="also list a Kubernetes cluster's endpoints (default: $KUBECONFIG, else the local cluster of "
        "`mlinfra services up kubernetes` when it runs)",
    )
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
