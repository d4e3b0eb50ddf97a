"""Data collection against a real Azurite: the layout and contents of what lands, sampling, exactly-once delivery
across a 30 s storage outage under load, spooled records surviving kill -9; and DataCollection + CloudEndpoint on
the real engine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlinfra.engine import cache_dir, pinned_versions
from mlinfra.lab import services
from mlinfra.lab.samples import scoring_image, write_mlp
from mlinfra.monitoring.data_collection import CollectionError, container_sas, provision
from tests.scoring_helpers import free_port, start_server

pytestmark = pytest.mark.integration
LAYOUT = re.compile(r"^ep/blue/mlp/1/\d{4}/\d{2}/\d{2}/\d{2}/\d{8}T\d{6}-[0-9a-f]{12}\.jsonl$")


class Azurite:
    """An Azurite of the test's own (so stopping it disturbs nobody), started and stopped by PID."""

    def __init__(self, data: Path):
        self.data, self.port = data, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{services.AZURITE_ACCOUNT}"

    def start(self) -> None:
        binary = (
            cache_dir()
            / f"azurite-{pinned_versions()['AZURITE_VERSION']}"
            / "node_modules"
            / ".bin"
            / "azurite-blob"
        )
        self.proc = subprocess.Popen(
            [str(binary), "--silent", "--location", str(self.data), "--blobHost", "127.0.0.1", "--blobPort",
             str(self.port), "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not services.port_is_bound(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()  # never leave it running behind a failed test
                raise AssertionError(f"azurite did not start on 127.0.0.1:{self.port} within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def blobs(self, container: str = "collected") -> dict[str, bytes]:
        from azure.storage.blob import ContainerClient

        c = ContainerClient(
            self.url,
            container,
            credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
        )
        return {b.name: c.download_blob(b.name).readall() for b in c.list_blobs()}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    a = Azurite(tmp_path_factory.mktemp("azurite"))
    a.start()
    yield a
    a.stop()


def _sas(sink: str) -> str:
    """The servers' write-only SAS for a container, as a stack gets it: provisioned expiry, key, computed token."""
    sas = container_sas(sink, services.AZURITE_KEY, provision(sink, services.AZURITE_KEY, 1)["expires"])
    assert "sp=acw" in sas and "sig=" in sas, sas
    return sas


def _records(blobs: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for data in blobs.values() for line in data.splitlines() if line.strip()]


def _server(tmp: Path, model: Path, sink: str, sas: str | None, spool: Path, rate: float = 1.0):
    cfg = {
        "sink": sink,
        "endpoint": "ep",
        "deployment": "blue",
        "sample_rate": rate,
        "spool_dir": str(spool),
        "flush_s": 0.5,
    }
    env = {"MLINFRA_SERVE_COLLECT": json.dumps(cfg), "MLINFRA_SERVE_NO_ACCESS_LOG": "1"}
    if sas:
        env["MLINFRA_SERVE_COLLECT_CREDENTIAL"] = sas
    return start_server(tmp, "--model", str(model), "--name", "mlp", env=env)


def _score(server, rid: str, row: list[float]) -> int:
    status, _, _ = server.request("POST", "/score", {"data": [row]}, headers={"X-Request-Id": rid})
    return status


def _wait_spool_empty(spool: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while list(spool.rglob("*.jsonl")):
        assert time.monotonic() < deadline, f"spool not drained: {list(spool.rglob('*.jsonl'))[:3]}"
        time.sleep(0.2)


def test_layout_contents_and_exactly_once_across_a_storage_outage(azurite, tmp_path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    sink = f"azblob://{services.AZURITE_ACCOUNT}/collected?endpoint={azurite.url}"
    sas = _sas(sink)
    spool = tmp_path / "spool"
    server = _server(tmp_path, model, sink, sas, spool)
    sent: list[str] = []
    errors: list[int] = []
    stop = threading.Event()
    rows = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32).tolist()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"w{worker}-{i}"
            status = _score(server, rid, rows[i % 64])
            (sent if status == 200 else errors).append(rid if status == 200 else status)  # type: ignore[arg-type]
            i += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(4)
        azurite.stop()  # 30 s without storage, under load: the request path never waits on it
        t_stop = time.monotonic()
        time.sleep(30)
        during = len(sent)
        azurite.start()
        outage = time.monotonic() - t_stop
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join()
        assert errors == [], errors[:5]
        # Wait for what is asserted below (every record in storage), not for an empty spool: the last records
        # may still be in the collector's memory queue when the spool is momentarily empty, and a stop gives
        # uploads only a few seconds (the rest stays spooled for the next start — not lost, not yet stored).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if {r["request_id"] for r in _records(azurite.blobs())} >= set(sent):
                break
            time.sleep(1)
        _wait_spool_empty(spool)
    finally:
        stop.set()
        server.stop()
    blobs = azurite.blobs()
    assert blobs and all(LAYOUT.match(name) for name in blobs), list(blobs)[:3]
    records = _records(blobs)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)), "a record arrived twice"
    assert set(ids) == set(sent), f"missing {len(set(sent) - set(ids))} of {len(sent)}"
    assert outage >= 30 and during > 1000, (outage, during)
    # Contents: the input row sent and the model's output for it.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    r = next(r for r in records if r["request_id"] == "w0-5")
    x = np.array(r["inputs"]["input"], dtype=np.float32)
    assert np.allclose(x[0], rows[5])
    assert np.allclose(next(iter(r["outputs"].values())), sess.run(None, {"input": x})[0], atol=1e-5)
    assert r["model"] == "mlp" and r["version"] == "1" and r["endpoint"] == "ep" and r["deployment"] == "blue"
    log = server.log.read_text()
    assert "collector_upload_failed" in log and sas not in log  # the outage was logged, the SAS never


def test_spooled_records_survive_kill_9(azurite, tmp_path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    sink = f"azblob://{services.AZURITE_ACCOUNT}/killed?endpoint={azurite.url}"
    sas = _sas(sink)
    spool = tmp_path / "spool"
    azurite.stop()
    try:
        first = _server(tmp_path, model, sink, sas, spool)
        ids = [f"k-{i}" for i in range(50)]
        assert all(_score(first, rid, [0.1] * 64) == 200 for rid in ids)
        deadline = time.monotonic() + 10
        while sum(p.read_bytes().count(b"\n") for p in spool.rglob("*.jsonl")) < 50:
            assert time.monotonic() < deadline, "records did not reach the spool"
            time.sleep(0.1)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    finally:
        azurite.start()
    second = _server(tmp_path, model, sink, sas, spool)
    try:
        _wait_spool_empty(spool)
    finally:
        second.stop()
    got = [r["request_id"] for r in _records(azurite.blobs("killed"))]
    assert sorted(got) == sorted(ids)


def test_sampling_rate_is_respected(tmp_path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "collected"
    spool = tmp_path / "spool"
    server = _server(tmp_path, model, f"file://{out}", None, spool, rate=0.3)
    n = 1500
    try:
        assert all(_score(server, f"s-{i}", [0.2] * 64) == 200 for i in range(n))
        time.sleep(1.5)
        _wait_spool_empty(spool)
    finally:
        server.stop()
    got = len(_records({str(p): p.read_bytes() for p in out.rglob("*.jsonl")}))
    sd = (n * 0.3 * 0.7) ** 0.5
    assert abs(got - n * 0.3) < 5 * sd, got


def test_bad_collection_input(tmp_path, azurite) -> None:
    with pytest.raises(CollectionError, match="refused the credential") as err:
        provision(f"azblob://{services.AZURITE_ACCOUNT}/refused?endpoint={azurite.url}", "d3Jvbmcta2V5", 1)
    assert "d3Jvbmcta2V5" not in str(err.value)  # names the account, not the secret
    with pytest.raises(CollectionError, match="azblob://ACCOUNT/CONTAINER"):
        provision("s3://bucket/x", None, 1)
    with pytest.raises(CollectionError, match="container 'x' must be 3-63"):
        provision(f"azblob://{services.AZURITE_ACCOUNT}/x?endpoint={azurite.url}", "k", 1)
    # A server with a malformed collector config refuses to start and says why.
    r = subprocess.run(
        [os.sys.executable, "-m", "mlinfra_scoring", "--model", str(write_mlp(tmp_path / "m.onnx"))],
        env={**os.environ, "MLINFRA_SERVE_COLLECT": json.dumps({"sink": "file:///tmp/x", "sample_rate": 2})},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "sample_rate = 2 must be in [0, 1]" in r.stderr


def _collecting_stack(program, backend, name: str, image: str, container: str):
    """The data-collection test program: a CloudEndpoint on Local Docker serving IMAGE, capturing into Azurite's
    CONTAINER (created with a write-only SAS)."""
    from pulumi import automation as auto

    from mlinfra.automation import local_stack

    storage = f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}"
    config = {
        "image": image,
        "storage": storage,
        "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
    }
    return local_stack(program("data-collection"), name, backend, config)


def _collected_blobs(container: str, count: int, timeout_s: float = 30) -> dict[str, bytes]:
    """Azurite CONTAINER's blobs once they hold COUNT records (or what they hold after TIMEOUT_S)."""
    from azure.storage.blob import ContainerClient

    c = ContainerClient(
        services.azurite_blob_url(), container,
        credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        blobs = {b.name: c.download_blob(b.name).readall() for b in c.list_blobs()}
        if len(_records(blobs)) >= count or time.monotonic() > deadline:
            return blobs
        time.sleep(0.5)


def test_data_collection_on_a_cloud_endpoint(local_services, program, backend, tmp_path) -> None:
    """The real engine: the container and a write-only SAS are provisioned, the endpoint's servers capture what they
    score; a second up changes nothing; the state holds no SAS or account key in plain text."""

    from mlinfra.endpoints.local import bridge_gateway, find_containers
    from tests.endpoint_helpers import score
    from tests.state_helpers import plaintext_secrets

    local_services("docker", "registry", "python-base", "router-base", "azurite")
    reg_uri = f"file://{tmp_path / 'registry'}"
    image = scoring_image(reg_uri, "127.0.0.1:5000/mlinfra-test/collect", write_mlp(tmp_path / "mlp.onnx"))
    container = f"collected-{os.getpid()}"
    st = _collecting_stack(program, backend, "dc", image, container)
    try:
        out = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        assert out["container_uri"] == f"{services.azurite_blob_url()}/{container}"
        for i in range(20):
            status, _, _ = score(
                out["scoring_uri"],
                out["primary_key"],
                headers={"X-Request-Id": f"dc-{i}", "x-client-id": "acme"},
            )
            assert status == 200
        blobs = _collected_blobs(container, 20)
        records = _records(blobs)
        assert sorted(r["request_id"] for r in records) == sorted(f"dc-{i}" for i in range(20))
        assert all(name.startswith("scoring-dc/blue/mlp/1/") for name in blobs), list(blobs)[:3]
        assert records[0]["headers"] == {"x-client-id": "acme"} and "authorization" not in json.dumps(
            records[0]
        )
        assert set(st.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}
        # …and a preview agrees: the SAS (computed in the program) is known at preview, not a pending change.
        pv = st.preview(on_output=lambda _l: None)
        assert {k for k, v in pv.change_summary.items() if v} == {"same"}, pv.change_summary
        assert plaintext_secrets(backend, services.AZURITE_KEY, "sig=") == []
        assert find_containers("scoring-dc")
        # Collecting replicas stay on Docker's bridge (they ran on the host network, where they saw every loopback
        # service): Azurite is reached at the bridge's gateway, forwarded to its port only.
        replicas = [
            c["name"] for c in find_containers("scoring-dc") if c["labels"].get("mlinfra.io/role") != "router"
        ]
        modes = {
            n: subprocess.run(
                ["docker", "inspect", "-f", "{{.HostConfig.NetworkMode}}", n], capture_output=True, text=True
            ).stdout.strip()
            for n in replicas
        }
        assert modes and set(modes.values()) == {"default"}, modes
        probe = (
            "import socket,sys\nfor p in map(int, sys.argv[2:]):\n"
            "    s = socket.socket(); s.settimeout(2)\n"
            "    print(p, s.connect_ex((sys.argv[1], p)) == 0)\n"
        )
        gw = bridge_gateway()
        reach = subprocess.run(
            ["docker", "exec", replicas[0], "python3", "-c", probe, gw,
             str(services.azurite_port()), str(services.registry_port()), str(services.mqtt_port())],
            capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        assert reach == [str(services.azurite_port()), "True", str(services.registry_port()), "False",
                         str(services.mqtt_port()), "False"], reach  # fmt: skip
        # The image's health check probes the port the server listens on (it once probed the wrong one and
        # reported collecting replicas unhealthy for their whole life).
        health: dict[str, str] = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            health = {
                n: subprocess.run(
                    ["docker", "inspect", "-f", "{{.State.Health.Status}}", n], capture_output=True, text=True
                ).stdout.strip()
                for n in replicas
            }
            if health and all(s == "healthy" for s in health.values()):
                break
            assert "unhealthy" not in health.values(), health
            time.sleep(1)
        assert health and all(s == "healthy" for s in health.values()), health
    finally:
        st.destroy(on_output=lambda _l: None)


def test_a_scoring_script_records_through_the_sdk(local_services, program, backend, tmp_path) -> None:
    """examples/scoring-image/score.py collects its inputs and outputs (mlinfra_scoring.collection); deployed behind
    a CloudEndpoint with a DataCollection on the real engine, its records land in blob storage, correlated by the
    request id."""

    from tests.endpoint_helpers import score

    local_services("docker", "registry", "python-base", "router-base", "azurite")
    script = Path(__file__).parents[2] / "examples" / "scoring-image" / "score.py"
    image = scoring_image(
        f"file://{tmp_path / 'registry'}", "127.0.0.1:5000/mlinfra-test/collect-sdk",
        write_mlp(tmp_path / "mlp.onnx"), script=script,
    )  # fmt: skip
    container = f"sdk-{os.getpid()}"
    st = _collecting_stack(program, backend, "sdk", image, container)
    try:
        out = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        for i in range(5):
            status, body, _ = score(
                out["scoring_uri"], out["primary_key"], headers={"X-Request-Id": f"sdk-{i}"}
            )
            assert status == 200 and set(body) == {"label", "confidence"}, body
        records = _records(_collected_blobs(container, 10))
        assert sorted((r["request_id"], r["collection"]) for r in records) == sorted(
            (f"sdk-{i}", k) for i in range(5) for k in ("model_inputs", "model_outputs")
        ), records[:4]
        outputs = {r["request_id"]: r for r in records if r["collection"] == "model_outputs"}
        assert set(outputs["sdk-0"]["data"]) == {"label", "confidence"}
        assert all(r["model"] == "mlp" and r["correlation_id"] == r["request_id"] for r in records)
    finally:
        st.destroy(on_output=lambda _l: None)
