"""`mlinfra monitor drift`: a drift report over data a DataCollection captured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlinfra.monitoring.drift import drift, load_baseline, read_collected, write_report


def cmd_drift(args: Any) -> int:
    collected = read_collected(
        args.collected, os.environ.get("MLINFRA_COLLECT_CREDENTIAL"), args.prefix or "", args.since
    )
    baseline = load_baseline(args.baseline)
    names = args.feature_names.split(",") if args.feature_names else None
    summary = drift(collected, baseline, args.threshold, names, args.model)
    files = write_report(summary, baseline, collected, Path(args.out))
    for f in summary["features"]:
        flag = "  DRIFT" if f["drifted"] else ""
        print(f"{f['feature']:16s} PSI {f['psi']:7.3f}  KS {f['ks']:.3f} (p {f['ks_p']:.2g}){flag}")
    if summary["prediction"]:
        p = summary["prediction"]
        print(f"{'prediction':16s} PSI {p['psi']:7.3f}{'  DRIFT' if p['drifted'] else ''}")
    if collected.malformed:
        print(f"skipped {collected.malformed} malformed record(s): {'; '.join(collected.malformed_examples)}")
    print("wrote " + ", ".join(str(f) for f in files))
    return 1 if summary["drifted"] else 0


def register(sub: Any) -> None:
    mon = sub.add_parser("monitor", help="drift reports over data collected by DataCollection")
    msub = mon.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    p = msub.add_parser("drift", help="per-feature and prediction drift vs a baseline; HTML + PNG + JSON")
    p.add_argument("--collected", required=True, help="file:///folder or the container URL (container_uri)")
    p.add_argument("--baseline", required=True, help="baseline input rows: .npy, .csv or .jsonl")
    p.add_argument("--prefix", help="only blobs under this path, e.g. ENDPOINT/DEPLOYMENT/MODEL/VERSION")
    p.add_argument("--since", help="only records at or after this UTC time, e.g. 2026-11-24T08:00")
    p.add_argument("--model", help="ONNX model to score the baseline for prediction drift")
    p.add_argument("--feature-names", help="comma-separated names for the input columns")
    p.add_argument("--threshold", type=float, default=0.2, help="PSI above which a feature drifts (exit 1)")
    p.add_argument("--out", default="drift-report.html")
    p.set_defaults(func=cmd_drift)
