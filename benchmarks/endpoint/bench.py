"""CloudEndpoint benchmark (Local Docker): requests/s and p99 through the endpoint's router (nginx, key check,
traffic split by route files) vs straight to the scoring container, side by side in one run (goal ≥ 0.8 times); and the
wall time a 3-step progressive rollout adds over its bake times.

Drives the endpoint provider directly (what `pulumi up` runs) so the figures hold mlinfra's own work only.
Run: `.venv/bin/python benchmarks/endpoint/bench.py` (services up: `make services`). Writes results.json and
RESULTS.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import scoring_images  # noqa: E402
from benchmarks.wrk import plot_router_vs_direct, router_vs_direct, router_vs_direct_table  # noqa: E402
from benchmarks.wrk import run as wrk_run  # noqa: E402
from mlinfra.endpoints.provider import EndpointKeysProvider, LocalEndpointProvider  # noqa: E402
from mlinfra.lab import services  # noqa: E402


def wrk(url: str, body: Path, key: str | None, conns: int, seconds: int) -> dict:
    return wrk_run(url, body, conns, seconds, key)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bake", type=float, default=3.0)
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite RESULTS.md and the plot from results.json"
    )
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((HERE / "results.json").read_text()))
        return 0
    services.ensure(["docker", "registry", "python-base", "router-base"], progress=lambda _m: None)
    tmp = Path(tempfile.mkdtemp(prefix="mlinfra-bench-endpoint-"))
    refs = scoring_images("127.0.0.1:5000/mlinfra-bench/endpoint", (1, 2), tmp)
    keys = EndpointKeysProvider().create({"key_version": 1}).outs
    dep = {
        "replicas": 1,
        "cpu": 1.0,
        "memory_mb": 1024,
        "env": {"MLINFRA_SERVE_NO_ACCESS_LOG": "1"},
        "autoscale": None,
    }
    props = {
        "endpoint_name": "bench-endpoint",
        "port": None,
        "router_image": services.router_image_ref(),
        "auth": "key",
        "keys": [keys["primary_key"], keys["secondary_key"]],
        "tls": None,
        "deployments": {"blue": {**dep, "image": refs[0]}},
        "traffic": {"blue": 100},
        "mirror": {},
        "rollout": {"steps": [10.0, 50.0, 100.0], "bake_s": args.bake, "gates": {"max_error_rate": 0.01}, "auto_rollback": True},
        "max_body_mb": 10.0,
        "model_refs": [],
    }  # fmt: skip
    provider = LocalEndpointProvider()
    outs = provider.create(props).outs
    body = tmp / "body.json"
    body.write_text(json.dumps({"data": [[0.1] * 64]}))
    router_url = outs["scoring_uri"]
    container_port = outs["live"]["upstreams"][next(iter(outs["live"]["upstreams"]))]["containers"][0]["port"]
    direct_url = f"http://127.0.0.1:{container_port}/score"
    results: dict = {"cells": {}}
    try:
        for conns in (8, 32):
            cell = router_vs_direct(
                (router_url, keys["primary_key"]), (direct_url, None), body, conns, args.rounds, args.duration
            )
            results["cells"][f"c{conns}"] = cell
            print(f"c={conns}: {json.dumps(cell)}", flush=True)
        # A 3-step rollout to a new image: wall time minus its bake times.
        news = {**props, "deployments": {"blue": {**dep, "image": refs[1]}}}
        t0 = time.monotonic()
        outs2 = provider.update("bench-endpoint", outs, news).outs
        wall = time.monotonic() - t0
        # The same rollout back, while wrk (c=32) keeps sending: every request must succeed.
        import threading

        under_load: dict = {}
        loader = threading.Thread(
            target=lambda: under_load.update(
                wrk(router_url, body, keys["primary_key"], 32, int(3 * args.bake + 12))
            )
        )
        loader.start()
        time.sleep(2)
        outs3 = provider.update("bench-endpoint", outs2, props).outs
        loader.join()
        results["rollout"] = {
            "steps": 3,
            "bake_s": args.bake,
            "wall_s": wall,
            "overhead_s": wall - 3 * args.bake,
            "record": outs2["last_rollout"],
            "under_wrk_c32": under_load,
            "under_wrk_record": outs3["last_rollout"],
        }
        outs = outs3
        print(f"rollout: {json.dumps(results['rollout'])}", flush=True)
    finally:
        provider.delete("bench-endpoint", outs)
    results["date"] = time.strftime("%Y-%m-%d")
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    )
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


def report(r: dict) -> None:
    """RESULTS.md and endpoint.png from results.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = r["cells"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_router_vs_direct(ax, cells, "straight to the container", "through the endpoint router")
    ax.set_title(f"CloudEndpoint router overhead ({r['date']})")
    fig.tight_layout()
    fig.savefig(HERE / "endpoint.png", dpi=110)
    ro = r["rollout"]
    lines = [
        "# CloudEndpoint benchmark (Local Docker)",
        "",
        f"Measured {r['date']} on {r['machine']} (shared, noisy: compare ratios). One scoring container (the reference",
        "MLP 64→256→10, `/score` with one row, access log off) behind the endpoint's router (nginx, key check, the",
        "1,000-bucket route files) vs straight to the container's published port; wrk (1 thread, pinned to CPU 1),",
        "alternating direct/router rounds, medians. Reproduce: `.venv/bin/python benchmarks/endpoint/bench.py`.",
        "",
        "![router vs direct](endpoint.png)",
        "",
        *router_vs_direct_table(cells),
    ]
    if r.get("earlier_runs_same_day"):
        runs = ", ".join(f"{h['c8_ratio']:.2f}× / {h['c32_ratio']:.2f}×" for h in r["earlier_runs_same_day"])
        lines += [
            "",
            f"Earlier runs the same day (c=8 / c=32): {runs}. The spread is CPU contention: on 2 cores the router's nginx",
            "worker, the scoring server and docker-proxy share one core while wrk has the other, so the ratio moves with",
            "whatever else the machine does; below 0.8× happened once at c=8.",
        ]
    w = ro.get("under_wrk_c32") or {}
    lines += [
        "",
        "## A 3-step rollout",
        "",
        f"Image change with steps 10 → 50 → 100 % and a {ro['bake_s']:g} s bake per step: the update took "
        f"{ro['wall_s']:.1f} s, i.e. **{ro['overhead_s']:.1f} s over its {3 * ro['bake_s']:g} s of bake time** (pull-free "
        "container start, readiness, three route switches with gate reads, draining and removing the old container).",
        "",
        f"The same rollout back under wrk (c=32): {w.get('requests', 0):,d} requests, {w.get('non2xx', 0)} non-2xx, "
        f"{w.get('socket_errors', 0)} socket errors. Traffic moves by route files, not nginx reloads, so keep-alive",
        "connections are never closed under the clients.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
