"""`mlinfra monitor drift`: a drift report over data a DataCollection captured; `mlinfra monitor run`: one run of
the data-quality and drift checks, its report kept in storage and alerts sent (mlinfra.monitoring.monitor)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mlinfra.monitoring.drift import drift, load_baseline, read_collected, write_report


def cmd_drift(args: Any) -> int:
    collected = read_collected(
        args.collected, os.environ.get("MLINFRA_COLLECT_CREDENTIAL"), args.prefix or "", args.since
    )
    baseline = load_baseline(args.baseline)
    names = args.feature_names.split(",") if args.feature_names else None
    summary = drift(collected, baseline, args.threshold, names, args.model)
    files = write_report(summary, baseline, collected, Path(args.out))
    for f in summary["features"]:
        flag = "  DRIFT" if f["drifted"] else ""
        print(f"{f['feature']:16s} PSI {f['psi']:7.3f}  KS {f['ks']:.3f} (p {f['ks_p']:.2g}){flag}")
    if summary["prediction"]:
        p = summary["prediction"]
        print(f"{'prediction':16s} PSI {p['psi']:7.3f}{'  DRIFT' if p['drifted'] else ''}")
    if collected.malformed:
        print(f"skipped {collected.malformed} malformed record(s): {'; '.join(collected.malformed_examples)}")
    print("wrote " + ", ".join(str(f) for f in files))
    return 1 if summary["drifted"] else 0


def run_deployed(name: str, as_json: bool) -> int:
    """Run a deployed ModelMonitor now, in its scheduled container (Local Docker): its configuration, credentials
    and lock are there. Exit status: the run's (1 when its checks failed)."""
    import subprocess

    from mlinfra.defaults import docker_cli
    from mlinfra.errors import MonitorError
    from mlinfra.monitoring.model_monitor import container_name, container_state

    if container_state(name) != "running":
        raise MonitorError(
            f"no ModelMonitor {name!r} runs on Local Docker here (container {container_name(name)}): `pulumi up` its "
            "stack, or give --collected, --baseline and --reports to run the checks from this machine; on Kubernetes "
            "give its --namespace (and --kubeconfig)"
        )
    cmd = [docker_cli(), "exec", container_name(name), "python3", "-m", "mlinfra_scoring.monitor", "--once"]
    r = subprocess.run([*cmd, *(["--json"] if as_json else [])], capture_output=True, text=True, timeout=3600)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


def run_cron_job(name: str, namespace: str, kubeconfig: str | None, timeout_s: float = 3600) -> int:
    """Run a Kubernetes ModelMonitor now: a Job from its CronJob (as `kubectl create job --from=cronjob/...`),
    followed to its end; prints the pod's summary. Exit status: 0 passed, 1 its checks failed, 2 it could not run."""
    import shutil
    import subprocess
    import time

    from mlinfra.errors import MonitorError

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        from mlinfra.lab.cluster import kube_bin_dir

        local = kube_bin_dir() / "kubectl"
        kubectl = str(local) if local.exists() else None
    if kubectl is None:
        raise MonitorError("kubectl is not on PATH: install it to run a Kubernetes ModelMonitor now")
    base = [kubectl, *(["--kubeconfig", kubeconfig] if kubeconfig else []), "-n", namespace]
    job = f"{name}-now-{int(time.time())}"

    def k(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *a], capture_output=True, text=True, timeout=120)

    made = k("create", "job", f"--from=cronjob/{name}-monitor", job)
    if made.returncode != 0:
        raise MonitorError(
            f"could not start a run of ModelMonitor {name!r} in namespace {namespace}: {made.stderr.strip()[-400:]}"
        )
    print(f"started job {namespace}/{job}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout_s
    outcome = ""
    while time.monotonic() < deadline:
        got = k("get", "job", job, "-o", "jsonpath={.status.succeeded}/{.status.failed}").stdout.strip()
        ok, _, failed = got.partition("/")
        if ok or failed:
            outcome = "passed" if ok else "failed"
            break
        time.sleep(1.0)
    logs = k("logs", f"job/{job}").stdout
    sys.stdout.write(logs)
    if not outcome:
        raise MonitorError(f"job {namespace}/{job} did not finish in {timeout_s:g} s")
    return 0 if outcome == "passed" else 1


def cmd_run(args: Any) -> int:
    import json

    from mlinfra.errors import MonitorError
    from mlinfra.monitoring.monitor import MonitorRun, monitor_run
    from mlinfra_scoring.checks import Thresholds

    given = [f"--{k}" for k in ("collected", "baseline", "reports") if getattr(args, k)]
    if not given and args.namespace:
        return run_cron_job(args.name, args.namespace, args.kubeconfig)
    if not given:
        return run_deployed(args.name, args.json)
    if len(given) < 3:
        raise MonitorError(
            f"give --collected, --baseline and --reports together (got only {', '.join(given)}), or none of them to "
            f"run the deployed ModelMonitor {args.name!r} now"
        )

    thresholds: dict[str, str] = {}
    for item in args.threshold or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise MonitorError(f"--threshold {item!r}: use NAME=VALUE, e.g. psi=0.25")
        thresholds[k.strip()] = v
    try:
        limits = Thresholds.from_dict({k: float(v) for k, v in thresholds.items()})
    except ValueError as e:
        raise MonitorError(f"--threshold: {e}") from None
    webhooks = [u.strip() for u in os.environ.get("MLINFRA_MONITOR_WEBHOOKS", "").split(",") if u.strip()]
    if args.webhooks_file:
        try:
            webhooks += [u.strip() for u in Path(args.webhooks_file).read_text().split() if u.strip()]
        except OSError as e:
            raise MonitorError(f"--webhooks-file {args.webhooks_file}: {e.strerror}") from None
    for u in webhooks:
        if not u.startswith(("http://", "https://")):
            raise MonitorError("a webhook is not an http(s) URL (its value is not shown: it is a secret)")
    preds = load_baseline(args.baseline_predictions) if args.baseline_predictions else None
    report = monitor_run(
        MonitorRun(
            name=args.name,
            collected=args.collected,
            reports=args.reports,
            baseline_rows=load_baseline(args.baseline),
            feature_names=args.feature_names.split(",") if args.feature_names else None,
            baseline_predictions=preds,
            thresholds=limits,
            webhooks=webhooks,
            alert_interval_s=args.alert_interval_s,
            collected_credential=os.environ.get("MLINFRA_COLLECT_CREDENTIAL"),
            reports_credential=os.environ.get("MLINFRA_REPORTS_CREDENTIAL"),
            prefix=args.prefix or "",
        )
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{args.name}: {report['status']} over {report['rows']:,d} rows ({report['report']})")
        for f in report["features"] + report["predictions"]:
            if f["flags"]:
                print(f"  {f['name']}: {'; '.join(f['flags'])}")
        for problem in report["problems"]:
            print(f"  {problem}")
        a = report["alerts"]
        if a["sent"] or a["failed"] or a["suppressed"]:
            print(
                f"  alerts: {a['sent']} sent, {a['failed']} failed, {a['suppressed']} held back by the rate limit"
            )
    return 1 if report["status"] == "failed" else 0


def register(sub: Any) -> None:
    mon = sub.add_parser("monitor", help="drift reports and checks over data collected by DataCollection")
    msub = mon.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    p = msub.add_parser("drift", help="per-feature and prediction drift vs a baseline; HTML + PNG + JSON")
    p.add_argument("--collected", required=True, help="file:///folder or the container URL (container_uri)")
    p.add_argument("--baseline", required=True, help="baseline input rows: .npy, .csv or .jsonl")
    p.add_argument("--prefix", help="only blobs under this path, e.g. ENDPOINT/DEPLOYMENT/MODEL/VERSION")
    p.add_argument("--since", help="only records at or after this UTC time, e.g. 2026-11-24T08:00")
    p.add_argument("--model", help="ONNX model to score the baseline for prediction drift")
    p.add_argument("--feature-names", help="comma-separated names for the input columns")
    p.add_argument("--threshold", type=float, default=0.2, help="PSI above which a feature drifts (exit 1)")
    p.add_argument("--out", default="drift-report.html")
    p.set_defaults(func=cmd_drift)
    p = msub.add_parser(
        "run",
        help="run a deployed ModelMonitor now; or check the data collected since the last run against a baseline "
        "(quality, PSI, KS), keep the report and the index in --reports, alert webhooks ($MLINFRA_MONITOR_WEBHOOKS or "
        "--webhooks-file) on failure; exit 1 when the checks failed",
    )
    p.add_argument(
        "name",
        help="the monitor's name: alone, runs the deployed ModelMonitor now (Local Docker); with --collected, "
        "--baseline and --reports, runs the checks from this machine (NAME: its folder in --reports)",
    )
    p.add_argument("--namespace", help="a Kubernetes ModelMonitor's namespace: run its CronJob now")
    p.add_argument("--kubeconfig", help="with --namespace: the cluster's kubeconfig (default: kubectl's)")
    p.add_argument("--collected", help="file:///folder or the container URL (container_uri)")
    p.add_argument("--baseline", help="baseline input rows: .npy, .csv or .jsonl")
    p.add_argument(
        "--baseline-predictions", help="the model's outputs on the baseline rows, for prediction drift"
    )
    p.add_argument("--reports", help="where reports go: file:///folder or a container URL")
    p.add_argument("--prefix", help="only blobs under this path, e.g. ENDPOINT/DEPLOYMENT/MODEL/VERSION")
    p.add_argument("--feature-names", help="comma-separated names for the input columns")
    p.add_argument(
        "--threshold", action="append", metavar="NAME=VALUE", help="e.g. psi=0.25, ks_pvalue=0.001"
    )
    p.add_argument("--webhooks-file", help="file of webhook URLs (secrets: never on the command line)")
    p.add_argument("--alert-interval-s", type=float, default=300.0, help="at most one alert this often")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)
