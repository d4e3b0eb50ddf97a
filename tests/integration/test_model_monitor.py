"""ModelMonitor on the real engine against real services: a Local Docker endpoint collecting into Azurite and a
scheduled monitor container checking what it collects. Traffic from the baseline's distribution passes on a scheduled
run; traffic shifted on one feature flags that feature only, on a run started by `mlinfra monitor run NAME`, and a
webhook (a receiver in a container on Docker's bridge) gets one event; the index shows the runs; a second up changes
nothing; a new schedule updates the container only; a removed container and deleted baseline statistics are seen by
refresh and restored by up;
destroy removes the schedule and keeps the reports; no secret in plain text in the state or on a command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mlinfra.lab import services
from mlinfra.lab.samples import scoring_image, write_mlp

pytestmark = pytest.mark.integration

RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(self.path, body.decode(), flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def _quiet(_line: str) -> None:
    pass


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def _events(receiver: str) -> list[dict]:
    lines = _docker("logs", receiver).stdout.splitlines()
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("/hooks/")]


def _client(container: str):
    from azure.storage.blob import ContainerClient

    return ContainerClient(
        services.azurite_blob_url(), container,
        credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
    )  # fmt: skip


def _blob(container: str, name: str) -> bytes | None:
    try:
        return _client(container).download_blob(name).readall()
    except Exception:
        return None


def _send(uri: str, key: str, rows: np.ndarray, per_request: int = 50) -> None:
    from tests.endpoint_helpers import score

    for i in range(0, len(rows), per_request):
        status, body, _ = score(uri, key, rows[i : i + per_request].tolist())
        assert status == 200, body


def _index(container: str) -> dict:
    got = _blob(container, "monitoring/drift-mon/index.json")
    return json.loads(got) if got else {"runs": []}


def test_model_monitor_on_local_docker(local_services, program, backend, tmp_path: Path) -> None:
    from pulumi import automation as auto

    from mlinfra.automation import local_stack
    from tests.state_helpers import plaintext_secrets

    local_services("docker", "registry", "python-base", "router-base", "azurite")
    image = scoring_image(
        f"file://{tmp_path / 'registry'}",
        "127.0.0.1:5000/mlinfra-test/monitor",
        write_mlp(tmp_path / "mlp.onnx"),
    )
    rng = np.random.default_rng(21)
    np.save(tmp_path / "baseline.npy", rng.normal(size=(5_000, 64)).astype(np.float32))
    token = f"secret-token-{os.getpid()}"
    receiver = f"mlinfra-test-hook-{os.getpid()}"
    _docker("rm", "-f", receiver)
    started = _docker("run", "-d", "--name", receiver, "--entrypoint", "python3", image, "-c", RECEIVER)
    assert started.returncode == 0, started.stderr
    container = f"monitored-{os.getpid()}"
    st = None
    try:
        ip = _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", receiver).stdout.strip()
        config = {
            "image": image,
            "storage": f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}",
            "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
            "baseline": str(tmp_path / "baseline.npy"),
            "webhook": auto.ConfigValue(f"http://{ip}:8080/hooks/{token}", secret=True),
            "schedule": "* * * * *",
            "lag": "4",
        }
        st = local_stack(program("model-monitor"), "mon", backend, config)
        up = st.up(on_output=_quiet)
        out = {k: v.value for k, v in up.outputs.items()}
        assert (
            out["index_url"] == f"{services.azurite_blob_url()}/{container}/monitoring/drift-mon/index.html"
        )
        sha = out["baseline_sha256"]
        assert _blob(container, f"monitoring/drift-mon/baseline/{sha}/baseline.json"), (
            "statistics computed at up"
        )

        # Traffic from the baseline's distribution: a scheduled run (every minute) passes.
        _send(out["scoring_uri"], out["primary_key"], rng.normal(size=(1_000, 64)))
        deadline = time.monotonic() + 200
        while sum(r["rows"] for r in _index(container)["runs"]) < 1_000 and time.monotonic() < deadline:
            time.sleep(2)
        runs = _index(container)["runs"]
        assert sum(r["rows"] for r in runs) == 1_000, (
            f"scheduled runs did not check each record once in 200 s: {runs}"
        )
        assert {r["status"] for r in runs} <= {"passed", "no_data"}, runs
        assert _events(receiver) == []

        # Scheduled runs stop (a new schedule: only the scheduler container is updated, the baseline is not).
        st.set_config("schedule", auto.ConfigValue("0 0 1 1 *"))
        pv = st.preview(on_output=_quiet, diff=True)
        updated = [  # the name in the first URN after each "(update)" line
            re.findall(r"\[urn=[^\]]*::([^:\]]+)\]", block)[0] for block in pv.stdout.split("(update)")[1:]
        ]
        lines = [line for line in pv.stdout.splitlines() if "(update)" in line or "urn=" in line]
        assert sorted(updated) == ["drift", "drift-schedule"], lines
        st.up(on_output=_quiet)
        before = len(_index(container)["runs"])

        # Traffic shifted on one feature: `mlinfra monitor run drift` runs now, flags f5 only, one webhook event.
        shifted = rng.normal(size=(1_000, 64))
        shifted[:, 5] += 2.0
        _send(out["scoring_uri"], out["primary_key"], shifted)
        time.sleep(6)  # past the monitor's 4 s lag: the collector flushes each second
        run = subprocess.run(
            [sys.executable, "-m", "mlinfra.cli", "monitor", "run", "drift-mon", "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 1, run.stdout + run.stderr
        report = json.loads(run.stdout)
        assert report["flagged"] == ["f5"] and report["rows"] == 1_000, (report["flagged"], report["rows"])
        assert report["alerts"]["sent"] == 1 and token not in run.stdout + run.stderr
        (event,) = _events(receiver)
        assert (
            event["monitor"] == "drift-mon"
            and event["flagged"] == ["f5"]
            and "f5 failed its checks" in event["text"]
        )
        index = _index(container)
        assert len(index["runs"]) == before + 1 and index["runs"][-1]["status"] == "failed"
        page = (_blob(container, "monitoring/drift-mon/index.html") or b"").decode()
        assert page.count("<tr><td>") == before + 1 and "<svg" in page and ">f5</text>" in page
        metrics = urllib.request.urlopen(out["metrics_url"], timeout=10).read().decode()
        assert (
            'mlinfra_monitor_check_failed{monitor="drift-mon",feature="f5",kind="feature",check="psi"} 1.0'
            in metrics
        )

        # A second up changes nothing; a removed container is seen by refresh and started again by up.
        assert set(st.up(on_output=_quiet).summary.resource_changes) == {"same"}
        _docker("rm", "-f", "mlinfra-monitor-drift-mon")
        stats = f"monitoring/drift-mon/baseline/{sha}/baseline.json"
        _client(container).delete_blob(stats)
        refreshed = st.refresh(on_output=_quiet)
        said = refreshed.stderr + refreshed.stdout
        assert "container: missing" in said and "statistics: missing" in said, said[-2000:]
        assert st.up(on_output=_quiet).summary.resource_changes.get("update") == 2
        assert _blob(container, stats), "up stores the baseline's statistics again"
        assert (
            _docker("inspect", "-f", "{{.State.Running}}", "mlinfra-monitor-drift-mon").stdout.strip()
            == "true"
        )

        # Secrets: never in the state in plain text, never on the container's command line.
        assert plaintext_secrets(backend, services.AZURITE_KEY, "sig=", token) == []
        argv = _docker("inspect", "-f", "{{.Path}} {{json .Args}}", "mlinfra-monitor-drift-mon").stdout
        assert token not in argv and "sig=" not in argv, argv
    finally:
        if st is not None:
            st.destroy(on_output=_quiet)
        _docker("rm", "-f", receiver)
    assert _docker("inspect", "mlinfra-monitor-drift-mon").returncode != 0, "destroy removes the schedule"
    assert _index(container)["runs"], "destroy keeps the reports"
