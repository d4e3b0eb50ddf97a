"""A monitoring run over an hour of collected data at 1,000 requests/s (issue 21), side by side in one run: the
runtime's job (mlinfra_scoring.monitor.Job: list the blobs, parse the JSON Lines records, run the checks against the
stored baseline statistics, write the report, the index and the metrics) vs the same with pandas and SciPy
(`pandas.read_json(lines=True)` per blob, the inputs expanded to a matrix, the checks of bench.py's `peer_checks`).

The data: one record per request, as the collector writes them (`time`, `request_id`, `inputs` {input: [[16
floats]]}, `outputs` {output: [[1 float]]}), one blob per second (the collector's flush) under the collector's
layout, in a folder; one feature shifted by 1.5 standard deviations in the last quarter. Sizes: 6 minutes (360k records) and the
hour (3.6M). Both must flag the same features.

Usage: .venv/bin/python benchmarks/monitoring/hour.py [--minutes 6,60] [--out benchmarks/monitoring/HOUR.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "components" / "scoring"))
sys.path.insert(0, str(REPO / "benchmarks" / "monitoring"))

from bench import peer_checks  # noqa: E402

from mlinfra_scoring import monitor as m  # noqa: E402
from mlinfra_scoring.checks import Thresholds, compute_baseline  # noqa: E402

FEATURES, RATE = 16, 1_000
START = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def write_hour(folder: Path, minutes: int, rng: np.random.Generator) -> int:
    """MINUTES of records at RATE per second, one blob per second; the last quarter shifted on feature 3."""
    n = 0
    for sec in range(minutes * 60):
        t = START + timedelta(seconds=sec)
        x = rng.normal(size=(RATE, FEATURES)) * np.arange(1, FEATURES + 1)
        if sec >= minutes * 45:
            x[:, 3] += 6.0  # 1.5 standard deviations
        y = x[:, :2].sum(axis=1, keepdims=True)
        part = folder / f"ep/blue/mlp/1/{t:%Y/%m/%d/%H}/{t:%Y%m%dT%H%M%S}-{sec:012x}.jsonl"
        part.parent.mkdir(parents=True, exist_ok=True)
        stamp = t.strftime("%Y-%m-%dT%H:%M:%S")
        part.write_bytes(
            b"\n".join(
                orjson.dumps(
                    {
                        "request_id": f"r{sec}-{i}",
                        "time": f"{stamp}.{i % 1000:03d}Z",
                        "endpoint": "ep",
                        "deployment": "blue",
                        "model": "mlp",
                        "version": 1,
                        "inputs": {"input": [x[i].tolist()]},
                        "outputs": {"output": [y[i].tolist()]},
                    }
                )
                for i in range(RATE)
            )
            + b"\n"
        )
        n += RATE
    return n


def peer(folder: Path, base: object) -> tuple[float, list[str], int]:
    import pandas as pd

    t0 = time.perf_counter()
    frames = [pd.read_json(p, lines=True) for p in sorted(folder.rglob("*.jsonl"))]
    df = pd.concat(frames, ignore_index=True)
    x = np.asarray([v["input"][0] for v in df["inputs"]], dtype=np.float64)
    res = peer_checks(base, x, Thresholds())  # type: ignore[arg-type]
    return time.perf_counter() - t0, sorted(k for k, v in res.items() if v["flagged"]), len(x)


def ours(folder: Path, reports: Path, sha: str) -> tuple[float, list[str], int]:
    shutil.rmtree(reports / "hour" / "runs", ignore_errors=True)
    (reports / "hour" / "index.json").unlink(missing_ok=True)
    cfg = m.MonitorConfig.from_json(
        json.dumps(
            {
                "name": "hour",
                "collected": f"file://{folder}",
                "reports": f"file://{reports}",
                "baseline": sha,
                "prefix": "ep/",
                "lag_s": 0,
            }
        )
    )
    job = m.Job(cfg, {})
    t0 = time.perf_counter()
    report = job.run(START + timedelta(hours=2))
    return (
        time.perf_counter() - t0,
        sorted(f["name"] for f in report["features"] if f["flags"]),
        report["rows"],
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", default="6,60")
    ap.add_argument("--out", default=str(Path(__file__).with_name("HOUR.md")))
    a = ap.parse_args()
    rng = np.random.default_rng(5)
    base_rows = rng.normal(size=(200_000, FEATURES)) * np.arange(1, FEATURES + 1)
    base = compute_baseline(base_rows, [f"f{i}" for i in range(FEATURES)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlinfra-hour-") as tmp:
        reports = Path(tmp) / "reports"
        for k, data in base.to_files().items():
            (reports / "hour" / "baseline" / base.sha256).mkdir(parents=True, exist_ok=True)
            (reports / "hour" / "baseline" / base.sha256 / k).write_bytes(data)
        for minutes in (int(v) for v in a.minutes.split(",")):
            folder = Path(tmp) / f"collected-{minutes}"
            t0 = time.perf_counter()
            n = write_hour(folder, minutes, rng)
            size = sum(p.stat().st_size for p in folder.rglob("*.jsonl"))
            print(f"{minutes} min: {n:,d} records, {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s",
                  flush=True)  # fmt: skip
            t_ours, flags_ours, n_ours = ours(folder, reports, base.sha256)
            print(f"  mlinfra job: {t_ours:.1f} s, flagged {flags_ours}", flush=True)
            t_peer, flags_peer, n_peer = peer(folder, base)
            print(f"  pandas + SciPy: {t_peer:.1f} s, flagged {flags_peer}", flush=True)
            assert n_ours == n_peer == n, (n_ours, n_peer, n)
            rows.append((minutes, n, size, t_ours, t_peer, flags_ours == flags_peer, flags_ours))
            shutil.rmtree(folder)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        "# A monitoring run over an hour of data at 1,000 requests/s",
        "",
        f"Measured {now} on {platform.node()} — {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()} (shared, noisy: read the ratios). Script: `hour.py`, one run each, in one "
        "process, files in the page cache. One record per request as the collector writes them, one blob per second "
        f"(its flush), {FEATURES} features, feature f3 shifted in the last quarter. mlinfra: the runtime's "
        "`Job.run` end to end (list, read, parse, check, write the report, index and metrics). Peer: "
        "`pandas.read_json(lines=True)` per blob, then the same checks with SciPy (bench.py's `peer_checks`).",
        "",
        "| window | records | JSON on disk | mlinfra job (s) | pandas + SciPy (s) | ratio | same flags | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for minutes, n, size, t_ours, t_peer, same, flags in rows:
        lines.append(f"| {minutes} min | {n:,d} | {size / 1e9:.2f} GB | {t_ours:.1f} | {t_peer:.1f} | "
                     f"**{t_ours / t_peer:.2f}×** | {'yes' if same else 'NO'} | {', '.join(flags)} |")  # fmt: skip
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
