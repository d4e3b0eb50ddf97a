"""Model monitoring runs, from the scoring image's runtime: the records a DataCollection captured since the last run,
checked against a baseline's statistics (:mod:`mlinfra_scoring.checks`), the report and an index across runs kept in
storage, webhooks alerted when a check fails, metrics per feature and per check for Prometheus.

``python -m mlinfra_scoring.monitor`` is what a ModelMonitor runs (mlinfra.monitoring.model_monitor):

- ``--once``: one run, then exit (a Kubernetes CronJob's container; exit 1 when the run failed its checks);
- otherwise a scheduler: a run at each time the cron ``schedule`` names (UTC), ``/metrics`` (Prometheus text) and
  ``/healthz`` on ``--metrics-port`` (Local Docker's scheduled container). ``--once`` in the same container (what
  ``mlinfra monitor run NAME`` does through ``docker exec``) shares a lock with the scheduler: runs never overlap.

Configuration: ``MLINFRA_MONITOR`` (JSON: ``name``, ``collected`` and ``reports`` — ``file:///folder`` or
``azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL`` —, ``prefix`` of the collected blobs, ``baseline`` (its
sha256: the statistics under ``NAME/baseline/<sha256>/`` in the reports), ``thresholds``, ``alert_interval_s``,
``schedule``); secrets only from the environment: ``MLINFRA_MONITOR_COLLECTED_SAS`` (read + list),
``MLINFRA_MONITOR_REPORTS_SAS`` (read + write + list), ``MLINFRA_MONITOR_WEBHOOKS`` (comma-separated URLs); and
``MLINFRA_MONITOR_OTLP_ENDPOINT`` (each run's metrics also sent over OTLP/HTTP, e.g. http://127.0.0.1:4318).

Storage, per monitor NAME (keys relative to the reports location)::

    NAME/baseline/<sha256>/baseline.json, sample.npz    the baseline's statistics (written at `pulumi up`)
    NAME/runs/<YYYY-MM-DD>/<HHMMSS>Z/report.json        each run's report (checks, window, malformed records, alerts)
    NAME/runs/<YYYY-MM-DD>/<HHMMSS>Z/report.html        the same with a PSI chart (inline SVG)
    NAME/index.json, NAME/index.html                    every run, and each feature's PSI across the runs (SVG plot)
    NAME/metrics.prom                                   the last run's metrics, Prometheus text format

A run reads the records whose ``time`` is in [previous run's end, now - ``lag_s``) — skipping, by their modification
time, the blobs written before the previous run — so it reads only new data, each record once. ``lag_s`` (60 s)
leaves time for records to land (servers flush each second, and retry a failed upload); records that land later
still (a server's spool that waited out a storage outage) fall before the watermark and are not checked; they stay
in storage. Webhooks get one JSON event per failed run — ``{"monitor", "status",
"flagged", "problems", "rows", "window", "report", "text"}``, ``text`` making it a valid Slack or Teams
incoming-webhook message — retried three times with backoff, at most one per ``alert_interval_s``; a webhook that
is down never loses the run's report (the attempts are counted in it). Webhook URLs are secrets: only their host is
ever printed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import html
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlinfra_scoring.checks import Baseline, Thresholds, run_checks
from mlinfra_scoring.collector import MAX_FILE_BYTES, CollectorConfigError, Oversized, SinkError, open_sink

LATE_S = 120.0
"""Blobs modified this long before the previous run's end are still read (clock skew, a put in flight)."""
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "mlinfra-monitor.lock"


class MonitorConfigError(ValueError):
    """Configuration that cannot work; the message names the value and the fix."""


class Store(Protocol):
    def get(self, name: str) -> bytes | None: ...
    def put(self, name: str, data: bytes, content_type: str = "") -> None: ...
    def list(self, prefix: str = "") -> list[tuple[str, float]]: ...


def open_store(uri: str, sas: str | None) -> Store:
    """A folder or a blob container (a SAS) as a Store."""
    try:
        return open_sink(uri, sas)
    except CollectorConfigError as e:
        raise MonitorConfigError(str(e).replace("MLINFRA_SERVE_COLLECT_CREDENTIAL", "a SAS")) from None


# -- records ----------------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """The rows (and outputs) of the records read, and what could not be read."""

    x: np.ndarray
    outputs: list[np.ndarray]
    records: int = 0
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    files: int = 0


_loads: Callable[[bytes], Any] = json.loads
with contextlib.suppress(ImportError):  # orjson (a scoring-server dependency) parses several times faster
    from orjson import loads as _loads


def _rows(v: Any) -> list[list[Any]]:
    """A record's input or output value as rows: a list of rows, a flat row, or one number."""
    if isinstance(v, list) and v and isinstance(v[0], list):
        if v[0] and isinstance(v[0][0], list):  # [1, rows, features]: flatten the leading dimensions
            a = np.asarray(v, dtype=np.float64)
            return [list(r) for r in a.reshape(-1, a.shape[-1])]
        return v
    if isinstance(v, list):
        return [v]
    if isinstance(v, int | float) and not isinstance(v, bool):
        return [[v]]
    raise TypeError(f"not rows of numbers ({type(v).__name__})")


def parse_collected(
    blobs: Iterable[tuple[str, bytes | None]], since: str | None = None, until: str | None = None
) -> Collected:
    """The feature rows of collected JSON Lines records (a served request's ``inputs``, or a scoring script's
    ``model_inputs`` collection) whose ``time`` is in [SINCE, UNTIL); outputs when every record has them. Records
    that are not JSON, lack inputs, hold something other than numbers, or have another feature count than the first
    are skipped and counted. Each blob's rows are gathered as lists and converted in one go, so memory holds numpy
    arrays, not Python objects (an hour at 1,000 records/s is 3.6 M records: benchmarks/monitoring)."""
    c = Collected(np.zeros((0, 0)), [])
    x_parts: list[np.ndarray] = []
    y_parts: list[np.ndarray] = []
    all_outputs = True
    width = -1

    def bad(where: str, why: str) -> None:
        c.malformed += 1
        if len(c.malformed_examples) < 5:
            c.malformed_examples.append(f"{where}: {why}")

    for name, data in blobs:
        c.files += 1
        if data is None:  # too large to read (collector.MAX_FILE_BYTES)
            bad(name, f"over {MAX_FILE_BYTES >> 20} MiB: not read")
            continue
        xs: list[list[Any]] = []
        ys: list[list[Any]] = []
        spans: list[tuple[str, int, int, int, int]] = []  # (where, first row, rows, first output, outputs)
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = _loads(line)
                t = r.get("time", "")
                if (since and t < since) or (until and t >= until):
                    continue
                if "collection" in r:  # a scoring script's record: its model_inputs are the features
                    if r["collection"] != "model_inputs":
                        continue
                    r = {"inputs": {"data": r["data"]}}
                rows = _rows(next(iter(r["inputs"].values())))
                outs = _rows(next(iter(r["outputs"].values()))) if r.get("outputs") else []
            except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as e:
                bad(f"{name}:{n}", type(e).__name__)
                continue
            if width < 0:
                width = len(rows[0])
            if any(len(row) != width for row in rows):
                bad(f"{name}:{n}", f"{len(rows[0])} features, others have {width}")
                continue
            spans.append((f"{name}:{n}", len(xs), len(rows), len(ys), len(outs)))
            xs.extend(rows)
            ys.extend(outs)
            all_outputs = all_outputs and bool(outs)
        if not spans:
            continue
        try:
            x_parts.append(np.asarray(xs, dtype=np.float64))
            good = spans
        except (ValueError, TypeError):  # something that is not a number: find those records, skip them
            good = []
            for span in spans:
                try:
                    x_parts.append(np.asarray(xs[span[1] : span[1] + span[2]], dtype=np.float64))
                    good.append(span)
                except (ValueError, TypeError) as e:
                    bad(span[0], type(e).__name__)
        c.records += len(good)
        if all_outputs:
            try:
                y = np.asarray([row for s in good for row in ys[s[3] : s[3] + s[4]]], dtype=np.float64)
                y_parts.append(y.reshape(sum(s[2] for s in good), -1))
            except (ValueError, TypeError):
                all_outputs = (
                    False  # outputs of another shape per record: no prediction drift for this window
                )
    if x_parts:
        c.x = np.concatenate(x_parts)
    else:
        c.x = np.zeros((0, max(width, 0)))
    c.outputs = y_parts if all_outputs and y_parts else []
    return c


def new_blobs(store: Store, prefix: str, since: str | None) -> Iterator[tuple[str, bytes | None]]:
    """The ``.jsonl`` blobs under PREFIX modified since SINCE (an ISO UTC time; all when None), with their bytes
    (None: over collector.MAX_FILE_BYTES, not read)."""
    floor = _epoch(since) - LATE_S if since else None
    for name, modified in store.list(prefix):
        if not name.endswith(".jsonl") or (floor is not None and modified < floor):
            continue
        try:
            data = store.get(name)
        except Oversized:
            yield name, None  # counted as malformed, named in the report
            continue
        if data is not None:
            yield name, data


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def stamp(t: datetime) -> str:
    """T as records' ``time`` is written: UTC to the millisecond, ``Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# -- one run ----------------------------------------------------------------------------------------------------


@dataclass
class MonitorConfig:
    name: str
    collected: str
    reports: str
    baseline: (
        str  # the sha256 of the baseline: its statistics are under NAME/baseline/<sha256>/ in the reports
    )
    prefix: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)
    alert_interval_s: float = 300.0
    schedule: str = "0 * * * *"
    lag_s: float = 60.0  # a run checks records up to this long ago: the newer ones may still be on their way

    @classmethod
    def from_json(cls, text: str) -> MonitorConfig:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            known = set(cls.__dataclass_fields__)
            unknown = sorted(set(d) - known)
            if unknown:
                raise MonitorConfigError(f"MLINFRA_MONITOR: unknown key(s) {unknown}; known: {sorted(known)}")
            d["thresholds"] = Thresholds.from_dict(d.get("thresholds") or {})
            cfg = cls(**d)
        except MonitorConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise MonitorConfigError(f"MLINFRA_MONITOR: {e}") from None
        if not cfg.name or "/" in cfg.name:
            raise MonitorConfigError(f"MLINFRA_MONITOR: name {cfg.name!r} must be non-empty, without '/'")
        Cron.parse(cfg.schedule)
        return cfg


def location(uri: str, key: str) -> str:
    """Where KEY of the storage URI is, as a link: a file URL, or the blob's URL (no credential)."""
    u = urllib.parse.urlsplit(uri)
    if u.scheme == "azblob":
        endpoint = (
            dict(urllib.parse.parse_qsl(u.query)).get("endpoint")
            or f"https://{u.netloc}.blob.core.windows.net"
        )
        return f"{endpoint.rstrip('/')}/{u.path.strip('/')}/{key}"
    return f"{uri.rstrip('/')}/{key}"


def load_baseline(reports: Store, name: str, sha256: str) -> Baseline:
    prefix = f"{name}/baseline/{sha256}/"
    files = {k: reports.get(prefix + k) for k in ("baseline.json", "sample.npz")}
    if not all(files.values()):
        raise MonitorConfigError(
            f"the baseline statistics {prefix} are not in the reports storage: `pulumi up` the ModelMonitor (it "
            "computes them) or run `mlinfra monitor run` with --baseline"
        )
    return Baseline.from_files({k: v for k, v in files.items() if v is not None})


def read_index(reports: Store, name: str) -> dict[str, Any]:
    got = reports.get(f"{name}/index.json")
    if got is None:
        return {"monitor": name, "runs": [], "last_alert_at": None}
    try:
        index = json.loads(got)
        if not isinstance(index, dict) or not isinstance(index.get("runs"), list):
            raise ValueError("no runs")
        for run in index["runs"]:
            if not (
                isinstance(run, dict)
                and isinstance(run.get("until"), str)
                and isinstance(run.get("rows"), int)
                and isinstance(run.get("flagged"), list)
                and isinstance(run.get("psi"), dict)
                and isinstance(run.get("status"), str)
                and isinstance(run.get("report"), str)
            ):
                raise ValueError("a run without until, status, rows, flagged, report or psi")
        if index["runs"]:
            _epoch(index["runs"][-1]["until"])  # the watermark must be a time
        return index
    except (ValueError, TypeError):
        raise MonitorConfigError(
            f"{name}/index.json in the reports is not a monitor's index: fix or remove it"
        ) from None


def run_once(
    cfg: MonitorConfig,
    reports: Store,
    records: Callable[[str | None], Iterable[tuple[str, bytes | None]]],
    baseline: Baseline,
    webhooks: list[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run the checks once over RECORDS(since) — the blobs to read given the previous run's end; returns the run's
    report, also stored with the index, the pages and the metrics updated."""
    now = now or datetime.now(UTC)
    index = read_index(reports, cfg.name)
    since = index["runs"][-1]["until"] if index["runs"] else None
    until = stamp(now - timedelta(seconds=cfg.lag_s))
    got = parse_collected(records(since), since, until)
    preds = np.concatenate(got.outputs) if got.outputs else None
    x = got.x if got.records else np.zeros((0, len(baseline.features)))
    report = run_checks(baseline, x, preds, cfg.thresholds)
    report.update(
        monitor=cfg.name,
        window={"since": since, "until": until},
        malformed_records=got.malformed,
        malformed_examples=got.malformed_examples,
        files_read=got.files,
    )
    key = f"{cfg.name}/runs/{now:%Y-%m-%d}/{now:%H%M%S}Z"
    report["report"] = location(cfg.reports, f"{key}/report.json")
    report["alerts"] = _alert(cfg, webhooks, index, report, now)
    reports.put(f"{key}/report.json", json.dumps(report, indent=1).encode(), "application/json")
    reports.put(f"{key}/report.html", report_html(report).encode(), "text/html")
    index["runs"].append(
        {
            "until": until,
            "status": report["status"],
            "rows": report["rows"],
            "flagged": report["flagged"],
            "report": f"{key}/report.json",
            "psi": {f["name"]: f.get("psi") for f in report["features"] + report["predictions"]},
            "psi_threshold": cfg.thresholds.psi,
        }
    )
    reports.put(f"{cfg.name}/index.json", json.dumps(index, indent=1).encode(), "application/json")
    reports.put(f"{cfg.name}/index.html", index_html(index).encode(), "text/html")
    reports.put(f"{cfg.name}/metrics.prom", metrics_text([report]).encode(), "text/plain")
    return report


# -- alerts -----------------------------------------------------------------------------------------------------


def _alert(
    cfg: MonitorConfig, webhooks: list[str], index: dict[str, Any], report: dict[str, Any], now: datetime
) -> dict[str, Any]:
    out: dict[str, Any] = {"sent": 0, "failed": 0, "suppressed": 0, "errors": []}
    if report["status"] != "failed" or not webhooks:
        return out
    last = index.get("last_alert_at")
    if last and (now - datetime.fromisoformat(last)).total_seconds() < cfg.alert_interval_s:
        out["suppressed"] = len(webhooks)
        return out
    flagged = ", ".join(report["flagged"]) or "; ".join(report["problems"])
    event = {
        "monitor": cfg.name,
        "status": report["status"],
        "flagged": report["flagged"],
        "problems": report["problems"],
        "rows": report["rows"],
        "window": report["window"],
        "report": report["report"],
        "text": f"mlinfra monitor {cfg.name}: {flagged} failed its checks over {report['rows']:,d} rows "
        f"({report['report']})",
    }
    body = json.dumps(event).encode()
    for url in webhooks:
        error = post_webhook(url, body)
        if error is None:
            out["sent"] += 1
        else:
            out["failed"] += 1
            out["errors"].append(error)
    if out["sent"]:
        index["last_alert_at"] = now.isoformat()
    return out


def webhook_host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1] or "?"


def post_webhook(url: str, body: bytes, attempts: int = 3) -> str | None:
    """POST BODY to URL, retrying on errors and 5xx/429 with backoff; None when delivered, else why (naming only the
    host: the URL is a secret)."""
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
    return f"webhook {webhook_host(url)}: {why} after {attempt + 1} attempt(s)"


def parse_webhooks(text: str) -> list[str]:
    """Comma- or whitespace-separated webhook URLs; a value that is not an http(s) URL is refused without showing
    it (they are secrets)."""
    urls = [u for u in text.replace(",", " ").split() if u]
    for i, u in enumerate(urls, 1):
        if not u.startswith(("http://", "https://")) or not urllib.parse.urlsplit(u).netloc:
            raise MonitorConfigError(
                f"webhook #{i} is not an http(s) URL (its value is not shown: it is a secret)"
            )
    return urls


# -- metrics ----------------------------------------------------------------------------------------------------

_GAUGES = (
    ("psi", "mlinfra_monitor_psi", "Population stability index against the baseline, last run"),
    ("ks_statistic", "mlinfra_monitor_ks_statistic", "Two-sample Kolmogorov-Smirnov statistic, last run"),
    ("ks_pvalue", "mlinfra_monitor_ks_pvalue", "Kolmogorov-Smirnov p-value, last run"),
    ("null_rate", "mlinfra_monitor_null_rate", "Share of missing values, last run"),
    (
        "out_of_range",
        "mlinfra_monitor_out_of_range",
        "Share of values outside the baseline's range, last run",
    ),
)
_CHECKS = (("null rate", "null_rate"), ("outside", "out_of_range"), ("PSI", "psi"), ("KS", "ks"))


def _label(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(reports: list[dict[str, Any]], counts: dict[tuple[str, str], int] | None = None) -> str:
    """Prometheus text for the last run of each monitor in REPORTS: per feature and output the statistics, per
    feature and check whether it failed, per monitor the run's status, rows, malformed records and time; COUNTS
    ((monitor, status) → runs) as ``mlinfra_monitor_runs_total``."""
    lines: list[str] = []

    def family(metric: str, kind: str, text: str, samples: list[tuple[dict[str, object], float]]) -> None:
        lines.extend([f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"])
        for labels, value in samples:
            ls = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{metric}{{{ls}}} {value!r}")

    def columns(r: dict[str, Any]) -> Iterator[tuple[dict[str, object], dict[str, Any]]]:
        for kind in ("features", "predictions"):
            for f in r[kind]:
                yield {"monitor": r["monitor"], "feature": f["name"], "kind": kind[:-1]}, f

    for key, metric, text in _GAUGES:
        family(metric, "gauge", text, [(lb, float(f[key])) for r in reports for lb, f in columns(r)
                                       if f.get(key) is not None])  # fmt: skip
    family(
        "mlinfra_monitor_check_failed",
        "gauge",
        "1 when the feature failed the check in the last run",
        [
            ({**lb, "check": check}, float(any(flag.startswith(word) or word in flag for flag in f["flags"])))
            for r in reports
            for lb, f in columns(r)
            for word, check in _CHECKS
        ],
    )
    family("mlinfra_monitor_last_run_status", "gauge", "1 for the status of the last run",
           [({"monitor": r["monitor"], "status": s}, float(r["status"] == s)) for r in reports
            for s in ("passed", "failed", "no_data")])  # fmt: skip
    family("mlinfra_monitor_last_run_rows", "gauge", "Rows checked by the last run",
           [({"monitor": r["monitor"]}, float(r["rows"])) for r in reports])  # fmt: skip
    family("mlinfra_monitor_last_run_malformed_records", "gauge", "Records skipped as malformed by the last run",
           [({"monitor": r["monitor"]}, float(r.get("malformed_records", 0))) for r in reports])  # fmt: skip
    family("mlinfra_monitor_last_run_timestamp_seconds", "gauge", "When the last run's window ended",
           [({"monitor": r["monitor"]}, _epoch(r["window"]["until"])) for r in reports])  # fmt: skip
    family("mlinfra_monitor_last_run_alerts_failed", "gauge", "Webhook deliveries that failed in the last run",
           [({"monitor": r["monitor"]}, float(r.get("alerts", {}).get("failed", 0))) for r in reports])  # fmt: skip
    if counts is not None:
        family("mlinfra_monitor_runs_total", "counter", "Runs by status since the scheduler started",
               [({"monitor": m, "status": s}, float(n)) for (m, s), n in sorted(counts.items())])  # fmt: skip
    return "\n".join(lines) + "\n"


# -- pages ------------------------------------------------------------------------------------------------------


def _esc(v: object) -> str:
    return html.escape(str(v))


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def svg_bars(
    labels: list[str], values: list[float], flagged: list[bool], threshold: float, title: str
) -> str:
    """A bar chart (one bar per label, red when flagged) with a dashed threshold line, as inline SVG."""
    w, h, left, bottom = max(360, 28 * len(labels) + 60), 240, 48, 70
    top = max([threshold * 1.25, *values, 1e-9])
    bw = (w - left - 10) / max(len(labels), 1)

    def y(v: float) -> float:
        return 10 + (h - bottom - 10) * (1 - min(v, top) / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">'
    ]
    for i, (lab, v, red) in enumerate(zip(labels, values, flagged, strict=True)):
        x = left + i * bw
        parts.append(
            f'<rect x="{x + 3:.1f}" y="{y(v):.1f}" width="{bw - 6:.1f}" height="{h - bottom - y(v):.1f}" '
            f'fill="{"#c0392b" if red else "#2e86c1"}"><title>{_esc(lab)}: {v:.4f}</title></rect>'
            f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 8}" font-size="10" text-anchor="end" '
            f'transform="rotate(-60 {x + bw / 2:.1f} {h - bottom + 8})">{_esc(lab)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{w - 10}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" stroke="gray" '
        f'stroke-dasharray="4 3"/><text x="{left - 4}" y="{y(threshold) + 3:.1f}" font-size="10" '
        f'text-anchor="end">{threshold:g}</text><text x="4" y="12" font-size="11">{_esc(title)}</text></svg>'
    )
    return "".join(parts)


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def svg_lines(
    series: dict[str, list[float | None]], highlight: set[str], threshold: float, title: str
) -> str:
    """One line per series over the runs (x: run number), highlighted series coloured and named, the others grey,
    with a dashed threshold line, as inline SVG."""
    n = max((len(v) for v in series.values()), default=0)
    w, h, left, bottom = 640, 280, 48, 30
    top = max([threshold * 1.25] + [v for vs in series.values() for v in vs if v is not None])

    def xy(i: int, v: float) -> str:
        x = left + (w - left - 130) * (i / max(n - 1, 1))
        return f"{x:.1f},{10 + (h - bottom - 10) * (1 - min(v, top) / top):.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">'
    ]
    named = 0
    for name, values in sorted(series.items(), key=lambda kv: kv[0] in highlight):
        colour = _PALETTE[named % len(_PALETTE)] if name in highlight else "#c8c8c8"
        points = " ".join(xy(i, v) for i, v in enumerate(values) if v is not None)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="{2 if name in highlight else 1}" '
            f'points="{points}"><title>{_esc(name)}</title></polyline>'
        )
        for i, v in enumerate(values):
            if v is not None:
                x, y = xy(i, v).split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"><title>{_esc(name)} run {i + 1}: '
                             f"{v:.4f}</title></circle>")  # fmt: skip
        if name in highlight:
            parts.append(
                f'<text x="{w - 120}" y="{20 + 14 * named}" font-size="11" fill="{colour}">{_esc(name)}</text>'
            )
            named += 1
    y0 = 10 + (h - bottom - 10) * (1 - threshold / top)
    parts.append(
        f'<line x1="{left}" x2="{w - 130}" y1="{y0:.1f}" y2="{y0:.1f}" stroke="gray" stroke-dasharray="4 3"/>'
        f'<text x="{left - 4}" y="{y0 + 3:.1f}" font-size="10" text-anchor="end">{threshold:g}</text>'
        f'<text x="{left}" y="{h - 8}" font-size="10">run 1</text><text x="{w - 130}" y="{h - 8}" font-size="10" '
        f'text-anchor="end">run {n}</text><text x="4" y="12" font-size="11">{_esc(title)}</text></svg>'
    )
    return "".join(parts)


def report_html(report: dict[str, Any]) -> str:
    rows = report["features"] + report["predictions"]
    chart = ""
    if any(r.get("psi") is not None for r in rows):
        chart = svg_bars([r["name"] for r in rows], [r.get("psi") or 0.0 for r in rows],
                         [bool(r["flags"]) for r in rows], report["thresholds"]["psi"], "PSI per feature")  # fmt: skip
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
        f"<ul>{problems}</ul>{chart}<table border=1 cellpadding=4><tr><th>feature</th><th>null</th>"
        f"<th>out of range</th><th>PSI</th><th>KS</th><th>flags</th></tr>{table}</table>"
    )


def index_html(index: dict[str, Any]) -> str:
    runs = index["runs"]
    names = sorted({n for r in runs for n in r["psi"]})
    chart = ""
    if runs and names:
        series = {n: [r["psi"].get(n) for r in runs] for n in names}
        flagged = {n for r in runs for n in r["flagged"]}
        chart = svg_lines(
            series, flagged, float(runs[-1].get("psi_threshold", 0.2)), "PSI per feature over the runs"
        )
    table = "".join(
        f"<tr><td>{_esc(r['until'])}</td><td>{_esc(r['status'])}</td><td>{r['rows']:,d}</td>"
        f'<td>{_esc(", ".join(r["flagged"]))}</td><td><a href="../{_esc(r["report"])}">report</a></td></tr>'
        for r in reversed(runs)
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>{_esc(index['monitor'])}</title>"
        f"<h1>{_esc(index['monitor'])}: {len(runs)} run(s)</h1>{chart}<table border=1 cellpadding=4><tr><th>until</th>"
        f"<th>status</th><th>rows</th><th>flagged</th><th></th></tr>{table}</table>"
    )


# -- schedules --------------------------------------------------------------------------------------------------

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = {
    3: {
        m: i
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
        )
    },
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


@dataclass(frozen=True)
class Cron:
    """A cron schedule as Kubernetes CronJobs read it: five fields (minute hour day-of-month month day-of-week;
    ``*``, ``a-b``, ``*/n``, ``a-b/n``, lists, month and day names, 7 = Sunday), or a macro (``@hourly``,
    ``@daily``, ...), in UTC. When both day fields are restricted a day matching either runs, as cron does."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = _MACROS.get(str(expr).strip().lower(), str(expr).strip())
        parts = text.split()
        if len(parts) != 5:
            raise MonitorConfigError(
                f"schedule {expr!r} must be five cron fields (minute hour day-of-month month day-of-week), e.g. "
                "'0 * * * *' for hourly, or a macro such as @hourly or @daily"
            )
        sets = [_field(p, i, expr) for i, p in enumerate(parts)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(expr, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def _day_ok(self, t: datetime) -> bool:
        dom, dow = t.day in self.days, (t.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, t: datetime) -> datetime:
        """The first time after T (UTC, to the minute) the schedule names."""
        t = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(5 * 366 * 24):  # hours, at most: any valid schedule fires within 5 years (Feb 29)
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                later = [m for m in sorted(self.minutes) if m > t.minute]
                t = t.replace(minute=later[0]) if later else t.replace(minute=0) + timedelta(hours=1)
            else:
                return t
        raise MonitorConfigError(f"schedule {self.expr!r} never fires (e.g. 30 February)")


def _field(text: str, i: int, expr: str) -> frozenset[int]:
    what, lo, hi = _FIELDS[i]
    out: set[int] = set()

    def num(s: str) -> int:
        s = s.lower()
        if i in _NAMES and s in _NAMES[i]:
            return _NAMES[i][s]
        if not s.isdigit():
            raise MonitorConfigError(f"schedule {expr!r}: {what} {s!r} is not a number in {lo}..{hi}")
        v = int(s)
        if not lo <= v <= hi:
            raise MonitorConfigError(f"schedule {expr!r}: {what} {v} is outside {lo}..{hi}")
        return v

    for item in text.split(","):
        rng, _, step_s = item.partition("/")
        step = int(step_s) if step_s.isdigit() and int(step_s) > 0 else None
        if step_s and step is None:
            raise MonitorConfigError(
                f"schedule {expr!r}: step {step_s!r} in the {what} must be a positive number"
            )
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (num(s) for s in rng.split("-", 1))
            if a > b:
                raise MonitorConfigError(f"schedule {expr!r}: {what} range {rng!r} runs backwards")
        else:
            a = num(rng)
            b = hi if step else a
        out.update(range(a, b + 1, step or 1))
    return frozenset(out)


# -- the job ----------------------------------------------------------------------------------------------------


def export_otlp(endpoint: str, text: str, resource: dict[str, str], start_ns: int) -> str | None:
    """Send the metrics in TEXT (Prometheus text) over OTLP/HTTP to ENDPOINT (``{endpoint}/v1/metrics``), as the
    scoring server exports its own (telemetry.metrics_data); None when delivered, else why."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import MetricExportResult
    from opentelemetry.sdk.resources import Resource
    from prometheus_client.parser import text_string_to_metric_families

    from mlinfra_scoring.telemetry import metrics_data

    class Families:
        def families(self) -> list[Any]:
            return list(text_string_to_metric_families(text))

    families: Any = Families()  # what metrics_data reads of a Metrics registry
    data = metrics_data(families, Resource.create({"service.name": "mlinfra-monitor", **resource}), start_ns)
    exporter = OTLPMetricExporter(endpoint=f"{endpoint.rstrip('/')}/v1/metrics", timeout=5)
    try:
        ok = exporter.export(data) == MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    return None if ok else f"OTLP export to {urllib.parse.urlsplit(endpoint).netloc} failed"


class Job:
    """A configured monitor: runs, one at a time (a lock shared by every process in the container); after each run
    its metrics go to ``MLINFRA_MONITOR_OTLP_ENDPOINT`` over OTLP when that is set."""

    def __init__(self, cfg: MonitorConfig, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        self.cfg = cfg
        self.collected = open_store(cfg.collected, env.get("MLINFRA_MONITOR_COLLECTED_SAS"))
        self.reports = open_store(cfg.reports, env.get("MLINFRA_MONITOR_REPORTS_SAS"))
        self.webhooks = parse_webhooks(env.get("MLINFRA_MONITOR_WEBHOOKS", ""))
        self.otlp = env.get("MLINFRA_MONITOR_OTLP_ENDPOINT") or None
        if self.otlp and not self.otlp.startswith(("http://", "https://")):
            raise MonitorConfigError(f"MLINFRA_MONITOR_OTLP_ENDPOINT={self.otlp!r} must be an http(s) URL")
        self.started_ns = time.time_ns()
        self.last: dict[str, Any] | None = None
        self.counts: dict[tuple[str, str], int] = {}
        self.errors = 0

    def run(self, now: datetime | None = None) -> dict[str, Any]:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            baseline = load_baseline(self.reports, self.cfg.name, self.cfg.baseline)
            report = run_once(
                self.cfg,
                self.reports,
                lambda since: new_blobs(self.collected, self.cfg.prefix, since),
                baseline,
                self.webhooks,
                now,
            )
        self.last = report
        key = (self.cfg.name, report["status"])
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.otlp:
            try:
                problem = export_otlp(self.otlp, self.metrics(), {"monitor": self.cfg.name}, self.started_ns)
            except Exception as e:  # a collector that is down never fails the run: its report is stored
                problem = f"OTLP export failed: {type(e).__name__}"
            report["otlp"] = problem or "sent"
        return report

    def latest(self) -> dict[str, Any] | None:
        """The newest run's report: this process's, or a newer one another process stored (`mlinfra monitor run`
        runs in the same container, in a process of its own); this process's when storage cannot tell."""
        try:
            runs = read_index(self.reports, self.cfg.name)["runs"]
            key = runs[-1]["report"] if runs else None
            if key and not (self.last and self.last["report"].endswith(key)):
                got = self.reports.get(key)
                if got:
                    self.last = json.loads(got)
        except (MonitorConfigError, SinkError, ValueError):
            pass
        return self.last

    def metrics(self) -> str:
        last = self.latest()
        text = metrics_text([last] if last else [], self.counts)
        return text + (
            "# HELP mlinfra_monitor_run_errors_total Runs that could not finish (storage unreachable, ...)\n"
            f"# TYPE mlinfra_monitor_run_errors_total counter\nmlinfra_monitor_run_errors_total{{monitor="
            f'"{_label(self.cfg.name)}"}} {self.errors}\n'
        )


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['monitor']}: {report['status']} over {report['rows']:,d} rows ({report['report']})"]
    lines += [
        f"  {f['name']}: {'; '.join(f['flags'])}"
        for f in report["features"] + report["predictions"]
        if f["flags"]
    ]
    lines += [f"  {p}" for p in report["problems"]]
    if report["malformed_records"]:
        lines.append(f"  skipped {report['malformed_records']} malformed record(s)")
    a = report["alerts"]
    if a["sent"] or a["failed"] or a["suppressed"]:
        lines.append(
            f"  alerts: {a['sent']} sent, {a['failed']} failed, {a['suppressed']} held back by the rate limit"
        )
    lines += [f"  {e}" for e in a["errors"]]
    if report.get("otlp") not in (None, "sent"):
        lines.append(f"  {report['otlp']}")
    return "\n".join(lines)


def _serve_metrics(job: Job, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, ctype = job.metrics().encode(), "text/plain; version=0.0.4"
            elif self.path.split("?")[0] == "/healthz":
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_error(404, "try /metrics or /healthz")
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: object) -> None:
            pass

    server = ThreadingHTTPServer((os.environ.get("MLINFRA_MONITOR_BIND", "0.0.0.0"), port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def schedule_loop(job: Job, cron: Cron, stop: threading.Event, log: Callable[[str], None]) -> None:
    """Run JOB at each time CRON names until STOP; a run that fails (storage down, ...) is logged, counted and
    retried at the next time."""
    while not stop.is_set():
        due = cron.next_after(datetime.now(UTC))
        log(f"next run at {due.isoformat()}")
        while not stop.is_set() and datetime.now(UTC) < due:
            stop.wait(min(30.0, max(0.05, (due - datetime.now(UTC)).total_seconds())))
        if stop.is_set():
            return
        try:
            log(summary(job.run()))
        except (MonitorConfigError, SinkError, OSError) as e:
            job.errors += 1
            log(f"run failed: {e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mlinfra_scoring.monitor", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--once", action="store_true", help="one run now, then exit (1 when its checks failed)")
    p.add_argument(
        "--metrics-port", type=int, default=9108, help="the scheduler's /metrics and /healthz port"
    )
    p.add_argument("--json", action="store_true", help="--once: print the report as JSON")
    a = p.parse_args(argv)

    def log(line: str) -> None:
        print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {line}", file=sys.stderr, flush=True)

    try:
        cfg = MonitorConfig.from_json(os.environ.get("MLINFRA_MONITOR") or "")
        job = Job(cfg)
        if a.once:
            report = job.run()
            print(json.dumps(report, indent=1) if a.json else summary(report), flush=True)
            return 1 if report["status"] == "failed" else 0
    except (MonitorConfigError, SinkError) as e:
        log(f"error: {e}")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = _serve_metrics(job, a.metrics_port)
    try:
        log(f"monitor {cfg.name}: schedule {cfg.schedule!r} (UTC), /metrics on port {a.metrics_port}")
        schedule_loop(job, Cron.parse(cfg.schedule), stop, log)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
