"""ModelMonitor under mocks: what it registers on each target (the baseline's statistics resource, the scheduled
container or a CronJob and its Secret), the configuration the runtime gets, and bad arguments named with their fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlinfra
from mlinfra.errors import MonitorError
from mlinfra.monitoring.model_monitor import columns_problem
from mlinfra_scoring.monitor import MonitorConfig
from tests.unit.mocks import install, resolve


def _args(tmp_path: Path, dc: Any, **kw: Any) -> mlinfra.ModelMonitorArgs:
    if not (tmp_path / "base.npy").exists():
        np.save(tmp_path / "base.npy", np.random.default_rng(0).normal(size=(200, 4)))
    return mlinfra.ModelMonitorArgs(
        **{
            "data_collection": dc,
            "baseline": str(tmp_path / "base.npy"),
            "image": "127.0.0.1:5000/img@sha256:" + "a" * 64,
            "endpoint": "shop",
            "schedule": "*/10 * * * *",
            **kw,
        }
    )


def test_local_docker_registers_the_statistics_and_a_scheduled_container(tmp_path: Path) -> None:
    mocks = install({"-storage": {"container_uri": f"file://{tmp_path}/c", "sas": "", "expires": ""}})

    def build() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mon = mlinfra.ModelMonitor(
            "drift", _args(tmp_path, dc, thresholds={"psi": 0.3}, webhooks=["https://h.example/x"])
        )
        return {"index": mon.index_url, "reports": mon.reports}

    outs = resolve(build)
    assert outs["reports"] == f"file://{tmp_path}/c/monitoring"
    assert outs["index"] == f"file://{tmp_path}/c/monitoring/drift-unit/index.html"
    stats = mocks.inputs("drift-baseline")
    assert stats["baseline"] == str(tmp_path / "base.npy") and len(stats["sha256"]) == 64
    sched = mocks.inputs("drift-schedule")
    cfg = MonitorConfig.from_json(json.dumps(sched["config"]))
    assert cfg.prefix == "shop/" and cfg.thresholds.psi == 0.3 and cfg.schedule == "*/10 * * * *"
    assert cfg.baseline == stats["sha256"] and cfg.collected == f"file://{tmp_path}/c"
    secret_sig = "4dabf18193072939515e22adb298388d"  # how the engine marks a secret value
    assert (
        sched["secrets"][secret_sig]
        and sched["secrets"]["value"]["MLINFRA_MONITOR_WEBHOOKS"] == "https://h.example/x"
    )
    assert not any(t.startswith("kubernetes:") for t, _n, _i in mocks.created)


def test_kubernetes_registers_a_cron_job_whose_secrets_are_in_a_secret(tmp_path: Path) -> None:
    mocks = install({"-storage": {"container_uri": "http://127.0.0.1:10000/devstoreaccount1/collected", "sas": "",
                                  "expires": "2027-01-01T00:00:00Z"}})  # fmt: skip
    storage = "azblob://devstoreaccount1/collected?endpoint=http://127.0.0.1:10000/devstoreaccount1"

    def build() -> dict:
        dc = mlinfra.DataCollection(
            "capture", mlinfra.DataCollectionArgs(storage=storage, storage_credential="a2V5")
        )
        mon = mlinfra.ModelMonitor(
            "drift",
            _args(
                tmp_path, dc, target=mlinfra.Kubernetes(namespace="ml"), webhooks=["https://h.example/s3cr3t"]
            ),
        )
        return {"job": mon.cron_job}

    outs = resolve(build)
    assert outs["job"] == "ml/drift-unit-monitor"
    job = mocks.inputs("drift-monitor")
    spec = job["spec"]
    assert (
        spec["schedule"] == "*/10 * * * *"
        and spec["timeZone"] == "Etc/UTC"
        and spec["concurrencyPolicy"] == "Forbid"
    )
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python3", "-m", "mlinfra_scoring.monitor", "--once"]
    env = {e["name"]: e for e in c["env"]}
    cfg = json.loads(env["MLINFRA_MONITOR"]["value"])
    assert cfg["collected"].endswith(
        "endpoint=http%3A//%24%28MLINFRA_NODE_IP%29%3A10000/devstoreaccount1"
    ) or ("$(MLINFRA_NODE_IP)" in cfg["collected"]), cfg["collected"]
    assert env["MLINFRA_MONITOR_WEBHOOKS"]["valueFrom"]["secretKeyRef"]["name"] == "drift-unit-monitor"
    assert "s3cr3t" not in json.dumps(job)
    secret = mocks.inputs("drift-monitor-secrets")["stringData"]
    assert "4dabf18193072939515e22adb298388d" in secret, "the Secret's data is a Pulumi secret"
    data = secret["value"]
    assert "sp=rl&" in data["MLINFRA_MONITOR_COLLECTED_SAS"], "the records: read and list only"
    assert "sp=racwl&" in data["MLINFRA_MONITOR_REPORTS_SAS"] and data["MLINFRA_MONITOR_WEBHOOKS"].endswith(
        "s3cr3t"
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"schedule": "every hour"}, "must be five cron fields"),
        ({"thresholds": {"pis": 1}}, "unknown threshold(s) ['pis']"),
        ({"alert_interval_s": 1}, "alert_interval_s = 1 must be in 60..604800"),
        ({"endpoint": "a/b"}, "endpoint must be a CloudEndpoint or its endpoint name"),
        ({"feature_names": ["a", "b"]}, "2 feature name(s) for the baseline's 4 columns"),
        ({"baseline": "/nonexistent/base.npy"}, "does not exist"),
        ({"reports": "s3://bucket"}, "use file:///folder or azblob://"),
        ({"reports": "azblob://other/c"}, "must be in the DataCollection's storage"),
        ({"target": mlinfra.Kubernetes()}, "needs blob storage for reports"),
        ({"data_lag_s": -1}, "data_lag_s = -1 must be in 0..86400"),
        ({"monitor_name": "churn_v2"}, "monitor name 'churn_v2' must be 1-40 lowercase letters"),
    ],
)
def test_bad_input_names_the_value(tmp_path: Path, kw: dict, message: str) -> None:
    install()

    def build() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mlinfra.ModelMonitor("drift", _args(tmp_path, dc, **kw))
        return {}

    with pytest.raises(MonitorError) as e:
        resolve(build)
    assert message in str(e.value) and "ModelMonitor drift" in str(e.value), str(e.value)


def test_a_webhook_that_is_not_a_url_is_refused_without_showing_it(tmp_path: Path) -> None:
    install()

    def build() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mlinfra.ModelMonitor("drift", _args(tmp_path, dc, webhooks=["hooks.example/s3cr3t"]))
        return {}

    with pytest.raises(Exception) as e:
        resolve(build)
    assert "webhook #1 is not an http(s) URL" in str(e.value) and "s3cr3t" not in str(e.value)


def test_the_baseline_must_match_the_models_inputs() -> None:
    one = {"inputs": [{"name": "input", "shape": [-1, 64]}]}
    assert columns_problem(64, None, one) is None
    assert "the model's input 'input' takes 64 feature(s)" in (columns_problem(4, None, one) or "")
    named = {"inputs": [{"name": n, "shape": [-1, 1]} for n in ("age", "income", "tenure")]}
    assert columns_problem(3, ["age", "income", "tenure"], named) is None
    assert "missing tenure; not inputs of the model: plan" in (
        columns_problem(3, ["age", "income", "plan"], named) or ""
    )
    assert "the model has 3 inputs: age, income, tenure" in (columns_problem(2, None, named) or "")


def test_a_parquet_baseline_names_its_features(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"age": [31, 45, None], "income": [1.5, 2.5, 3.0], "tenure": [1, 2, 3]}),
        tmp_path / "b.parquet",
    )
    mocks = install()

    def build() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mlinfra.ModelMonitor("drift", _args(tmp_path, dc, baseline=str(tmp_path / "b.parquet")))
        return {}

    resolve(build)
    assert mocks.inputs("drift-baseline")["feature_names"] == ["age", "income", "tenure"]
    pq.write_table(pa.table({"age": [1, 2], "plan": ["a", "b"]}), tmp_path / "bad.parquet")
    install()

    def bad() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mlinfra.ModelMonitor("drift", _args(tmp_path, dc, baseline=str(tmp_path / "bad.parquet")))
        return {}

    with pytest.raises(MonitorError, match="column 'plan' is string, not numbers"):
        resolve(bad)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("window:yesterday/today", "give window:START/END in UTC"),
        ("window:2026-12-01T00:00:00Z", "give window:START/END in UTC"),
        ("window:2026-12-02T00:00:00Z/2026-12-01T00:00:00Z", "must end after it starts"),
        ("window:2026-12-01T00:00:00Z/2999-01-01T00:00:00Z", "be over"),
    ],
)
def test_a_bad_window_is_named(tmp_path: Path, window: str, message: str) -> None:
    install()

    def build() -> dict:
        dc = mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}/c"))
        mlinfra.ModelMonitor("drift", _args(tmp_path, dc, baseline=window))
        return {}

    with pytest.raises(MonitorError, match=message):
        resolve(build)


def test_a_window_of_collected_records_is_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider's create (what `up` runs) reads the window's records and stores their statistics under the
    window's name; an empty window is refused, naming it."""
    from mlinfra.monitoring.model_monitor import MonitorBaselineProvider
    from mlinfra_scoring.checks import Baseline

    rng = np.random.default_rng(3)
    part = tmp_path / "c" / "shop" / "blue" / "x.jsonl"
    part.parent.mkdir(parents=True)
    lines = [json.dumps({"time": f"2026-12-01T10:00:{i % 60:02d}.000Z", "inputs": {"x": [r.tolist()]},
                         "outputs": {"y": [[float(r[0])]]}}) for i, r in enumerate(rng.normal(size=(300, 4)))]  # fmt: skip
    part.write_text("\n".join(lines) + "\n")
    props = {
        "monitor": "drift-unit", "reports": f"file://{tmp_path}/c/monitoring", "credential": None,
        "baseline": "window:2026-12-01T10:00:00Z/2026-12-01T10:00:30Z", "baseline_predictions": None,
        "feature_names": None, "sha256": "ab" * 32, "observed": None,
        "window": {"collected": f"file://{tmp_path}/c", "prefix": "shop/", "start": "2026-12-01T10:00:00.000Z",
                   "end": "2026-12-01T10:00:30.000Z"},
    }  # fmt: skip
    monkeypatch.setattr(os, "chown", lambda *_a: None)  # the reports are handed to the container's user
    MonitorBaselineProvider().create(props)
    stored = tmp_path / "c" / "monitoring" / "drift-unit" / "baseline" / ("ab" * 32)
    base = Baseline.from_files({k: (stored / k).read_bytes() for k in ("baseline.json", "sample.npz")})
    assert [f.rows for f in base.features] == [150] * 4 and len(base.predictions) == 1
    with pytest.raises(MonitorError, match="no records collected under shop/ in that window"):
        MonitorBaselineProvider().create({**props, "window": {**props["window"], "start": "2026-12-02T00:00:00.000Z",
                                                               "end": "2026-12-02T01:00:00.000Z"}})  # fmt: skip
