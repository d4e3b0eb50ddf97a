"""Data-quality and drift checks of collected rows against a baseline's statistics — numpy only, so a scheduled
monitoring job runs them from the scoring image's runtime (mlinfra_scoring.monitor, what a ModelMonitor schedules).

The baseline is summarized once (:func:`compute_baseline`): per feature its row count, null rate, range, mean and
spread, the decile edges PSI bins by and their shares, and a sorted sample (at most ``sample`` values) the
Kolmogorov-Smirnov test compares against; the same for the model's predictions. A run (:func:`run_checks`) then
reads only the new rows:

- **data quality**: the feature count (a missing feature is named), each feature's null rate (NaN, or a record that
  could not be read as a number) against the baseline's, and the share of values outside the baseline's range;
- **feature drift**: the population stability index over the baseline's deciles and the two-sample KS statistic
  with its asymptotic p-value (the Kolmogorov distribution, as ``scipy.stats.kstwobign``), per feature;
- **prediction drift**: the same two on the predictions.

A check past its threshold flags the feature; any flag fails the run. No rows: status ``no_data``, nothing flagged.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PSI_FLOOR = 1e-4  # a bin's share is at least this (an empty bin would make PSI infinite)


@dataclass
class FeatureBaseline:
    name: str
    rows: int
    null_rate: float
    min: float
    max: float
    mean: float
    std: float
    edges: list[float]  # interior decile edges (PSI bins: (-inf, e0], (e0, e1], ..., (e_last, inf))
    shares: list[float]  # the baseline's share in each bin
    sample: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # sorted, non-null


@dataclass
class Baseline:
    features: list[FeatureBaseline]
    predictions: list[FeatureBaseline]
    sha256: str  # of the rows it was computed from

    def to_files(self) -> dict[str, bytes]:
        """``baseline.json`` (statistics) and ``sample.npz`` (the sorted samples), what a run reads back."""
        samples = {f"f{i}": f.sample for i, f in enumerate(self.features)}
        samples.update({f"p{i}": f.sample for i, f in enumerate(self.predictions)})
        buf = io.BytesIO()
        np.savez_compressed(buf, **samples)  # type: ignore[arg-type]

        def stats(f: FeatureBaseline) -> dict[str, Any]:
            return {k: v for k, v in asdict(f).items() if k != "sample"}

        doc = {
            "sha256": self.sha256,
            "features": [stats(f) for f in self.features],
            "predictions": [stats(f) for f in self.predictions],
        }
        return {"baseline.json": json.dumps(doc, indent=1).encode(), "sample.npz": buf.getvalue()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Baseline:
        doc = json.loads(files["baseline.json"])
        with np.load(io.BytesIO(files["sample.npz"])) as samples:
            feats = [FeatureBaseline(**f, sample=samples[f"f{i}"]) for i, f in enumerate(doc["features"])]
            preds = [FeatureBaseline(**f, sample=samples[f"p{i}"]) for i, f in enumerate(doc["predictions"])]
        return cls(feats, preds, doc["sha256"])


def _summarize(name: str, col: np.ndarray, sample: int, rng: np.random.Generator) -> FeatureBaseline:
    ok = col[~np.isnan(col)]
    if ok.size == 0:
        raise ValueError(f"baseline feature {name!r} has no numeric value")
    edges = np.unique(np.quantile(ok, np.linspace(0, 1, 11))[1:-1])
    shares = _shares(ok, edges)
    kept = ok if ok.size <= sample else rng.choice(ok, sample, replace=False)
    return FeatureBaseline(
        name=name,
        rows=int(col.size),
        null_rate=float(1 - ok.size / col.size),
        min=float(ok.min()),
        max=float(ok.max()),
        mean=float(ok.mean()),
        std=float(ok.std()),
        edges=[float(e) for e in edges],
        shares=[float(s) for s in shares],
        sample=np.sort(kept),
    )


def compute_baseline(
    x: np.ndarray,
    names: list[str] | None = None,
    predictions: np.ndarray | None = None,
    sample: int = 20_000,
    seed: int = 0,
) -> Baseline:
    """Statistics of baseline rows X (n rows by features; NaN for a missing value) and, optionally, the model's
    PREDICTIONS on them (n rows by outputs)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"baseline rows must be a non-empty 2-D array, got shape {x.shape}")
    names = names or [f"f{i}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise ValueError(f"{len(names)} feature names for {x.shape[1]} columns")
    rng = np.random.default_rng(seed)
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    feats = [_summarize(n, x[:, i], sample, rng) for i, n in enumerate(names)]
    preds: list[FeatureBaseline] = []
    if predictions is not None:
        p = np.asarray(predictions, dtype=np.float64).reshape(x.shape[0], -1)
        h.update(np.ascontiguousarray(p).tobytes())
        preds = [_summarize(f"output{i}", p[:, i], sample, rng) for i in range(p.shape[1])]
    return Baseline(feats, preds, h.hexdigest())


def _shares(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="left"), minlength=len(edges) + 1)
    return counts / max(values.size, 1)


def psi(expected_shares: np.ndarray | list[float], actual_shares: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    p = np.clip(np.asarray(expected_shares, dtype=np.float64), PSI_FLOOR, None)
    q = np.clip(np.asarray(actual_shares, dtype=np.float64), PSI_FLOOR, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _own_cdf(x_sorted: np.ndarray) -> np.ndarray:
    """The empirical CDF of a sorted sample at its own points (ties share the rank of their last copy), in O(n)."""
    n = x_sorted.size
    last = np.append(np.flatnonzero(x_sorted[1:] != x_sorted[:-1]), n - 1)  # the last index of each run
    return np.repeat(last + 1, np.diff(np.append(-1, last))) / n


def ks_statistic(a_sorted: np.ndarray, b_sorted: np.ndarray) -> float:
    """Two-sample KS statistic of two sorted samples: the largest gap between their empirical CDFs (the CDFs jump
    only at sample points, so the gap is checked at each sample's points: each CDF at its own points by rank, at the
    other's by binary search)."""
    n, m = a_sorted.size, b_sorted.size
    at_a = np.abs(_own_cdf(a_sorted) - np.searchsorted(b_sorted, a_sorted, side="right") / m)
    at_b = np.abs(np.searchsorted(a_sorted, b_sorted, side="right") / n - _own_cdf(b_sorted))
    return float(max(at_a.max(), at_b.max()))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) of the Kolmogorov distribution (``scipy.stats.kstwobign.sf``)."""
    if x <= 0:
        return 1.0
    if x < 0.2:  # the alternating series converges slowly here; the value is 1 to 1e-16
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-17:
            break
    return min(1.0, max(0.0, 2.0 * total))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of KS statistic D for samples of sizes N and M."""
    en = n * m / (n + m)
    return kolmogorov_sf(math.sqrt(en) * d)


@dataclass
class Thresholds:
    psi: float = 0.2  # PSI above this: drift (0.1 to 0.2 moderate, > 0.2 significant, the usual reading)
    ks_pvalue: float = 0.01  # KS p-value below this ...
    ks_statistic: float = 0.1  # ... and a statistic above this (large windows make tiny gaps significant)
    null_rate_increase: float = 0.05  # null rate above the baseline's by more than this
    out_of_range: float = 0.05  # share of values outside the baseline's [min, max]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown threshold(s) {bad}: use {sorted(known)}")
        out = cls(**{k: float(v) for k, v in d.items()})
        for k, v in asdict(out).items():
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"threshold {k} = {v} must be a finite number ≥ 0")
        return out


def _check_column(base: FeatureBaseline, col: np.ndarray, t: Thresholds) -> dict[str, Any]:
    nan = np.isnan(col)
    ok = col[~nan] if nan.any() else col
    null_rate = float(1 - ok.size / col.size) if col.size else 0.0
    out: dict[str, Any] = {"name": base.name, "rows": int(col.size), "null_rate": null_rate, "flags": []}
    if null_rate - base.null_rate > t.null_rate_increase:
        out["flags"].append(f"null rate {null_rate:.1%} (baseline {base.null_rate:.1%})")
    if ok.size == 0:
        out.update(out_of_range=0.0, psi=None, ks_statistic=None, ks_pvalue=None)
        return out
    oor = float(np.mean((ok < base.min) | (ok > base.max)))
    out["out_of_range"] = oor
    if oor > t.out_of_range:
        out["flags"].append(
            f"{oor:.1%} of values outside the baseline's range [{base.min:.4g}, {base.max:.4g}]"
        )
    out["psi"] = psi(base.shares, _shares(ok, base.edges))
    cur = np.sort(ok)
    d = ks_statistic(base.sample, cur)
    p = ks_pvalue(d, base.sample.size, cur.size)
    out["ks_statistic"], out["ks_pvalue"] = d, p
    if out["psi"] > t.psi:
        out["flags"].append(f"PSI {out['psi']:.3f} > {t.psi}")
    if p < t.ks_pvalue and d > t.ks_statistic:
        out["flags"].append(f"KS {d:.3f} (p = {p:.2g})")
    return out


def run_checks(
    baseline: Baseline,
    x: np.ndarray,
    predictions: np.ndarray | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Check rows X (n rows by features, NaN for values that were missing or not numbers) and the PREDICTIONS made on
    them against BASELINE. The report: status (``passed``, ``failed``, ``no_data``), rows, per-feature and
    per-output results (null rate, out-of-range share, PSI, KS statistic and p-value, flags), what is flagged."""
    t = thresholds or Thresholds()
    x = np.asarray(x, dtype=np.float64)
    report: dict[str, Any] = {
        "baseline_sha256": baseline.sha256,
        "thresholds": asdict(t),
        "rows": int(x.shape[0]) if x.ndim == 2 else 0,
        "features": [],
        "predictions": [],
        "flagged": [],
        "problems": [],
    }
    if x.ndim != 2 or x.shape[0] == 0:
        report["status"] = "no_data"
        return report
    n_base = len(baseline.features)
    if x.shape[1] != n_base:
        missing = [f.name for f in baseline.features[x.shape[1] :]]
        report["problems"].append(
            f"the rows have {x.shape[1]} features, the baseline {n_base}"
            + (f": missing {', '.join(missing[:10])}" if missing else "")
        )
    for i, base in enumerate(baseline.features[: x.shape[1]]):
        r = _check_column(base, x[:, i], t)
        report["features"].append(r)
        if r["flags"]:
            report["flagged"].append(base.name)
    if predictions is not None and baseline.predictions:
        p = np.asarray(predictions, dtype=np.float64).reshape(x.shape[0], -1)
        for i, base in enumerate(baseline.predictions[: p.shape[1]]):
            r = _check_column(base, p[:, i], t)
            report["predictions"].append(r)
            if r["flags"]:
                report["flagged"].append(base.name)
    report["status"] = "failed" if report["flagged"] or report["problems"] else "passed"
    return report
