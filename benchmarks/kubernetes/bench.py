"""Kubernetes benchmark on the local single-node cluster (real pods): requests/s and p99 through the endpoint's
router (nginx in its own pod, key check, route files, then the deployment's ClusterIP) vs straight to the scoring pod,
side by side in one run (goal at least 0.8 times); and the cluster's start time, cold (no cluster) and warm (resuming a stopped
one), to a Ready node.

Run: `.venv/bin/python benchmarks/kubernetes/bench.py` (it stops and starts the `kubernetes` service: run it alone).
Writes results.json, RESULTS.md and kubernetes.png next to this file.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import run_meta, scoring_images  # noqa: E402
from benchmarks.wrk import plot_router_vs_direct, router_vs_direct, router_vs_direct_table  # noqa: E402
from benchmarks.wrk import run as wrk  # noqa: E402
from mlinfra.automation import local_stack  # noqa: E402
from mlinfra.lab import node, services  # noqa: E402


def start_times(rounds: int) -> dict[str, list[float]]:
    """Seconds from `services up kubernetes` to a Ready node: warm (resume a stopped cluster) and cold (none)."""
    out: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(rounds):
        for kind in ("cold", "warm"):
            node.stop(progress=lambda _m: None)
            if kind == "cold":
                shutil.rmtree(node.home() / "kwok", ignore_errors=True)
            t0 = time.monotonic()
            node.start(progress=lambda _m: None)
            out[kind].append(time.monotonic() - t0)
            print(f"start {kind}: {out[kind][-1]:.1f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((HERE / "results.json").read_text()))
        return 0
    services.ensure(
        ["docker", "registry", "python-base", "router-base", "kubernetes"], progress=lambda _m: None
    )
    results: dict = {**run_meta(args.rounds), "start_s": start_times(args.rounds), "cells": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mlinfra-bench-k8s-"))
    (image,) = scoring_images("127.0.0.1:5000/mlinfra-bench/k8s", (1,), tmp)
    cluster = node.local_cluster()
    work = tmp / "program"
    shutil.copytree(HERE / "program", work)
    (tmp / "state").mkdir()
    st = local_stack(work, "bench", tmp / "state", {"image": image, "kubeconfig": str(cluster.kubeconfig)})
    try:
        key = st.up(on_output=lambda _m: None).outputs["primary_key"].value
        ns, ep = "bench-k8s", "bench-bench"
        router_ip = cluster.kubectl("get", "svc", ep, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout
        pod_ip = cluster.kubectl(
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "mlinfra.io/deployment=blue",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ).stdout
        internal = base64.b64decode(
            cluster.kubectl("get", "secret", f"{ep}-internal", "-n", ns, "-o", "jsonpath={.data.key}").stdout
        ).decode()
        body = tmp / "body.json"
        body.write_text(json.dumps({"data": [[0.1] * 64]}))
        router_url, direct_url = f"http://{router_ip}:80/score", f"http://{pod_ip}:8080/score"
        deadline = time.monotonic() + 60
        while wrk(router_url, body, 1, 1, key)["rps"] <= 0 and time.monotonic() < deadline:
            time.sleep(1)
        for conns in (8, 32):
            cell = router_vs_direct(
                (router_url, key), (direct_url, internal), body, conns, args.rounds, args.duration
            )
            results["cells"][f"c{conns}"] = cell
            print(f"c={conns}: {json.dumps(cell)}", flush=True)
    finally:
        st.destroy(on_output=lambda _m: None)
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


def report(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = r["cells"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [2, 1]})
    plot_router_vs_direct(ax, cells, "straight to the pod", "through the router")
    ax.set_title("router vs pod")
    s = r["start_s"]
    ax2.boxplot([s["cold"], s["warm"]], tick_labels=["cold", "warm"])
    ax2.set_ylabel("seconds to a Ready node")
    ax2.set_title("cluster start")
    fig.suptitle(f"CloudEndpoint on the local Kubernetes cluster ({r['date']})")
    fig.tight_layout()
    fig.savefig(HERE / "kubernetes.png", dpi=110)
    lines = [
        "# Kubernetes benchmark (the local single-node cluster, real pods)",
        "",
        f"Measured {r['date']} on {r['machine']} (shared, noisy: compare ratios); {r['reps']} alternating rounds,",
        "medians. One scoring pod (1 CPU, the reference MLP 64→256→10, `/score` with one row, access log off) behind",
        "the endpoint's router pod (nginx: key check, 1,000-bucket route files, then the deployment's ClusterIP",
        "through kube-proxy) vs straight to the pod IP (with the internal key the pods require). wrk: 1 thread pinned",
        "to CPU 1. Reproduce: `.venv/bin/python benchmarks/kubernetes/bench.py` (run it alone: it restarts the cluster).",
        "",
        "![router vs pod, cluster start](kubernetes.png)",
        "",
        *router_vs_direct_table(cells),
    ]
    lines += [
        "",
        "A ratio above 1 is not the router adding speed: the router is two nginx pods (1 CPU each at most) that keep",
        "pooled keep-alive connections to the pod, and wrk, the pods and the control plane share 2 cores; the goal is",
        "a floor, and single runs vary by ±15 % here.",
        "",
        "Cluster start to a Ready node (`mlinfra services up kubernetes`): cold (no cluster: new certificates, etcd,"
        f" ServiceAccounts) median **{statistics.median(s['cold']):.1f} s**, warm (resuming a stopped cluster with its"
        f" etcd data) median **{statistics.median(s['warm']):.1f} s** ({', '.join(f'{x:.1f}' for x in s['cold'])} /"
        f" {', '.join(f'{x:.1f}' for x in s['warm'])}).",
        "",
        "The wall time a 3-step gated rollout adds over its bake times: [ROLLOUT.md](ROLLOUT.md)"
        " (`benchmarks/kubernetes/rollout.py`).",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
