"""The metric updates one request makes (the request counter, the latency and batch-size histograms; before, also
the in-flight gauge up and down), timed in-process for the hand-written registry the scoring server had before issue 25
(REV's components/scoring/mlinfra_scoring/metrics.py) and for the prometheus-client one it has now. Noise-free where
the A/B (ab.py) is not: it says what share of a request's CPU the library costs. Pinned to CPU 0.

Usage: taskset -c 0 .venv/bin/python benchmarks/serving/metrics_ops.py [--rev 9d8c615]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.common import file_at  # noqa: E402

N = 200_000


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def per_request_us(metrics: object, legacy: bool) -> float:
    m = metrics
    labels, batch = ("infer", "mlp", "1"), ("mlp", "1")
    code = ("infer", "mlp", "1", "200")
    t0 = time.perf_counter()
    for i in range(N):
        if (
            legacy
        ):  # the old server set its in-flight gauge twice per request; the new one reads it at scrape time
            m.in_flight.set((), 1)  # type: ignore[attr-defined]
            m.in_flight.set((), 0)  # type: ignore[attr-defined]
        m.batch.observe(1, batch)  # type: ignore[attr-defined]
        m.requests.inc(code)  # type: ignore[attr-defined]
        m.latency.observe(0.0003 + (i % 7) * 0.001, labels)  # type: ignore[attr-defined]
    return (time.perf_counter() - t0) / N * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="9d8c615")
    args = ap.parse_args()
    old_src = file_at(args.rev, "components/scoring/mlinfra_scoring/metrics.py")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "old_metrics.py").write_text(old_src)
        old = load(Path(tmp) / "old_metrics.py", "old_metrics").Metrics()
    new = load(REPO / "components/scoring/mlinfra_scoring/metrics.py", "new_metrics").Metrics()
    rounds = {"before": [], "after": []}
    for _ in range(5):
        rounds["before"].append(per_request_us(old, True))
        rounds["after"].append(per_request_us(new, False))
    b, a = sorted(rounds["before"])[2], sorted(rounds["after"])[2]
    print(f"metric updates per request: before {b:.2f} us, after {a:.2f} us (+{a - b:.2f} us), median of 5")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
