"""One monitoring run from this machine (`mlinfra monitor run NAME --collected ... --baseline FILE`): the checks a
ModelMonitor runs on a schedule (the runtime's :mod:`mlinfra_scoring.monitor` does the run, its storage layout and
alerts are documented there), with the baseline given as rows here and its statistics computed and kept on the
first run; storage reached with an account key or a SAS (the registry's stores)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from mlinfra.errors import ModelRegistryError, MonitorError
from mlinfra.monitoring.drift import _iter_blobs
from mlinfra.registry.store import Store, open_store
from mlinfra_scoring.checks import Baseline, Thresholds, compute_baseline
from mlinfra_scoring.collector import join_at_most
from mlinfra_scoring.monitor import MonitorConfig, MonitorConfigError, run_once
from mlinfra_scoring.monitor import load_baseline as load_stats


class RuntimeStore:
    """A registry store (account key, SAS or folder) as the runtime monitor's storage."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, name: str) -> bytes | None:
        """The object's bytes, None when there is none; Oversized past collector.MAX_FILE_BYTES, as the runtime's
        own stores: read block by block and never more than the limit, so a planted huge file cannot exhaust the
        monitor's memory."""
        try:
            return join_at_most(
                self.store.open_read(name), f"{self.store.uri}/{name}", lambda: self.store.size(name)
            )
        except ModelRegistryError:
            if not self.store.exists(name):  # absent (or gone since it was listed)
                return None
            raise

    def put(self, name: str, data: bytes, content_type: str = "") -> None:
        self.store.put(name, data)

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        return [(n, 0.0) for n in self.store.list(prefix)]


def baseline_sha256(rows: np.ndarray, predictions: np.ndarray | None = None) -> str:
    """What names a baseline's statistics in storage: the sha256 of its rows (and predictions) as float64."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(rows, dtype=np.float64)).tobytes())
    if predictions is not None:
        h.update(np.ascontiguousarray(np.asarray(predictions, dtype=np.float64)).tobytes())
    return h.hexdigest()


def store_baseline(
    reports: RuntimeStore,
    name: str,
    rows: np.ndarray,
    feature_names: list[str] | None = None,
    predictions: np.ndarray | None = None,
    sha: str | None = None,
) -> Baseline:
    """The baseline's statistics, computed once per baseline and kept under NAME/baseline/<sha256>/ (SHA: the
    rows' own, or what names a window of collected records)."""
    sha = sha or baseline_sha256(rows, predictions)
    try:
        return load_stats(reports, name, sha)
    except MonitorConfigError:
        pass
    try:
        base = compute_baseline(rows, feature_names, predictions)
    except ValueError as e:
        raise MonitorError(f"baseline: {e}") from None
    base.sha256 = sha
    for k, data in base.to_files().items():
        reports.put(f"{name}/baseline/{sha}/{k}", data)
    return base


@dataclass
class MonitorRun:
    name: str
    collected: str
    reports: str
    baseline_rows: np.ndarray
    feature_names: list[str] | None = None
    baseline_predictions: np.ndarray | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    webhooks: list[str] = field(default_factory=list)
    alert_interval_s: float = 300.0
    collected_credential: str | None = None
    reports_credential: str | None = None
    prefix: str = ""


def monitor_run(run: MonitorRun, now: datetime | None = None) -> dict[str, Any]:
    """Run the checks once; returns the run's report (also stored, with the index updated)."""
    store = open_store(run.reports, run.reports_credential)
    reports = RuntimeStore(store)
    base = store_baseline(reports, run.name, run.baseline_rows, run.feature_names, run.baseline_predictions)
    cfg = MonitorConfig(
        name=run.name,
        collected=run.collected,
        reports=run.reports,
        baseline=base.sha256,
        prefix=run.prefix,
        thresholds=run.thresholds,
        alert_interval_s=run.alert_interval_s,
        lag_s=0.0,  # a run from here checks what is there now
    )
    try:
        report = run_once(
            cfg, reports, lambda _since: _iter_blobs(run.collected, run.collected_credential, run.prefix), base,
            run.webhooks, now,
        )  # fmt: skip
    except MonitorConfigError as e:
        raise MonitorError(str(e)) from None
    return report
