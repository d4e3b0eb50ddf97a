"""The runtime's data-quality and drift checks (mlinfra_scoring.checks): the statistics agree with SciPy's; rows from
the baseline's distribution pass; a shift in one feature flags that feature only; nulls, out-of-range values, missing
features and an empty window are reported as such; the baseline survives its storage round trip."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

from mlinfra_scoring.checks import (
    Baseline,
    Thresholds,
    compute_baseline,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic,
    run_checks,
)


@pytest.fixture(scope="module")
def baseline_rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(20_000, 8)) * np.arange(1, 9) + np.arange(8)


def test_ks_and_the_kolmogorov_distribution_agree_with_scipy() -> None:
    rng = np.random.default_rng(1)
    for n, m, shift in ((200, 300, 0.0), (5_000, 20_000, 0.03), (20_000, 50_000, 0.3)):
        a, b = np.sort(rng.standard_normal(n)), np.sort(rng.standard_normal(m) + shift)
        d = ks_statistic(a, b)
        assert d == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)
        asymp = st.ks_2samp(a, b, method="asymp").pvalue
        assert ks_pvalue(d, n, m) == pytest.approx(asymp, rel=0.05, abs=1e-12)
    for _ in range(5):  # ties: integer-valued features
        a, b = np.sort(rng.integers(0, 6, 700)).astype(float), np.sort(rng.integers(0, 7, 900)).astype(float)
        assert ks_statistic(a, b) == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)
    for x in (0.25, 0.5, 1.0, 1.36, 2.0, 3.0, 5.0):
        assert kolmogorov_sf(x) == pytest.approx(st.kstwobign.sf(x), rel=1e-9, abs=1e-300)


def test_rows_from_the_baseline_pass_and_a_shift_flags_only_that_feature(baseline_rows: np.ndarray) -> None:
    base = compute_baseline(baseline_rows, [f"x{i}" for i in range(8)])
    same = np.random.default_rng(8).normal(size=(5_000, 8)) * np.arange(1, 9) + np.arange(8)
    ok = run_checks(base, same)
    assert ok["status"] == "passed" and ok["flagged"] == [], ok["flagged"]
    assert all(f["psi"] < 0.02 for f in ok["features"])
    shifted = same.copy()
    shifted[:, 3] += 2.0  # feature x3: std 4, shifted by half a standard deviation
    bad = run_checks(base, shifted)
    assert bad["status"] == "failed" and bad["flagged"] == ["x3"], bad["flagged"]
    x3 = bad["features"][3]
    assert x3["psi"] > 0.2 and x3["ks_pvalue"] < 1e-6 and any("PSI" in f for f in x3["flags"])


def test_quality_problems_are_named(baseline_rows: np.ndarray) -> None:
    base = compute_baseline(baseline_rows, [f"x{i}" for i in range(8)])
    rows = np.random.default_rng(9).normal(size=(2_000, 8)) * np.arange(1, 9) + np.arange(8)
    rows[:400, 2] = np.nan  # 20 % unreadable
    rows[:300, 5] = 1e6  # 15 % far outside the baseline's range
    report = run_checks(base, rows)
    by = {f["name"]: f for f in report["features"]}
    assert by["x2"]["null_rate"] == pytest.approx(0.2) and "null rate 20.0%" in by["x2"]["flags"][0]
    assert by["x5"]["out_of_range"] == pytest.approx(0.15)
    assert any("outside the baseline's range" in f for f in by["x5"]["flags"])
    narrow = run_checks(base, rows[:, :6])
    assert "the rows have 6 features, the baseline 8: missing x6, x7" in narrow["problems"][0]
    assert narrow["status"] == "failed"
    empty = run_checks(base, np.zeros((0, 8)))
    assert empty["status"] == "no_data" and empty["flagged"] == []


def test_prediction_drift_and_the_storage_round_trip(baseline_rows: np.ndarray) -> None:
    preds = baseline_rows[:, :2].sum(axis=1, keepdims=True)
    base = compute_baseline(baseline_rows, predictions=preds, sample=5_000)
    again = Baseline.from_files(base.to_files())
    assert again.sha256 == base.sha256 and len(again.features) == 8 and len(again.predictions) == 1
    assert np.array_equal(again.features[4].sample, base.features[4].sample)
    rows = baseline_rows[:3_000]
    moved = run_checks(again, rows, preds[:3_000] + 3.0)
    assert moved["flagged"] == ["output0"], moved["flagged"]
    assert run_checks(again, rows, preds[:3_000])["status"] == "passed"


def test_thresholds_are_checked() -> None:
    assert Thresholds.from_dict({"psi": 0.3}).psi == 0.3
    with pytest.raises(ValueError, match=r"unknown threshold\(s\) \['pis'\]"):
        Thresholds.from_dict({"pis": 0.3})
    with pytest.raises(ValueError, match="must be a finite number"):
        Thresholds.from_dict({"psi": -1})
    with pytest.raises(ValueError, match="non-empty 2-D"):
        compute_baseline(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="has no numeric value"):
        compute_baseline(np.full((10, 2), np.nan))
