"""`mlinfra monitor run` (mlinfra.monitoring.monitor): runs over collected records in a folder, reports and an index
kept in a folder store, one webhook event per failed run to a local receiver; no data, malformed records, a webhook
that is down and the rate limit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mlinfra.monitoring.monitor import MonitorRun, monitor_run
from tests.scoring_helpers import free_port

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SCALE, LOC = np.arange(1, 9), np.arange(8)


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token-123"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Receiver:
    r = Receiver()
    yield r
    r.server.shutdown()


def _collect(
    folder: Path, name: str, start: datetime, rows: np.ndarray, extra: list[str] | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "time": (start + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
                "inputs": {"input": [row.tolist()]},
                "outputs": {"y": [[float(row[:2].sum())]]},
            }
        )
        for i, row in enumerate(rows)
    ]
    (folder / f"{name}.jsonl").write_text("\n".join(lines + (extra or [])) + "\n")


def _run(tmp: Path, webhooks: list[str], **kw) -> MonitorRun:
    base = np.random.default_rng(1).normal(size=(5_000, 8)) * SCALE + LOC
    return MonitorRun(
        name="churn",
        collected=f"file://{tmp / 'collected'}",
        reports=f"file://{tmp / 'reports'}",
        baseline_rows=base,
        feature_names=[f"x{i}" for i in range(8)],
        baseline_predictions=base[:, :2].sum(axis=1, keepdims=True),
        webhooks=webhooks,
        **kw,
    )


def test_runs_reports_index_and_one_alert(tmp_path: Path, receiver: Receiver) -> None:
    rng = np.random.default_rng(2)
    run = _run(tmp_path, [receiver.url])
    _collect(tmp_path / "collected", "a", T0, rng.normal(size=(1_500, 8)) * SCALE + LOC)
    first = monitor_run(run, T0 + timedelta(minutes=5))
    assert first["status"] == "passed" and first["rows"] == 1_500 and receiver.events == []

    shifted = rng.normal(size=(1_500, 8)) * SCALE + LOC
    shifted[:, 3] += 2.0
    _collect(
        tmp_path / "collected",
        "b",
        T0 + timedelta(minutes=6),
        shifted,
        ["{not json", '{"time": "2026-12-01T08:07:00Z", "inputs": 3}'],
    )
    second = monitor_run(run, T0 + timedelta(minutes=10))
    assert second["status"] == "failed" and second["flagged"] == ["x3"], second["flagged"]
    assert second["rows"] == 1_500, "only the records since the first run"
    assert second["malformed_records"] == 2
    assert second["alerts"] == {"sent": 1, "failed": 0, "suppressed": 0, "errors": []}
    (event,) = receiver.events
    assert (
        event["monitor"] == "churn" and event["flagged"] == ["x3"] and "x3 failed its checks" in event["text"]
    )

    reports = tmp_path / "reports" / "churn"
    index = json.loads((reports / "index.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["passed", "failed"]
    page = (reports / "index.html").read_text()
    assert page.count("<tr><td>") == 2 and page.count("<polyline") == 9, "a PSI line per feature and output"
    assert '<text x="520" y="20" font-size="11" fill="#1f77b4">x3</text>' in page, (
        "the flagged feature is named"
    )
    stored = json.loads((tmp_path / "reports" / index["runs"][1]["report"]).read_text())
    assert (
        stored["flagged"] == ["x3"] and (reports / "runs" / "2026-12-01" / "081000Z" / "report.html").exists()
    )
    assert len(list((reports / "baseline").iterdir())) == 1, "the baseline's statistics are computed once"

    quiet = monitor_run(run, T0 + timedelta(minutes=15))
    assert quiet["status"] == "no_data" and quiet["rows"] == 0 and len(receiver.events) == 1


def test_a_webhook_that_is_down_and_the_rate_limit(tmp_path: Path, receiver: Receiver) -> None:
    rng = np.random.default_rng(3)
    down = f"http://127.0.0.1:{free_port()}/hooks/secret-token-456"
    run = _run(tmp_path, [down, receiver.url], alert_interval_s=600)
    bad = rng.normal(size=(1_000, 8)) * SCALE + LOC
    bad[:, 0] += 5.0
    _collect(tmp_path / "collected", "a", T0, bad)
    report = monitor_run(run, T0 + timedelta(minutes=5))
    assert report["alerts"]["sent"] == 1 and report["alerts"]["failed"] == 1
    (error,) = report["alerts"]["errors"]
    assert "after 3 attempt(s)" in error and "secret-token" not in error, error
    assert (tmp_path / "reports" / "churn" / "runs" / "2026-12-01" / "080500Z" / "report.json").exists()
    _collect(tmp_path / "collected", "b", T0 + timedelta(minutes=6), bad)
    again = monitor_run(run, T0 + timedelta(minutes=8))
    assert again["status"] == "failed" and again["alerts"]["suppressed"] == 2 and len(receiver.events) == 1


def test_the_cli_exits_1_on_failure_and_keeps_webhooks_off_the_output(
    tmp_path: Path, receiver: Receiver
) -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3_000, 8)) * SCALE + LOC
    np.save(tmp_path / "baseline.npy", base)
    bad = rng.normal(size=(800, 8)) * SCALE + LOC
    bad[:, 6] *= 3
    _collect(tmp_path / "collected", "a", T0, bad)
    cmd = [sys.executable, "-m", "mlinfra.cli", "monitor", "run", "churn", "--collected",
           f"file://{tmp_path / 'collected'}", "--baseline", str(tmp_path / "baseline.npy"), "--reports",
           f"file://{tmp_path / 'reports'}", "--threshold", "psi=0.25"]  # fmt: skip
    env = {"MLINFRA_MONITOR_WEBHOOKS": receiver.url, "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "churn: failed over 800 rows" in res.stdout and "f6" in res.stdout
    assert "secret-token" not in res.stdout + res.stderr and len(receiver.events) == 1
    bad_threshold = subprocess.run([*cmd[:-1], "pis=1"], capture_output=True, text=True, timeout=120, env=env)
    assert bad_threshold.returncode != 0 and "unknown threshold(s) ['pis']" in bad_threshold.stderr


def test_the_cli_names_what_is_missing(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlinfra.cli", "monitor", "run", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    partial = cli("churn", "--collected", f"file://{tmp_path}")
    assert partial.returncode != 0 and "got only --collected" in partial.stderr, partial.stderr
    missing = cli(f"nosuch-{tmp_path.name.lower()[-8:]}")
    assert (
        missing.returncode != 0 and "no ModelMonitor" in missing.stderr and "--namespace" in missing.stderr
    ), missing.stderr


def test_the_library_side_store_reads_at_most_the_limit(tmp_path: Path) -> None:
    """RuntimeStore (the registry's stores as the monitor's storage) refuses a file over collector.MAX_FILE_BYTES as
    the runtime's stores do (a sparse one here: no disk or memory spent), so the monitor counts it as malformed and
    names it, and reads the others; an absent file is None."""
    from mlinfra.monitoring.monitor import RuntimeStore
    from mlinfra.registry.store import open_store
    from mlinfra_scoring import monitor as runtime
    from mlinfra_scoring.collector import MAX_FILE_BYTES, Oversized

    store = RuntimeStore(open_store(f"file://{tmp_path / 'collected'}"))
    record = {"inputs": {"input": [[1.0, 2.0]]}, "outputs": {"output": [[0.5]]}}
    store.put("ep/blue/ok.jsonl", (json.dumps(record) + "\n").encode())
    big = tmp_path / "collected" / "ep" / "blue" / "planted.jsonl"
    with big.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    assert store.get("ep/blue/ok.jsonl") == (json.dumps(record) + "\n").encode()
    assert store.get("ep/blue/absent.jsonl") is None
    with pytest.raises(Oversized) as e:
        store.get("ep/blue/planted.jsonl")
    assert "planted.jsonl" in str(e.value) and "256 MiB" in str(e.value), e.value
    c = runtime.parse_collected(runtime.new_blobs(store, "", None))
    assert c.files == 2 and c.malformed == 1 and "planted.jsonl" in c.malformed_examples[0], c
