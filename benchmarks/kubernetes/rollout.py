"""What a gated rollout on the local cluster costs beyond its bake times: a 3-step rollout (10 %, 50 %, 100 %, a
fixed bake after each step) of a new image on a one-pod deployment, alternating v1 → v2 → v1 …, under a light
scoring load so the gates have requests to read. Per round: the rollout's own wall time (the engine's "rollout done
in X s": route rewrite + kubelet re-sync + confirmation through the pod proxy + bakes + gate reads) minus the bakes,
and the whole `pulumi up` (the new pods' start and readiness, then the old slot's removal, are on top).

Run: `.venv/bin/python benchmarks/kubernetes/rollout.py` (needs `make services`). Writes rollout.json,
ROLLOUT.md and rollout.png next to this file.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import run_meta, scoring_images  # noqa: E402
from mlinfra.automation import local_stack  # noqa: E402
from mlinfra.lab import node, services  # noqa: E402

STEPS = [10.0, 50.0, 100.0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bake-s", type=float, default=5.0)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((HERE / "rollout.json").read_text()))
        return 0
    from pulumi import automation as auto

    from tests.endpoint_helpers import Load

    services.ensure(
        ["docker", "registry", "python-base", "router-base", "kubernetes"], progress=lambda _m: None
    )
    tmp = Path(tempfile.mkdtemp(prefix="mlinfra-bench-rollout-"))
    images = scoring_images("127.0.0.1:5000/mlinfra-bench/rollout", (1, 2), tmp)
    cluster = node.local_cluster()
    work = tmp / "program"
    shutil.copytree(HERE.parents[1] / "tests" / "integration" / "programs" / "k8s-endpoint", work)
    (tmp / "state").mkdir()

    def config(image: str) -> dict:
        return {
            "deployments": json.dumps({"blue": {"image": image, "cpu": 0.5}}),
            "namespace": "bench-rollout",
            "kubeconfig": str(cluster.kubeconfig),
            "rollout": json.dumps({"steps": STEPS, "bake_s": args.bake_s}),
        }

    st = local_stack(work, "bench", tmp / "state", config(images[0]))
    rounds: list[dict] = []
    try:
        key = st.up(on_output=lambda _m: None).outputs["primary_key"].value
        ip = cluster.kubectl(
            "get", "svc", "scoring-bench", "-n", "bench-rollout", "-o", "jsonpath={.spec.clusterIP}"
        )
        from tests.endpoint_helpers import score

        deadline = time.monotonic() + 60  # the router Service's rules reach kube-proxy a moment after `up`
        while score(f"http://{ip.stdout}:80/score", key)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        with Load(f"http://{ip.stdout}:80/score", key, threads=2, pause_s=0.02) as load:
            for i in range(args.rounds):
                image = images[(i + 1) % 2]
                st.set_config("deployments", auto.ConfigValue(config(image)["deployments"]))
                said: list[str] = []
                t0 = time.monotonic()
                st.up(on_output=said.append)
                up_s = time.monotonic() - t0
                m = re.search(r"rollout done in ([0-9.]+) s", "".join(said))
                if not m:
                    raise SystemExit("the rollout did not report its time:\n" + "".join(said)[-2000:])
                rollout_s = float(m.group(1))
                bakes = len(STEPS) * args.bake_s
                rounds.append(
                    {"up_s": up_s, "rollout_s": rollout_s, "bakes_s": bakes, "overhead_s": rollout_s - bakes}
                )
                print(
                    f"round {i + 1}: {json.dumps(rounds[-1])} {dict(load.statuses)} {dict(load.errors)}",
                    flush=True,
                )
        failed = load.failed
        total = load.total
        why = {**{str(k): v for k, v in load.statuses.items() if k != 200}, **dict(load.errors)}
    finally:
        st.destroy(on_output=lambda _m: None)
    results = {**run_meta(args.rounds), "bake_s": args.bake_s, "steps": STEPS, "rounds": rounds}
    results["load"] = {"requests": total, "failed": failed, "failures": why}
    (HERE / "rollout.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


def report(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = r["rounds"]
    x = range(1, len(rounds) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bakes = [x["bakes_s"] for x in rounds]
    over = [x["overhead_s"] for x in rounds]
    rest = [x["up_s"] - x["rollout_s"] for x in rounds]
    ax.bar(x, bakes, label="bakes (policy)")
    ax.bar(x, over, bottom=bakes, label="steps' own cost")
    ax.bar(
        x,
        rest,
        bottom=[b + o for b, o in zip(bakes, over, strict=True)],
        label="rest of `up` (pods start, old slot goes)",
    )
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_title(f"3-step rollout on the local cluster ({r['date']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "rollout.png", dpi=110)
    med = statistics.median
    lines = [
        "# A 3-step gated rollout on the local cluster: what it adds over its bakes",
        "",
        f"Measured {r['date']} on {r['machine']} (shared, noisy); {len(rounds)} rounds alternating two images of the",
        f"reference MLP on a one-pod deployment (0.5 CPU); steps {', '.join(f'{s:g} %' for s in r['steps'])}, a"
        f" {r['bake_s']:g} s bake after each; a light scoring load throughout ({r['load']['requests']:,d} requests,"
        f" {r['load']['failed']} failed). Reproduce: `.venv/bin/python benchmarks/kubernetes/rollout.py`.",
        "",
        "![rollout time](rollout.png)",
        "",
        "| round | `pulumi up` | the rollout | its bakes | the steps' own cost |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {x['up_s']:.1f} s | {x['rollout_s']:.1f} s | {x['bakes_s']:.0f} s | {x['overhead_s']:.1f} s |"
            for i, x in enumerate(rounds, 1)
        ),
        "",
        f"Median: the three steps cost **{med(over):.1f} s** beyond their bakes (route files rewritten, router pods"
        " annotated so the kubelet re-syncs the volume, every router pod confirming the new map through the API"
        " server's pod proxy, gate reads of the pods' /metrics): "
        f"**{med(over) / len(r['steps']):.2f} s per step**. The rest of the `up` (median"
        f" {med(rest):.1f} s) is the new pod's start and readiness before any traffic moves, and the old slot's"
        " removal.",
        "",
    ]
    (HERE / "ROLLOUT.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
