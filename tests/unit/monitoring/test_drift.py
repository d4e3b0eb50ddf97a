"""Drift report on a synthetic shifted dataset: flags the shifted feature and not the others; malformed records are
skipped and counted; a baseline with the wrong columns is refused with both counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlinfra.cli import main
from mlinfra.monitoring.drift import MonitorError, drift, ks, psi, read_collected


def _collect(folder: Path, x: np.ndarray, outputs: np.ndarray | None = None) -> None:
    part = folder / "ep" / "blue" / "m" / "1" / "2026" / "11" / "24" / "08"
    part.mkdir(parents=True)
    lines = []
    for i, row in enumerate(x):
        r = {"request_id": f"r{i}", "time": "2026-11-24T08:00:00.000Z", "inputs": {"input": [row.tolist()]}}
        if outputs is not None:
            r["outputs"] = {"p": [outputs[i].tolist()]}
        lines.append(json.dumps(r))
    lines += ["not json", json.dumps({"request_id": "x", "inputs": {}})]  # two malformed records
    (part / "20261124T080000-000000000000.jsonl").write_text("\n".join(lines) + "\n")


def test_psi_and_ks_separate_shifted_from_same() -> None:
    rng = np.random.default_rng(0)
    a, same, shifted = rng.normal(0, 1, 4000), rng.normal(0, 1, 3000), rng.normal(1.0, 1, 3000)
    assert psi(a, same) < 0.05 < 0.2 < psi(a, shifted)
    assert ks(a, same)[1] > 0.01 and ks(a, shifted)[1] < 1e-6


def test_drift_report_flags_only_the_shifted_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(0, 1, (3000, 5))
    current = rng.normal(0, 1, (2000, 5))
    current[:, 2] += 1.5
    np.save(tmp_path / "baseline.npy", baseline)
    _collect(tmp_path / "collected", current)
    out = tmp_path / "report" / "drift.html"
    code = main(
        ["monitor", "drift", "--collected", f"file://{tmp_path / 'collected'}", "--baseline",
         str(tmp_path / "baseline.npy"), "--out", str(out), "--feature-names", "a,b,c,d,e"]
    )  # fmt: skip
    assert code == 1  # drift past the threshold: CI fails
    summary = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert summary["drifted"] == ["c"]
    assert summary["malformed_records"] == 2 and summary["records"] == 2000
    # The report's KS values are SciPy's on the same data (statistic and p-value).
    from scipy.stats import ks_2samp

    x = read_collected(f"file://{tmp_path / 'collected'}").x
    for i, f in enumerate(summary["features"]):
        ref = ks_2samp(baseline[:, i], x[:, i])
        assert (f["ks"], f["ks_p"]) == (float(ref.statistic), float(ref.pvalue)), (f, ref)
    assert (tmp_path / "report" / "drift-features.png").stat().st_size > 10_000
    assert "DRIFT" not in out.read_text().split("<table>")[0] or "c" in summary["drifted"]
    assert "data:image/png;base64," in out.read_text()
    # Without the shift: exit 0.
    _collect(tmp_path / "same", rng.normal(0, 1, (2000, 5)))
    assert main(["monitor", "drift", "--collected", f"file://{tmp_path / 'same'}", "--baseline",
                 str(tmp_path / "baseline.npy"), "--out", str(tmp_path / "same.html")]) == 0  # fmt: skip


def test_baseline_with_other_columns_is_refused(tmp_path: Path) -> None:
    _collect(tmp_path / "c", np.zeros((10, 5)))
    collected = read_collected(f"file://{tmp_path / 'c'}")
    with pytest.raises(MonitorError, match="baseline has 4 columns but the collected inputs have 5 features"):
        drift(collected, np.zeros((10, 4)), 0.2)
    assert main(["monitor", "drift", "--collected", "file:///nonexistent", "--baseline", "x.npy"]) == 2


def test_prediction_drift_from_the_model(tmp_path: Path) -> None:
    import onnxruntime as ort

    from mlinfra.lab.samples import write_mlp

    model = write_mlp(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    baseline = rng.normal(0, 1, (2000, 64))
    same = rng.normal(0, 1, (1500, 64))
    shifted = same + rng.normal(0, 3, (1, 64))  # every feature moves: predictions move too
    results = {}
    for name, x in (("same", same), ("shifted", shifted)):
        y = sess.run(None, {"input": x.astype(np.float32)})[0]
        _collect(tmp_path / name, x, y)
        results[name] = drift(read_collected(f"file://{tmp_path / name}"), baseline, 0.2, model=str(model))
    assert results["same"]["prediction"]["categorical"] and not results["same"]["prediction"]["drifted"]
    assert results["shifted"]["prediction"]["drifted"] and "prediction" in results["shifted"]["drifted"]
