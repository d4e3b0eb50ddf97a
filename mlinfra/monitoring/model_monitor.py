"""ModelMonitor: step 4 of the lifecycle, on a schedule — data-quality, feature-drift and prediction-drift checks of
what an endpoint's DataCollection captured, against a baseline, with each run's report and an index across runs kept
in storage, metrics per feature and per check, and alerts to webhooks (docs/data-collection.md).

A monitor's NAME is ``monitor_name``, by default ``<resource name>-<stack>`` (as endpoints' names are). At `pulumi up`
the baseline's statistics are computed once and stored under ``<name>/baseline/<sha256>/`` in the
reports storage (:class:`MonitorBaselineProvider`), so a run reads only the new records. The runs themselves are
the scoring image's runtime (:mod:`mlinfra_scoring.monitor`):

- **Local Docker**: one scheduled container the provider manages (:class:`ScheduledMonitorProvider`; no host cron),
  ``mlinfra-monitor-<name>``, running the runtime's scheduler with ``/metrics`` on ``127.0.0.1:<port>``. Like the
  scoring replicas it stays on Docker's bridge: storage on this machine's loopback (Azurite) is reached at the
  bridge's gateway, as is a webhook URL on loopback (which then needs a forward like Azurite's; webhooks elsewhere
  are reached as written). It reads the collected data read-only. `pulumi refresh` sees it stopped or removed; `up`
  starts it again.
- **Kubernetes**: a CronJob (``timeZone: Etc/UTC``, ``concurrencyPolicy: Forbid``) whose pod runs one run and
  exits 1 when the checks failed, so the Job is marked failed; its secrets in a Secret.

`mlinfra monitor run NAME` runs a Local Docker monitor now (in its container); on Kubernetes
`mlinfra monitor run NAME --namespace NS` starts a Job from the CronJob. `pulumi destroy` removes the schedule and
keeps every report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pulumi
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.endpoints.cloud_endpoint import Kubernetes, LocalDocker
from mlinfra.errors import MonitorError
from mlinfra.monitoring.data_collection import DataCollection
from mlinfra.monitoring.drift import load_baseline
from mlinfra.monitoring.monitor import RuntimeStore, baseline_sha256, store_baseline
from mlinfra.monitoring.provider import provision
from mlinfra.observed import observed_drift, say_drift
from mlinfra.registry.store import open_store
from mlinfra.rows import column_names
from mlinfra_scoring.checks import Thresholds
from mlinfra_scoring.monitor import Cron, MonitorConfigError, new_blobs, parse_collected, parse_webhooks

METRICS_PORT = 9108
READ_PERMISSIONS = "rl"
"""What the monitor may do with the collected records: read and list, never write or delete."""
REPORTS_PERMISSIONS = "racwl"
"""What it may do with its reports: read, write and list, never delete."""


@dataclass
class ModelMonitorArgs:
    data_collection: DataCollection
    """The DataCollection whose records are checked (its storage; the monitor gets its own read + list SAS)."""
    baseline: str
    """Training rows: .npy, .csv (a header names the features), .parquet (numeric columns, named) or .jsonl (a row
    per line). Or a reference window of the collected inputs themselves: ``window:START/END`` (ISO UTC times, e.g.
    ``window:2026-12-01T00:00:00Z/2026-12-02T00:00:00Z``), read at `up`."""
    image: Any
    """The image whose runtime runs the checks: the endpoint's ScoringImage (or any image ref with mlinfra_scoring)."""
    endpoint: Any = None
    """The CloudEndpoint (or its endpoint name) whose records are checked; default: every record in the storage."""
    schedule: str = "0 * * * *"
    """Cron, in UTC (five fields, or @hourly, @daily, ...). Default: hourly."""
    feature_names: list[str] | None = None
    """Names of the baseline's columns; default: a CSV header or Parquet column names, else the model's input names
    (one input per feature), else f0, f1, ..."""
    baseline_predictions: str | None = None
    """The model's outputs on the baseline rows (same formats), for prediction drift."""
    model: Any = None
    """The RegisteredModel the endpoint serves: the baseline's columns must match its inputs."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """psi (0.2), ks_pvalue (0.01), ks_statistic (0.1), null_rate_increase (0.05), out_of_range (0.05)."""
    webhooks: pulumi.Input[list[str]] | None = None
    """URLs a failed run posts a JSON event to (generic, Slack- and Teams-compatible); secrets. Default: the stack's
    secret `mlinfra:monitorWebhooks` (comma-separated), else none."""
    alert_interval_s: float = 300.0
    """At most one alert this often."""
    data_lag_s: float = 60.0
    """A run checks the records collected up to this long before it starts (newer ones may still be on their way;
    the next run checks them)."""
    reports: str | None = None
    """Where reports go: a folder (file:///...) when the data is collected to one, else a container of the
    DataCollection's storage account, azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL (created if absent). Default:
    the DataCollection's storage under monitoring/."""
    target: LocalDocker | Kubernetes = field(default_factory=LocalDocker)
    """Where the schedule runs: LocalDocker() (a scheduled container) or Kubernetes(...) (a CronJob)."""
    cpu: float = 1.0
    memory_mb: int = 2048
    """The run holds the window's rows as float64: an hour at 1,000 single-row requests/s of 16 features is ≈ 0.5 GB."""
    monitor_name: str | None = None
    """The monitor's name on the target and in the reports (``<reports>/<monitor_name>/``, container
    ``mlinfra-monitor-<monitor_name>``, CronJob ``<monitor_name>-monitor``). Default: ``<name>-<stack>``."""


def parse_window(where: str, baseline: str) -> tuple[str, str] | None:
    """``window:START/END`` as (START, END) in the records' time format; None for a file."""
    if not str(baseline).startswith("window:"):
        return None
    from datetime import UTC, datetime

    from mlinfra_scoring.monitor import stamp

    start_s, sep, end_s = baseline[len("window:") :].partition("/")
    try:
        start, end = (datetime.fromisoformat(v.strip().replace("Z", "+00:00")) for v in (start_s, end_s))
        if not sep or start.tzinfo is None or end.tzinfo is None:
            raise ValueError
    except ValueError:
        raise MonitorError(
            f"{where}: baseline {baseline!r}: give window:START/END in UTC, e.g. "
            "window:2026-12-01T00:00:00Z/2026-12-02T00:00:00Z"
        ) from None
    if not start < end <= datetime.now(UTC):
        raise MonitorError(
            f"{where}: baseline {baseline!r}: the window must end after it starts and be over (its records must not "
            "change any more)"
        )
    return stamp(start), stamp(end)


def sub_uri(uri: str, sub: str) -> str:
    """URI with SUB appended to its path (a folder, or a container's prefix), query kept."""
    u = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(u._replace(path=f"{u.path.rstrip('/')}/{sub}"))


def columns_problem(width: int, names: list[str] | None, signature: dict[str, Any] | None) -> str | None:
    """Why a baseline of WIDTH columns named NAMES does not fit a model's SIGNATURE (None when it does): its inputs
    are either one tensor of shape [batch, n] or one input per feature."""
    inputs = (signature or {}).get("inputs") or []
    if not inputs:
        return None
    if len(inputs) == 1:
        dims = [d for d in inputs[0].get("shape", [])[1:]]
        if any(d is None or d < 0 for d in dims) or not dims:
            return None
        n = int(np.prod(dims))
        if n != width:
            return (
                f"the baseline has {width} column(s), the model's input {inputs[0]['name']!r} takes {n} feature(s) "
                f"(shape {inputs[0]['shape']}): give the rows the model scores"
            )
        return None
    model_names = [i["name"] for i in inputs]
    if width != len(model_names):
        return f"the baseline has {width} column(s), the model has {len(model_names)} inputs: {', '.join(model_names)}"
    if names and names != model_names:
        missing = [n for n in model_names if n not in names]
        extra = [n for n in names if n not in model_names]
        return (
            "the baseline's columns do not match the model's inputs"
            + (f": missing {', '.join(missing)}" if missing else "")
            + (f"; not inputs of the model: {', '.join(extra)}" if extra else "")
            + ("; same names, another order" if not missing and not extra else "")
        )
    return None


class ModelMonitor(pulumi.ComponentResource):
    """Scheduled data-quality and drift checks of an endpoint's collected data. Outputs: ``reports`` (where the
    reports are), ``index_url`` (the index page across runs), ``baseline_sha256``, ``schedule``, ``metrics_url``
    (Local Docker: the scheduler's Prometheus endpoint), ``cron_job`` (Kubernetes: namespace/name)."""

    def __init__(self, name: str, args: ModelMonitorArgs, opts: pulumi.ResourceOptions | None = None):
        where = f"ModelMonitor {name}"
        dc = args.data_collection
        if not isinstance(dc, DataCollection):
            raise MonitorError(
                f"{where}: data_collection must be the DataCollection attached to the endpoint"
            )
        try:
            Cron.parse(args.schedule)
            thresholds = Thresholds.from_dict(dict(args.thresholds))
        except (MonitorConfigError, ValueError) as e:
            raise MonitorError(f"{where}: {e}") from None
        if not 60 <= float(args.alert_interval_s) <= 7 * 86400:
            raise MonitorError(
                f"{where}: alert_interval_s = {args.alert_interval_s} must be in 60..604800 seconds"
            )
        if not 0 <= float(args.data_lag_s) <= 86400:
            raise MonitorError(f"{where}: data_lag_s = {args.data_lag_s} must be in 0..86400 seconds")
        if not isinstance(args.target, LocalDocker | Kubernetes):
            raise MonitorError(f"{where}: target must be mlinfra.LocalDocker() or mlinfra.Kubernetes(...)")
        if not 0.05 <= float(args.cpu) <= 16 or not 128 <= int(args.memory_mb) <= 65536:
            raise MonitorError(f"{where}: cpu = {args.cpu} must be in 0.05..16 and memory_mb = {args.memory_mb} in "
                               "128..65536")  # fmt: skip
        endpoint = getattr(args.endpoint, "endpoint_name", args.endpoint)
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint or "/" in endpoint):
            raise MonitorError(
                f"{where}: endpoint must be a CloudEndpoint or its endpoint name, got {endpoint!r}"
            )
        monitor = (args.monitor_name or f"{name}-{pulumi.get_stack()}").lower()
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", monitor):
            raise MonitorError(
                f"{where}: monitor name {monitor!r} must be 1-40 lowercase letters, digits and hyphens (it names a "
                "container, a CronJob and a folder): set monitor_name="
            )
        window = parse_window(where, args.baseline)
        rows = self._baseline(where, args.baseline) if window is None else None
        names = args.feature_names or (column_names(args.baseline) if window is None else None)
        if rows is not None and names is not None and len(names) != rows.shape[1]:
            raise MonitorError(
                f"{where}: {len(names)} feature name(s) for the baseline's {rows.shape[1]} columns"
            )
        if window is not None and args.baseline_predictions:
            raise MonitorError(
                f"{where}: baseline_predictions goes with baseline rows from a file; a window's records carry the "
                "model's outputs (prediction drift is checked against them)"
            )
        preds = None
        if rows is not None and args.baseline_predictions:
            preds = self._baseline(where, args.baseline_predictions)
            if preds.shape[0] != rows.shape[0]:
                raise MonitorError(
                    f"{where}: baseline_predictions has {preds.shape[0]} rows, the baseline {rows.shape[0]}: give "
                    "the model's outputs on the same rows"
                )
        storage = dc.storage_uri
        reports = args.reports or sub_uri(storage, "monitoring")
        if not reports.startswith(("file:///", "azblob://")):
            raise MonitorError(
                f"{where}: reports {reports!r}: use file:///folder or azblob://ACCOUNT/CONTAINER"
            )
        if reports.startswith("file:") and isinstance(args.target, Kubernetes):
            raise MonitorError(
                f"{where}: a Kubernetes monitor needs blob storage for reports, not {reports!r}"
            )
        super().__init__("mlinfra:monitoring:ModelMonitor", name, {"schedule": args.schedule}, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = pulumi.Config("mlinfra")
        webhooks: Any = args.webhooks
        if webhooks is None:
            found = cfg.get_secret("monitorWebhooks")
            webhooks = (
                found.apply(lambda t: [u for u in (t or "").replace(",", " ").split() if u]) if found else []
            )
        webhooks = pulumi.Output.secret(pulumi.Output.from_input(webhooks).apply(self._check_webhooks(where)))
        prefix = f"{endpoint}/" if endpoint else ""
        if rows is not None:
            if args.model is not None:
                names = self._check_model(where, args, rows.shape[1], names)
            sha = baseline_sha256(rows, preds)
        else:  # a window of collected records: named by where and when (its records no longer change)
            assert window is not None
            sha = hashlib.sha256(f"window|{storage}|{prefix}|{window[0]}|{window[1]}".encode()).hexdigest()
        if _account(reports) != _account(storage):
            raise MonitorError(
                f"{where}: reports {reports!r} must be in the DataCollection's storage ({_account(storage)}): the "
                "monitor's credentials are issued from its key"
            )
        reports_key: Any = dc._credential
        self.baseline_stats: Any = MonitorBaseline(
            f"{name}-baseline",
            {
                "monitor": monitor,
                "reports": reports,
                "credential": pulumi.Output.secret(reports_key) if reports_key is not None else None,
                "baseline": str(Path(args.baseline).resolve()) if window is None else args.baseline,
                "window": None
                if window is None
                else {"collected": storage, "prefix": prefix, "start": window[0], "end": window[1]},
                "baseline_predictions": str(Path(args.baseline_predictions).resolve())
                if args.baseline_predictions
                else None,
                "feature_names": names,
                "sha256": sha,
                "observed": None,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["credential"]),
        )
        config = {
            "name": monitor,
            "collected": storage,
            "reports": reports,
            "baseline": sha,
            "prefix": prefix,
            "thresholds": {k: getattr(thresholds, k) for k in Thresholds.__dataclass_fields__},
            "alert_interval_s": float(args.alert_interval_s),
            "schedule": args.schedule,
            "lag_s": float(args.data_lag_s),
        }
        reports_sas = dc.sas_for(REPORTS_PERMISSIONS, reports)
        secrets: Any = pulumi.Output.secret(
            pulumi.Output.all(dc.sas_for(READ_PERMISSIONS), reports_sas, webhooks).apply(
                lambda a: {
                    "MLINFRA_MONITOR_COLLECTED_SAS": a[0] or "",
                    "MLINFRA_MONITOR_REPORTS_SAS": a[1] or "",
                    "MLINFRA_MONITOR_WEBHOOKS": ",".join(a[2] or []),
                }
            )
        )
        image = getattr(args.image, "image_ref", args.image)
        self.reports = pulumi.Output.from_input(reports)
        self.monitor_name = monitor
        self.index_url = pulumi.Output.from_input(_location(reports, f"{monitor}/index.html"))
        self.baseline_sha256 = self.baseline_stats.sha256
        self.schedule = pulumi.Output.from_input(args.schedule)
        if isinstance(args.target, LocalDocker):
            sched: Any = ScheduledMonitor(
                f"{name}-schedule",
                {
                    "monitor": monitor,
                    "image": image,
                    "config": config,
                    "secrets": secrets,
                    "cpu": float(args.cpu),
                    "memory_mb": int(args.memory_mb),
                    "otlp_endpoint": dc.otlp[0],
                    "port": args.target.port,
                    "baseline_id": self.baseline_stats.sha256,
                    "observed": None,
                },
                pulumi.ResourceOptions(
                    parent=self, additional_secret_outputs=["secrets"], depends_on=[self.baseline_stats]
                ),
            )
            self.metrics_url = sched.metrics_url
            self.cron_job: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        else:
            self.metrics_url = pulumi.Output.from_input(None)
            self.cron_job = self._cron_job(name, monitor, args, image, config, secrets, child)
        self.register_outputs(
            {
                "reports": self.reports,
                "index_url": self.index_url,
                "baseline_sha256": self.baseline_sha256,
                "schedule": self.schedule,
                "metrics_url": self.metrics_url,
                "cron_job": self.cron_job,
            }
        )

    @staticmethod
    def _baseline(where: str, path: str) -> np.ndarray:
        try:
            return load_baseline(path)
        except MonitorError as e:
            raise MonitorError(f"{where}: baseline: {e}") from None

    @staticmethod
    def _check_webhooks(where: str) -> Any:
        def check(urls: list[str] | None) -> list[str]:
            try:
                return parse_webhooks(",".join(urls or []))
            except MonitorConfigError as e:
                raise MonitorError(f"{where}: {e}") from None

        return check

    @staticmethod
    def _check_model(
        where: str, args: ModelMonitorArgs, width: int, names: list[str] | None
    ) -> list[str] | None:
        sig = getattr(args.model, "signature", None)
        if sig is None:
            return names
        known = sig if isinstance(sig, dict) else None
        if known is not None:  # a model registered from a file here: checked at preview
            problem = columns_problem(width, names, known)
            if problem:
                raise MonitorError(f"{where}: {problem}")
            inputs = known.get("inputs") or []
            return names or ([i["name"] for i in inputs] if len(inputs) > 1 else None)

        def check(s: dict[str, Any] | None) -> None:
            problem = columns_problem(width, names, s)
            if problem:
                raise MonitorError(f"{where}: {problem}")

        pulumi.Output.from_input(sig).apply(check)
        return names

    def _cron_job(
        self, name: str, monitor: str, args: ModelMonitorArgs, image: Any, config: dict[str, Any], secrets: Any,
        child: pulumi.ResourceOptions,
    ) -> pulumi.Output[str | None]:  # fmt: skip
        import pulumi_kubernetes as k8s

        from mlinfra.endpoints.cloud_endpoint import check_kubeconfig
        from mlinfra.endpoints.kubernetes import NODE_IP_VAR
        from mlinfra.endpoints.local import container_sink, container_url

        t = args.target
        assert isinstance(t, Kubernetes)
        if t.render_yaml_to:
            raise MonitorError(
                f"ModelMonitor {name}: Kubernetes(render_yaml_to=) is not supported for monitors (their Secret would be "
                "plain YAML): apply it to a cluster"
            )
        endpoint = getattr(args.endpoint, "endpoint_name", args.endpoint)
        ns = t.namespace or endpoint or "default"  # a CloudEndpoint's namespace defaults to its name too
        if t.provider is not None:
            provider = t.provider
        else:
            if t.kubeconfig:
                check_kubeconfig(t.kubeconfig, t.context, f"ModelMonitor {name}")
            provider = k8s.Provider(f"{name}-k8s", kubeconfig=t.kubeconfig, context=t.context, opts=child)
        after = [self.baseline_stats] + (
            [args.endpoint] if isinstance(args.endpoint, pulumi.Resource) else []
        )
        opts = pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=after
        )  # the namespace exists
        labels = {"app.kubernetes.io/managed-by": "mlinfra", "mlinfra.io/monitor": monitor}
        node = f"$({NODE_IP_VAR})"
        pod_config = {**config, "collected": container_sink(config["collected"], node),
                      "reports": container_sink(config["reports"], node)}  # fmt: skip
        secret = k8s.core.v1.Secret(
            f"{name}-monitor-secrets",
            metadata={"name": f"{monitor}-monitor", "namespace": ns, "labels": labels},
            string_data=secrets,
            opts=opts,
        )
        env = (
            [
                {"name": NODE_IP_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "MLINFRA_MONITOR", "value": json.dumps(pod_config, sort_keys=True)},
                {"name": "TMPDIR", "value": "/tmp"},
            ]
            + (
                [{"name": "MLINFRA_MONITOR_OTLP_ENDPOINT", "value": container_url(otlp, node)}]
                if (otlp := args.data_collection.otlp[0])
                else []
            )
            + [
                {"name": k, "valueFrom": {"secretKeyRef": {"name": f"{monitor}-monitor", "key": k}}}
                for k in (
                    "MLINFRA_MONITOR_COLLECTED_SAS",
                    "MLINFRA_MONITOR_REPORTS_SAS",
                    "MLINFRA_MONITOR_WEBHOOKS",
                )
            ]
        )
        job = k8s.batch.v1.CronJob(
            f"{name}-monitor",
            metadata={"name": f"{monitor}-monitor", "namespace": ns, "labels": labels},
            spec={
                "schedule": Cron.parse(args.schedule).expr,
                "timeZone": "Etc/UTC",
                "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": 0,  # a failed check is a result, not a crash to retry
                        "activeDeadlineSeconds": 3600,
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "restartPolicy": "Never",
                                **({"tolerations": t.tolerations} if t.tolerations else {}),
                                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                                "containers": [
                                    {
                                        "name": "monitor",
                                        "image": image,
                                        "command": ["python3", "-m", "mlinfra_scoring.monitor", "--once"],
                                        "env": env,
                                        "resources": {
                                            "requests": {
                                                "cpu": f"{args.cpu:g}",
                                                "memory": f"{args.memory_mb}Mi",
                                            },
                                            "limits": {
                                                "cpu": f"{args.cpu:g}",
                                                "memory": f"{args.memory_mb}Mi",
                                            },
                                        },
                                        "securityContext": {
                                            "readOnlyRootFilesystem": True,
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]},
                                        },
                                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                                    }
                                ],
                                "volumes": [{"name": "tmp", "emptyDir": {}}],
                            },
                        },
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[secret, self.baseline_stats])
            ),
        )
        return pulumi.Output.all(job.metadata.namespace, job.metadata.name).apply(lambda a: f"{a[0]}/{a[1]}")


def _account(uri: str) -> str:
    u = urllib.parse.urlsplit(uri)
    return f"{u.scheme}://{u.netloc}" if u.scheme == "azblob" else "file"


def _location(uri: str, key: str) -> str:
    from mlinfra_scoring.monitor import location

    return location(uri, key)


# -- the baseline's statistics, at up ----------------------------------------------------------------------------


def _reports_store(props: dict[str, Any]) -> RuntimeStore:
    return RuntimeStore(open_store(props["reports"], props.get("credential") or None))


def window_rows(props: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The inputs (and outputs, when every record has them) collected in the baseline's window."""
    w = props["window"]
    store = RuntimeStore(open_store(w["collected"], props.get("credential") or None))
    got = parse_collected(new_blobs(store, w["prefix"], None), w["start"], w["end"])
    if not got.records:
        raise MonitorError(
            f"baseline {props['baseline']}: no records collected under {w['prefix'] or '/'} in that window "
            f"({got.files} blob(s) read, {got.malformed} malformed record(s)): choose a window with traffic"
        )
    return got.x, (np.concatenate(got.outputs) if got.outputs else None)


def _store_stats(props: dict[str, Any]) -> dict[str, Any]:
    provision(props["reports"], props.get("credential") or None, 1)  # the reports' container or folder
    reports = _reports_store(props)
    if props.get("window"):
        rows, preds = window_rows(props)
        sha: str | None = props["sha256"]
    else:
        rows = load_baseline(props["baseline"])
        preds = load_baseline(props["baseline_predictions"]) if props.get("baseline_predictions") else None
        if baseline_sha256(rows, preds) != props["sha256"]:
            raise MonitorError(
                f"baseline {props['baseline']} changed since the preview (its rows' sha256 is no longer "
                f"{props['sha256'][:12]}…): run `pulumi up` again"
            )
        sha = None
    store_baseline(reports, props["monitor"], rows, props.get("feature_names"), preds, sha)
    if props["reports"].startswith("file://"):  # the scheduled container (uid 10001) writes the reports
        _own(Path(urllib.parse.urlsplit(props["reports"]).path))
    return {**props, "observed": {"statistics": "present"}}


def _own(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, 10001, 10001)


class MonitorBaselineProvider(ResourceProvider):
    """The baseline's statistics under ``<monitor>/baseline/<sha256>/`` in the reports: written at create/update
    (once per content), read back by `pulumi refresh` (missing → `up` writes them again), kept at delete (reports
    of past runs name it)."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult({**news, "observed": {"statistics": "present"}}, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("monitor", "reports", "sha256", "feature_names")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed) or observed_drift(olds, news), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['monitor']}/{props['sha256']}", outs=_store_stats(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=_store_stats(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        prefix = f"{props['monitor']}/baseline/{props['sha256']}/"
        try:
            present = all(
                _reports_store(props).get(prefix + k) is not None for k in ("baseline.json", "sample.npz")
            )
        except Exception as e:  # storage unreachable: say so, keep the state
            say_drift(
                f"monitor {props['monitor']} baseline", f"could not read {props['reports']} ({e})", "check it"
            )
            return ReadResult(id_, props)
        if not present:
            say_drift(
                f"monitor {props['monitor']} baseline",
                "statistics: missing",
                "`pulumi up` computes them again",
            )
        return ReadResult(id_, {**props, "observed": {"statistics": "present" if present else "missing"}})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The statistics stay with the reports."""


class MonitorBaseline(Resource):
    sha256: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(MonitorBaselineProvider(), name, props, opts)


# -- the scheduled container (Local Docker) ----------------------------------------------------------------------


def container_name(monitor: str) -> str:
    return f"mlinfra-monitor-{monitor}"


def _docker(*args: str, **kw: Any) -> Any:
    from mlinfra.endpoints.local import docker

    return docker(*args, **kw)


def container_state(monitor: str) -> str:
    """Whether the monitor's scheduled container is running, stopped, or missing."""
    r = _docker("inspect", "-f", "{{.State.Running}}", container_name(monitor), check=False)
    if r.returncode != 0:
        return "missing"
    return "running" if r.stdout.strip() == "true" else "stopped"


def _start(props: dict[str, Any], port: int) -> dict[str, Any]:
    from mlinfra.endpoints.local import container_sink, container_url, port_taken

    name = container_name(props["monitor"])
    _docker("rm", "-f", name, check=False)
    cfg = dict(props["config"])
    mounts: list[str] = []
    for key in ("collected", "reports"):
        u = urllib.parse.urlsplit(cfg[key])
        if u.scheme == "file":
            Path(u.path).mkdir(parents=True, exist_ok=True)
            mounts += ["-v", f"{u.path}:{u.path}" + (":ro" if key == "collected" else "")]
        cfg[key] = container_sink(cfg[key])  # storage on this machine's loopback: at the bridge's gateway
    if port_taken(port):
        raise MonitorError(
            f"monitor {props['monitor']}: port {port} on 127.0.0.1 is taken: choose another LocalDocker(port=...) "
            "or leave it unset"
        )
    secrets = dict(props.get("secrets") or {})
    hooks = secrets.get("MLINFRA_MONITOR_WEBHOOKS", "")
    secrets["MLINFRA_MONITOR_WEBHOOKS"] = ",".join(container_url(u) for u in hooks.split(",") if u)
    args = [
        "run", "-d", "--name", name, "--restart", "unless-stopped",
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--cpus", f"{float(props['cpu']):g}", "--memory", f"{int(props['memory_mb'])}m",
        "--log-opt", "max-size=10m", "--log-opt", "max-file=2", "-p", f"127.0.0.1:{port}:{METRICS_PORT}",
        "--label", f"mlinfra.io/monitor={props['monitor']}", "--label", f"mlinfra.io/metrics-port={port}",
        "-e", f"MLINFRA_MONITOR={json.dumps(cfg, sort_keys=True)}", "-e", "TMPDIR=/tmp", *mounts,
    ]  # fmt: skip
    if props.get(
        "otlp_endpoint"
    ):  # a collector on this machine's loopback: at the gateway (4318 is forwarded)
        args += ["-e", f"MLINFRA_MONITOR_OTLP_ENDPOINT={container_url(props['otlp_endpoint'])}"]
    for k in sorted(secrets):
        args += ["-e", k]  # the value comes from the CLI's environment: never on a command line
    argv = [*args, "--entrypoint", "python3", props["image"], "-m", "mlinfra_scoring.monitor",
            "--metrics-port", str(METRICS_PORT)]  # fmt: skip
    r = _docker(*argv, env=secrets, check=False)
    if r.returncode != 0 and "address already in use" in r.stderr:  # a port held for a moment: once more
        import time

        time.sleep(1.0)
        _docker("rm", "-f", name, check=False)
        r = _docker(*argv, env=secrets, check=False)
    if r.returncode != 0:
        raise MonitorError(
            f"monitor {props['monitor']}: container {name} could not start: {r.stderr.strip()[-400:]}"
        )
    return {**props, "port": port, "metrics_url": f"http://127.0.0.1:{port}/metrics",
            "observed": {"container": "running"}}  # fmt: skip


def _wait_serving(props: dict[str, Any], timeout_s: float = 60) -> None:
    import time

    from mlinfra.endpoints.local import container_logs, http_get

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_get(f"http://127.0.0.1:{props['port']}/healthz")[0] == 200:
            return
        if container_state(props["monitor"]) != "running":
            break
        time.sleep(0.3)
    raise MonitorError(
        f"monitor {props['monitor']}: its container did not start serving /healthz on 127.0.0.1:{props['port']}: "
        f"{container_logs(container_name(props['monitor']))[-600:]}"
    )


class ScheduledMonitorProvider(ResourceProvider):
    """The scheduler container ``mlinfra-monitor-<name>``: started at create, restarted with a new configuration at
    update (same port), seen stopped or missing by `pulumi refresh` (`up` starts it again), removed at delete."""

    KEYS = ("image", "config", "secrets", "cpu", "memory_mb", "otlp_endpoint", "port", "baseline_id")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult({**news, "observed": {"container": "running"}}, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.KEYS if olds.get(k) != news.get(k)]
        if "port" in changed and news.get("port") is None:
            changed.remove("port")  # an automatically chosen port stays
        renamed = olds.get("monitor") != news.get("monitor")
        return DiffResult(
            changes=bool(changed) or renamed or observed_drift(olds, news),
            replaces=["monitor"] if renamed else [],
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        from mlinfra.endpoints.local import free_port

        out = _start(props, int(props.get("port") or free_port()))
        _wait_serving(out)
        return CreateResult(id_=container_name(props["monitor"]), outs=out)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        port = int(news.get("port") or olds["port"])
        _docker("rm", "-f", container_name(olds["monitor"]), check=False)
        out = _start(news, port)
        _wait_serving(out)
        return UpdateResult(outs=out)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = container_state(props["monitor"])
        if state != "running":
            say_drift(f"monitor {props['monitor']}", f"container: {state}", "`pulumi up` starts it again")
        return ReadResult(id_, {**props, "observed": {"container": state}})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _docker("rm", "-f", container_name(props["monitor"]), check=False, timeout=60)


class ScheduledMonitor(Resource):
    metrics_url: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(ScheduledMonitorProvider(), name, {**props, "metrics_url": None}, opts)
