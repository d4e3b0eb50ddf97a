"""The runtime's monitoring job (mlinfra_scoring.monitor), what a ModelMonitor's container or CronJob runs: cron
schedules as Kubernetes reads them, a configured job over folder storage reading only new blobs, metrics in the
Prometheus text format, the scheduler loop and its /metrics endpoint, and configuration errors that name the fix."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlinfra_scoring import monitor as m
from mlinfra_scoring.checks import compute_baseline

T = datetime(2026, 12, 3, 10, 17, 42, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", T, datetime(2026, 12, 3, 10, 18, tzinfo=UTC)),
        ("*/15 * * * *", T, datetime(2026, 12, 3, 10, 30, tzinfo=UTC)),
        ("@hourly", T, datetime(2026, 12, 3, 11, 0, tzinfo=UTC)),
        ("@daily", T, datetime(2026, 12, 4, 0, 0, tzinfo=UTC)),
        ("5 4 * * sun", T, datetime(2026, 12, 6, 4, 5, tzinfo=UTC)),  # 2026-12-06 is a Sunday
        ("5 4 * * 7", T, datetime(2026, 12, 6, 4, 5, tzinfo=UTC)),
        ("0 9-17/4 * * mon-fri", T, datetime(2026, 12, 3, 13, 0, tzinfo=UTC)),
        ("0 0 1 jan *", T, datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
        ("0 0 29 2 *", T, datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
        (
            "0 12 1 * 1",
            T,
            datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
        ),  # day-of-month OR day-of-week, as cron does
        ("30 10,22 * * *", T, datetime(2026, 12, 3, 10, 30, tzinfo=UTC)),
    ],
)
def test_cron_next_times(expr: str, after: datetime, expected: datetime) -> None:
    assert m.Cron.parse(expr).next_after(after) == expected


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("* * * *", "must be five cron fields"),
        ("61 * * * *", "minute 61 is outside 0..59"),
        ("* 24 * * *", "hour 24 is outside 0..23"),
        ("* * * foo *", "month 'foo' is not a number"),
        ("*/0 * * * *", "step '0' in the minute must be a positive number"),
        ("5-1 * * * *", "runs backwards"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_cron_errors_name_the_field(expr: str, says: str) -> None:
    with pytest.raises(m.MonitorConfigError, match=says):
        m.Cron.parse(expr).next_after(T)


def _records(folder: Path, name: str, start: datetime, rows: np.ndarray, endpoint: str = "ep") -> Path:
    p = folder / endpoint / "blue" / f"{name}.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        "\n".join(
            json.dumps(
                {
                    "time": m.stamp(start + timedelta(milliseconds=i)),
                    "inputs": {"x": [r.tolist()]},
                    "outputs": {"y": [[float(r.sum())]]},
                }
            )
            for i, r in enumerate(rows)
        )
        + "\n"
    )
    return p


def _job(tmp: Path, rng: np.random.Generator, webhooks: str = "") -> m.Job:
    base = rng.normal(size=(4_000, 3))
    stats = compute_baseline(base, ["a", "b", "c"], base.sum(axis=1, keepdims=True))
    reports = tmp / "reports"
    for k, data in stats.to_files().items():
        (reports / "mon" / "baseline" / stats.sha256).mkdir(parents=True, exist_ok=True)
        (reports / "mon" / "baseline" / stats.sha256 / k).write_bytes(data)
    cfg = m.MonitorConfig.from_json(
        json.dumps(
            {
                "name": "mon",
                "collected": f"file://{tmp / 'collected'}",
                "reports": f"file://{reports}",
                "baseline": stats.sha256,
                "prefix": "ep/",
                "schedule": "@hourly",
                "lag_s": 1,
            }
        )
    )
    (tmp / "collected").mkdir(exist_ok=True)
    return m.Job(cfg, {"MLINFRA_MONITOR_WEBHOOKS": webhooks})


def test_a_job_reads_only_new_blobs_and_exports_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    job = _job(tmp_path, rng)
    now = datetime.now(UTC)
    old = _records(tmp_path / "collected", "old", now - timedelta(hours=2), rng.normal(size=(500, 3)))
    first = job.run(now - timedelta(hours=1))
    assert first["status"] == "passed" and first["rows"] == 500 and first["files_read"] == 1
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # written before the first run ended
    shifted = rng.normal(size=(600, 3))
    shifted[:, 1] += 3
    _records(tmp_path / "collected", "new", now - timedelta(minutes=30), shifted)
    _records(
        tmp_path / "collected", "new", now - timedelta(minutes=30), shifted, endpoint="ep2"
    )  # not under ep/
    second = job.run(datetime.now(UTC))
    assert second["files_read"] == 1, "the blob modified before the previous run is not read again"
    assert second["rows"] == 600 and second["flagged"] == ["b", "output0"], second["flagged"]
    families = {f.name: f for f in text_string_to_metric_families(job.metrics())}
    psi = {s.labels["feature"]: s.value for s in families["mlinfra_monitor_psi"].samples}
    assert psi["b"] > 0.2 > psi["a"] and set(psi) == {"a", "b", "c", "output0"}
    failed = {
        (s.labels["feature"], s.labels["check"]): s.value
        for s in families["mlinfra_monitor_check_failed"].samples
    }
    assert failed[("b", "psi")] == 1 and failed[("a", "psi")] == 0 and failed[("b", "null_rate")] == 0
    status = {s.labels["status"]: s.value for s in families["mlinfra_monitor_last_run_status"].samples}
    assert status == {"passed": 0, "failed": 1, "no_data": 0}
    runs = {s.labels["status"]: s.value for s in families["mlinfra_monitor_runs"].samples}
    assert runs == {"passed": 1, "failed": 1}
    stored = (tmp_path / "reports" / "mon" / "metrics.prom").read_text()
    assert 'mlinfra_monitor_psi{monitor="mon",feature="b",kind="feature"}' in stored


def test_the_scheduler_runs_on_time_and_serves_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    job = _job(tmp_path, rng)
    _records(tmp_path / "collected", "a", datetime.now(UTC) - timedelta(seconds=5), rng.normal(size=(300, 3)))

    class Soon(m.Cron):
        def next_after(self, t: datetime) -> datetime:
            return t + timedelta(seconds=0.3)

    stop, lines = threading.Event(), []
    loop = threading.Thread(target=m.schedule_loop, args=(job, Soon.parse("@hourly"), stop, lines.append))
    server = m._serve_metrics(job, 0)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while job.last is None and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        stop.set()
        loop.join(10)
        server.shutdown()
    assert job.last is not None and job.last["rows"] == 300, lines
    assert 'mlinfra_monitor_last_run_rows{monitor="mon"} 300.0' in body
    assert any(line.startswith("mon: passed over 300 rows") for line in lines), lines


def test_configuration_errors_name_the_value_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(m.MonitorConfigError, match="unknown key"):
        m.MonitorConfig.from_json(
            json.dumps({"name": "x", "collected": "", "reports": "", "baseline": "", "bogus": 1})
        )
    with pytest.raises(m.MonitorConfigError, match="MLINFRA_MONITOR: Expecting value"):
        m.MonitorConfig.from_json("")
    with pytest.raises(m.MonitorConfigError, match="webhook #2 is not an http"):
        m.parse_webhooks("https://hooks.example/a,ftp://secret-token@x")
    rng = np.random.default_rng(9)
    job = _job(tmp_path, rng)
    job.cfg.baseline = "0" * 64
    with pytest.raises(m.MonitorConfigError, match="`pulumi up` the ModelMonitor"):
        job.run()
    for bad in ("[1, 2]", '{"runs": [{"until": "x"}]}', '{"runs": [{"until": "yesterday", "rows": 1, "flagged": [], '
                '"psi": {}, "status": "passed", "report": "r"}]}'):  # fmt: skip
        (tmp_path / "reports" / "mon" / "index.json").write_text(bad)
        job2 = _job(tmp_path, rng)
        with pytest.raises(m.MonitorConfigError, match="not a monitor's index"):
            job2.run()
    with pytest.raises(m.MonitorConfigError, match="a SAS"):
        m.open_store("azblob://acct/container?endpoint=http://127.0.0.1:1", None)


def test_a_folder_store_refuses_names_outside_it(tmp_path: Path) -> None:
    store = m.open_store(f"file://{tmp_path / 'r'}", None)
    store.put("a/b.json", b"{}")
    assert store.list("a/") == [("a/b.json", pytest.approx(time.time(), abs=60))]
    with pytest.raises(m.SinkError, match="outside the folder"):
        store.put("../escape.json", b"{}")
    assert not (tmp_path / "escape.json").exists()


def test_malformed_records_are_skipped_and_counted_the_rest_kept() -> None:
    lines = [
        {"time": "2026-12-03T10:00:00.000Z", "inputs": {"x": [[1, 2], [3, 4]]}, "outputs": {"y": [[1], [0]]}},
        {
            "time": "2026-12-03T10:00:00.001Z",
            "inputs": {"x": [[5, "six"]]},
            "outputs": {"y": [[1]]},
        },  # not a number
        {
            "time": "2026-12-03T10:00:00.002Z",
            "inputs": {"x": [[7, 8, 9]]},
            "outputs": {"y": [[1]]},
        },  # 3 features
        {
            "time": "2026-12-03T10:00:00.003Z",
            "inputs": {"x": [[[9, 10]]]},
            "outputs": {"y": [[0]]},
        },  # [1, rows, f]
        {"time": "2026-12-03T10:00:00.004Z", "inputs": 3},
        {"time": "2026-12-03T10:00:00.005Z", "collection": "model_inputs", "data": [11, 12]},
        {"time": "2026-12-03T09:59:59.999Z", "inputs": {"x": [[0, 0]]}},  # before the window
    ]
    data = "\n".join(json.dumps(r) for r in lines).encode() + b"\n{not json\n\n"
    c = m.parse_collected([("a.jsonl", data)], since="2026-12-03T10:00:00.000Z")
    assert c.x.tolist() == [[1, 2], [3, 4], [9, 10], [11, 12]]
    assert c.records == 3 and c.malformed == 4, c.malformed_examples
    assert c.outputs == [], "not every record has outputs: no prediction drift"
    c2 = m.parse_collected(
        [("a.jsonl", data)], since="2026-12-03T10:00:00.000Z", until="2026-12-03T10:00:00.004Z"
    )
    assert c2.records == 2 and np.concatenate(c2.outputs).tolist() == [[1], [0], [0]]


def test_each_run_sends_its_metrics_over_otlp_and_a_down_collector_fails_nothing(tmp_path: Path) -> None:
    from tests.otlp_receiver import OtlpReceiver, attributes
    from tests.scoring_helpers import free_port

    rng = np.random.default_rng(10)
    receiver = OtlpReceiver()
    try:
        job = _job(tmp_path, rng)
        job.otlp = receiver.url
        _records(
            tmp_path / "collected", "a", datetime.now(UTC) - timedelta(seconds=5), rng.normal(size=(200, 3))
        )
        report = job.run()
        assert report["otlp"] == "sent"
        (req,) = receiver.metrics
        rm = req["resourceMetrics"][0]
        assert attributes(rm["resource"]["attributes"])["monitor"] == "mon"
        metrics = {mt["name"]: mt for mt in rm["scopeMetrics"][0]["metrics"]}
        psi = {
            attributes(p["attributes"])["feature"]: p["asDouble"]
            for p in metrics["mlinfra_monitor_psi"]["gauge"]["dataPoints"]
        }
        assert set(psi) == {"a", "b", "c", "output0"} and all(v < 0.2 for v in psi.values())
        assert "mlinfra_monitor_runs_total" in metrics and "mlinfra_monitor_check_failed" in metrics
    finally:
        receiver.close()
    job.otlp = f"http://127.0.0.1:{free_port()}"
    report = job.run()
    assert report["status"] == "no_data" and report["otlp"].startswith("OTLP export to 127.0.0.1:"), report[
        "otlp"
    ]
    assert (tmp_path / "reports" / "mon" / "index.json").exists()


def test_the_scheduler_serves_the_metrics_of_a_run_another_process_made(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    scheduler, now_run = (
        _job(tmp_path, rng),
        _job(tmp_path, rng),
    )  # `mlinfra monitor run` is a process of its own
    shifted = rng.normal(size=(400, 3))
    shifted[:, 2] += 3
    _records(tmp_path / "collected", "a", datetime.now(UTC) - timedelta(seconds=5), shifted)
    assert now_run.run()["flagged"] == ["c", "output0"]
    assert (
        'mlinfra_monitor_check_failed{monitor="mon",feature="c",kind="feature",check="psi"} 1.0'
        in scheduler.metrics()
    )


def test_a_record_file_too_large_to_read_is_skipped_and_named_the_rest_read(tmp_path: Path) -> None:
    """A record file over collector.MAX_FILE_BYTES (a sparse one here: no disk or memory spent) is not read whole —
    by the runtime's folder and blob stores and by `mlinfra monitor drift` — but counted as malformed and named."""
    import http.server

    from mlinfra.monitoring.drift import read_collected
    from mlinfra_scoring.collector import MAX_FILE_BYTES, BlobSink, Oversized

    folder = tmp_path / "c"
    _records(folder, "ok", T, np.ones((3, 2)))
    big = folder / "ep" / "blue" / "planted.jsonl"
    with big.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    c = m.parse_collected(m.new_blobs(m.open_store(f"file://{folder}", None), "", None))
    assert c.records == 3 and c.files == 2 and c.malformed == 1, c
    assert "planted.jsonl" in c.malformed_examples[0] and "256 MiB" in c.malformed_examples[0], (
        c.malformed_examples
    )
    c = read_collected(f"file://{folder}")
    assert c.records == 3 and c.malformed == 1, c.malformed_examples

    class Huge(http.server.BaseHTTPRequestHandler):  # a blob endpoint that says its blob is 300 MiB
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(300 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 1024)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sink = BlobSink("acct", "records", "", f"http://127.0.0.1:{srv.server_port}/acct", "sv=1&sig=secret")
        with pytest.raises(Oversized) as e:
            sink.get("ep/blue/planted.jsonl")
        assert "planted.jsonl" in str(e.value) and "sig=" not in str(e.value), e.value
    finally:
        srv.shutdown()
