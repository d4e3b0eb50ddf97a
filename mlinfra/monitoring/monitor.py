"""One monitoring run (`mlinfra monitor run`): the data a DataCollection captured since the last run, checked against a
baseline's statistics (mlinfra_scoring.checks: data quality, PSI and KS per feature, prediction drift); the report
kept in storage; an alert to webhooks when a check fails. Issue 21's first part — the ModelMonitor component that runs
this on a schedule is not built yet.

Storage (``--reports``: a folder URI or an Azure container URL), per monitor NAME::

    NAME/baseline/<sha256>/baseline.json, sample.npz    the baseline's statistics, computed once per baseline
    NAME/runs/<YYYY-MM-DD>/<HHMMSS>Z/report.json        each run's report (checks, window, malformed records, alerts)
    NAME/runs/<YYYY-MM-DD>/<HHMMSS>Z/report.html        the same with a PSI chart
    NAME/index.json, NAME/index.html                    every run, and each feature's PSI over the runs (plot)

A run reads records newer than the previous run's end (``index.json``'s watermark). Webhooks get one JSON event per
failed run — ``{"monitor", "status", "flagged", "rows", "report", "text"}``, where ``text`` makes it a valid Slack or
Teams incoming-webhook message — retried three times with backoff, at most one per ``alert_interval_s``; a webhook
that is down never loses the run's report (the attempts are counted in it). Webhook URLs are secrets: only their
host is ever printed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlinfra.errors import MonitorError
from mlinfra.monitoring.drift import png_bytes, read_collected
from mlinfra.registry.store import Store, open_store
from mlinfra_scoring.checks import Baseline, Thresholds, compute_baseline, run_checks


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


def baseline_for(store: Store, run: MonitorRun) -> Baseline:
    """The baseline's statistics, computed once per baseline content and kept in the reports store."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(run.baseline_rows, dtype=np.float64)).tobytes())
    if run.baseline_predictions is not None:
        h.update(np.ascontiguousarray(np.asarray(run.baseline_predictions, dtype=np.float64)).tobytes())
    prefix = f"{run.name}/baseline/{h.hexdigest()}/"
    files = {k: store.get(prefix + k) for k in ("baseline.json", "sample.npz")}
    if all(files.values()):
        return Baseline.from_files({k: v[0] for k, v in files.items() if v})
    try:
        base = compute_baseline(run.baseline_rows, run.feature_names, run.baseline_predictions)
    except ValueError as e:
        raise MonitorError(f"baseline: {e}") from None
    for k, data in base.to_files().items():
        store.put(prefix + k, data)
    return base


def _index(store: Store, name: str) -> dict[str, Any]:
    got = store.get(f"{name}/index.json")
    if got is None:
        return {"monitor": name, "runs": [], "last_alert_at": None}
    try:
        return dict(json.loads(got[0]))
    except ValueError:
        raise MonitorError(f"{store.uri}/{name}/index.json is not JSON: fix or remove it") from None


def monitor_run(run: MonitorRun, now: datetime | None = None) -> dict[str, Any]:
    """Run the checks once; returns the run's report (also stored, with the index updated)."""
    now = now or datetime.now(UTC)
    store = open_store(run.reports, run.reports_credential)
    index = _index(store, run.name)
    since = index["runs"][-1]["until"] if index["runs"] else None
    until = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    base = baseline_for(store, run)
    malformed, examples = 0, []
    try:
        got = read_collected(run.collected, run.collected_credential, run.prefix, since)
        x = got.x
        preds = np.concatenate(got.outputs) if got.outputs and len(got.outputs) == got.records else None
        malformed, examples = got.malformed, got.malformed_examples
    except MonitorError as e:
        if "no usable records" not in str(e):
            raise
        x, preds = np.zeros((0, len(base.features))), None
    report = run_checks(base, x, preds, run.thresholds)
    report.update(
        monitor=run.name,
        window={"since": since, "until": until},
        malformed_records=malformed,
        malformed_examples=examples,
    )
    key = f"{run.name}/runs/{now:%Y-%m-%d}/{now:%H%M%S}Z"
    report["report"] = f"{store.uri.rstrip('/')}/{key}/report.json"
    report["alerts"] = _alert(run, index, report, now)
    store.put(f"{key}/report.json", json.dumps(report, indent=1).encode())
    store.put(f"{key}/report.html", _report_html(report).encode())
    index["runs"].append(
        {
            "until": until,
            "status": report["status"],
            "rows": report["rows"],
            "flagged": report["flagged"],
            "report": f"{key}/report.json",
            "psi": {f["name"]: f["psi"] for f in report["features"] + report["predictions"]},
        }
    )
    store.put(f"{run.name}/index.json", json.dumps(index, indent=1).encode())
    store.put(f"{run.name}/index.html", _index_html(index).encode())
    return report


# -- alerts -----------------------------------------------------------------------------------------------------


def _alert(run: MonitorRun, index: dict[str, Any], report: dict[str, Any], now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"sent": 0, "failed": 0, "suppressed": 0, "errors": []}
    if report["status"] != "failed" or not run.webhooks:
        return out
    last = index.get("last_alert_at")
    if last and (now - datetime.fromisoformat(last)).total_seconds() < run.alert_interval_s:
        out["suppressed"] = len(run.webhooks)
        return out
    flagged = ", ".join(report["flagged"]) or "; ".join(report["problems"])
    event = {
        "monitor": run.name,
        "status": report["status"],
        "flagged": report["flagged"],
        "problems": report["problems"],
        "rows": report["rows"],
        "window": report["window"],
        "report": report["report"],
        "text": f"mlinfra monitor {run.name}: {flagged} failed its checks over {report['rows']:,d} rows "
        f"({report['report']})",
    }
    body = json.dumps(event).encode()
    for url in run.webhooks:
        error = _post(url, body)
        if error is None:
            out["sent"] += 1
        else:
            out["failed"] += 1
            out["errors"].append(error)
    if out["sent"]:
        index["last_alert_at"] = now.isoformat()
    return out


def _post(url: str, body: bytes, attempts: int = 3) -> str | None:
    """POST BODY to URL, retrying on errors and 5xx/429 with backoff; None when delivered, else why (naming only the
    host: the URL is a secret)."""
    host = urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1] or "?"
    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * 2 ** (attempt - 1))
        req = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:  # the operator's webhook
                r.read(1024)
                return None
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}"
            if e.code < 500 and e.code != 429:
                break
        except (OSError, ValueError) as e:
            why = type(e).__name__
    return f"webhook {host}: {why} after {attempt + 1} attempt(s)"


# -- pages ------------------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    """FIG as base64 PNG for an <img> (and closed)."""
    import matplotlib.pyplot as plt

    data = png_bytes(fig)
    plt.close(fig)
    return base64.b64encode(data).decode()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _esc(v: object) -> str:
    import html

    return html.escape(str(v))


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _report_html(report: dict[str, Any]) -> str:
    rows = report["features"] + report["predictions"]
    img = ""
    if rows and any(r.get("psi") is not None for r in rows):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(4, len(rows) * 0.35), 3))
        ax.bar([r["name"] for r in rows], [r.get("psi") or 0 for r in rows],
               color=["#c0392b" if r["flags"] else "#2e86c1" for r in rows])  # fmt: skip
        ax.axhline(report["thresholds"]["psi"], color="gray", linestyle="--", linewidth=1)
        ax.set_ylabel("PSI")
        ax.tick_params(axis="x", rotation=90)
        fig.tight_layout()
        img = f'<img alt="PSI per feature" src="data:image/png;base64,{_png(fig)}">'
    table = "".join(
        f"<tr><td>{_esc(r['name'])}</td><td>{r['null_rate']:.2%}</td><td>{(r.get('out_of_range') or 0):.2%}</td>"
        f"<td>{_num(r.get('psi'))}</td><td>{_num(r.get('ks_statistic'))}</td>"
        f"<td>{_esc('; '.join(r['flags']))}</td></tr>"
        for r in rows
    )
    problems = "".join(f"<li>{_esc(p)}</li>" for p in report["problems"])
    return (
        f"<!doctype html><meta charset=utf-8><title>{_esc(report['monitor'])} {_esc(report['window']['until'])}"
        f"</title><h1>{_esc(report['monitor'])}: {_esc(report['status'])}</h1>"
        f"<p>{report['rows']:,d} rows from {_esc(report['window']['since'] or 'the start')} to "
        f"{_esc(report['window']['until'])}; {report['malformed_records']} malformed record(s) skipped.</p>"
        f"<ul>{problems}</ul>{img}<table border=1 cellpadding=4><tr><th>feature</th><th>null</th>"
        f"<th>out of range</th><th>PSI</th><th>KS</th><th>flags</th></tr>{table}</table>"
    )


def _index_html(index: dict[str, Any]) -> str:
    runs = index["runs"]
    img = ""
    names = sorted({n for r in runs for n in r["psi"]})
    if runs and names:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = list(range(1, len(runs) + 1))
        for n in names:
            ax.plot(xs, [r["psi"].get(n) if r["psi"].get(n) is not None else np.nan for r in runs], marker="o",
                    label=n if any(n in r["flagged"] for r in runs) else None)  # fmt: skip
        ax.set_xlabel("run")
        ax.set_ylabel("PSI")
        ax.set_xticks(xs)
        if any(r["flagged"] for r in runs):
            ax.legend(fontsize=7)
        fig.tight_layout()
        img = f'<img alt="PSI per feature over the runs" src="data:image/png;base64,{_png(fig)}">'
    table = "".join(
        f"<tr><td>{_esc(r['until'])}</td><td>{_esc(r['status'])}</td><td>{r['rows']:,d}</td>"
        f'<td>{_esc(", ".join(r["flagged"]))}</td><td><a href="../{_esc(r["report"])}">report</a></td></tr>'
        for r in reversed(runs)
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>{_esc(index['monitor'])}</title>"
        f"<h1>{_esc(index['monitor'])}: {len(runs)} run(s)</h1>{img}<table border=1 cellpadding=4><tr><th>until</th>"
        f"<th>status</th><th>rows</th><th>flagged</th><th></th></tr>{table}</table>"
    )
