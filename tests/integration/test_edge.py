"""EdgeDeployment and the edge agent with a real Mosquitto (its own instance) and real agent processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.edge.fleet import Broker, publish, read_fleet
from mlinfra.lab import broker as lab_broker
from mlinfra.lab import services
from mlinfra.lab.broker import provision_devices
from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from mlinfra_edge.manifest import deployment_topic, twin_topic
from tests.scoring_helpers import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


class Agents:
    def __init__(self, broker: Broker, root: Path):
        self.broker, self.root = broker, root
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.passwords: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.trust: dict[str, list[str]] = {}

    def start(self, device: str, tags: str, trust: Path | None = None) -> None:
        if device not in self.passwords:
            self.passwords.update(provision_devices([device]))
            self.ports[device] = free_port()
            self.tags[device] = tags
            self.trust[device] = ["--trust", str(trust)] if trust else []
        log = open(self.root / f"{device}.log", "ab")  # noqa: SIM115
        self.procs[device] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlinfra_edge",
                "--device-id",
                device,
                "--broker",
                self.broker.url,
                "--tags",
                self.tags[device],
                "--state-dir",
                str(self.root / device),
                "--serve-port",
                str(self.ports[device]),
                *self.trust[device],
            ],
            env={**os.environ, "MLINFRA_EDGE_PASSWORD": self.passwords[device]},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda f: f.twins.get(device, {}).get("status") == "online", f"{device} online")

    def stop(self, device: str) -> None:
        p = self.procs.pop(device)
        p.terminate()
        assert p.wait(20) == 0

    def wait(self, check, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(read_fleet(self.broker, quiet_s=0.2)):
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def served(self, device: str) -> dict[str, str]:
        """Model name -> version the device's local scoring server serves."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[device]}/v2", timeout=5) as r:
            return {m["name"]: m["version"] for m in json.loads(r.read())["models"]}

    def infer_ok(self, device: str, model: str) -> bool:
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64}]}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports[device]}/v2/models/{model}/infer", data=body
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200

    def close(self) -> None:
        for d in list(self.procs):
            self.procs[d].terminate()
            self.procs.pop(d).wait(20)


@pytest.fixture
def agents(broker, tmp_path):
    a = Agents(broker, tmp_path)
    yield a
    a.close()


def _stack(program, backend: Path, broker: Broker, reg: str, models: dict, deployments: list, **extra):
    return local_stack(
        program("edge-deployment"),
        "edge",
        backend_dir=backend,
        config={
            "registry": reg,
            "models": json.dumps({k: str(v) for k, v in models.items()}),
            "deployments": json.dumps(deployments),
            "broker": broker.url,
            "username": broker.username,
            "password": auto.ConfigValue(value=broker.password, secret=True),
            **extra,
        },
    )


def test_targeting_layering_priority_offline_restart_corruption_and_fallback(
    tmp_path: Path, backend: Path, program, broker: Broker, agents: Agents
) -> None:
    reg = f"file://{tmp_path / 'registry'}"
    agents.start("d1", "site=p7,ring=canary")
    agents.start("d2", "site=p7,ring=ga")
    agents.start("d3", "site=p8,ring=ga")
    mlp = write_mlp(tmp_path / "mlp.onnx", seed=1)
    canary = write_mlp(tmp_path / "canary" / "mlp.onnx", seed=2)
    extra = write_mlp(tmp_path / "extra.onnx", seed=3)
    models = {"mlp": mlp, "mlpcanary": canary, "extra": extra}
    deployments = [
        {"name": "fleet", "condition": "*", "priority": 1, "models": ["mlp"]},
        {"name": "canary", "condition": "tags.ring = 'canary'", "priority": 5, "models": ["mlpcanary"]},
        {
            "name": "extras",
            "condition": "tags.site = 'p7' AND tags.ring IN ('canary', 'ga')",
            "priority": 3,
            "layered": True,
            "models": ["extra"],
        },
    ]
    stack = _stack(program, backend, broker, reg, models, deployments)
    up = stack.up()
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["fleet"] == {"targeted": 3, "applied": 2, "succeeded": 2, "failed": 0, "failing": []}
    assert out["canary"]["targeted"] == 1 and out["canary"]["succeeded"] == 1
    assert out["extras"]["targeted"] == 2 and out["extras"]["succeeded"] == 2
    # The highest-priority base wins; layered deployments add to it.
    assert set(agents.served("d1")) == {"mlpcanary", "extra"}
    assert set(agents.served("d2")) == {"mlp", "extra"}
    assert set(agents.served("d3")) == {"mlp"}
    assert agents.infer_ok("d1", "mlpcanary") and agents.infer_ok("d3", "mlp")
    assert stack.up().summary.resource_changes.get("update", 0) == 0

    # d3 goes offline; the fleet model changes (gate tolerates one missing device); the broker restarts mid-way.
    agents.stop("d3")
    write_mlp(mlp, seed=11)
    deployments[0]["min_fraction"] = 0.5
    stack.set_config("deployments", auto.ConfigValue(value=json.dumps(deployments)))

    import threading

    def restart_broker() -> None:
        time.sleep(1.5)
        services.down(["mosquitto"], progress=lambda _m: None)
        time.sleep(1.0)
        services.ensure(["mosquitto"], progress=lambda _m: None)

    t = threading.Thread(target=restart_broker)
    t.start()
    up2 = stack.up()
    t.join()
    assert up2.outputs["fleet"].value["succeeded"] >= 1
    agents.wait(lambda f: f.twins["d2"]["models"].get("mlp", {}).get("version") == 2, "d2 on mlp v2")
    agents.start("d3", "site=p8,ring=ga")  # back online: converges to the latest deployment
    agents.wait(
        lambda f: (
            f.statuses.get("d3", {}).get("fleet", {}).get("state") == "success"
            and f.twins["d3"]["models"]["mlp"]["version"] == 2
        ),
        "d3 converged",
    )
    assert agents.served("d3") == {"mlp": "2"}

    # A corrupted stored model: devices report failure, keep serving the old one, and `up` fails naming the gate.
    write_mlp(mlp, seed=12)
    mv3, _ = ModelRegistry(reg).register("mlp", mlp)
    blob = tmp_path / "registry" / "blobs" / "sha256" / mv3.sha256
    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)
    deployments[0]["min_fraction"] = 1.0
    stack.set_config("deployments", auto.ConfigValue(value=json.dumps(deployments)))
    with pytest.raises(auto.CommandError) as e:
        stack.up()
    assert "edge deployment fleet failed its gate" in str(e.value) and "sha256 mismatch" in str(e.value)
    assert agents.served("d3") == {"mlp": "2"} and agents.infer_ok("d3", "mlp"), (
        "the last good model keeps serving"
    )

    # Withdraw the canary deployment: d1 falls back to the next applicable one (the fleet base).
    blob.unlink()
    ModelRegistry(reg).delete_version("mlp", 3)
    write_mlp(mlp, seed=11)
    stack.set_config(
        "deployments", auto.ConfigValue(value=json.dumps([d for d in deployments if d["name"] != "canary"]))
    )
    stack.up()
    agents.wait(
        lambda f: "mlp" in f.twins["d1"]["models"] and "mlpcanary" not in f.twins["d1"]["models"],
        "d1 falls back to the fleet model",
    )
    assert set(agents.served("d1")) == {"mlp", "extra"}
    stack.destroy()
    agents.wait(lambda f: not f.twins["d2"]["models"], "models withdrawn from d2")


def test_a_device_that_trusts_a_key_swaps_in_only_models_it_signed(
    tmp_path: Path, backend: Path, program, broker: Broker, agents: Agents
) -> None:
    """A device with a trust folder: a model signed at registration by the trusted key is verified and served; an
    unsigned version, then one signed by another key, fail the deployment's gate with the reason while the last good
    model keeps serving; signed by the trusted key, it rolls out."""
    from mlinfra.registry.signing import key_id
    from tests.signing_helpers import ec_keypair

    (key_a, pub_a), (key_b, pub_b) = ec_keypair(), ec_keypair()
    trust = tmp_path / "trust"
    (trust / "keys").mkdir(parents=True)
    (trust / "keys" / "a.pem").write_text(pub_a)
    agents.start("s1", "site=signed-only", trust=trust)
    mlp = write_mlp(tmp_path / "mlp.onnx", seed=1)
    # Only this device: the broker still holds the twins of other tests' devices.
    deployments = [
        {
            "name": "signed",
            "condition": "tags.site = 'signed-only'",
            "priority": 1,
            "models": ["mlp"],
            "timeout": 20,
        }
    ]
    reg = f"file://{tmp_path / 'registry'}"
    signing = {"signing_key": auto.ConfigValue(key_a, secret=True)}
    stack = _stack(program, backend, broker, reg, {"mlp": mlp}, deployments, **signing)
    try:
        assert stack.up().outputs["signed"].value["succeeded"] == 1
        assert agents.served("s1") == {"mlp": "1"}

        write_mlp(mlp, seed=2)  # version 2, unsigned
        stack.remove_config("signing_key")
        with pytest.raises(auto.CommandError) as unsigned:
            stack.up()
        assert "edge deployment signed failed its gate" in str(unsigned.value)
        assert "model mlp:2 is not signed" in str(unsigned.value), str(unsigned.value)[-2000:]
        assert agents.served("s1") == {"mlp": "1"} and agents.infer_ok("s1", "mlp"), (
            "the last good model serves"
        )

        stack.set_config("signing_key", auto.ConfigValue(key_b, secret=True))  # signs version 2 with key B
        with pytest.raises(auto.CommandError) as untrusted:
            stack.up()
        assert f"signed by key {key_id(pub_b)[:16]}" in str(untrusted.value) and "not trusted" in str(
            untrusted.value
        )
        assert agents.served("s1") == {"mlp": "1"}

        stack.set_config("signing_key", auto.ConfigValue(key_a, secret=True))
        assert stack.up().outputs["signed"].value["succeeded"] == 1
        assert agents.served("s1") == {"mlp": "2"} and agents.infer_ok("s1", "mlp")
    finally:
        stack.destroy()


def test_malformed_payloads_are_ignored_and_devices_are_fenced(broker: Broker, agents: Agents) -> None:
    agents.start("m1", "site=x")
    for payload in (
        b"\xff\xfe not json",
        b"[1,2,3]",
        b'{"name": "evil"}',
        json.dumps(
            {
                "name": "evil",
                "generation": "1",
                "priority": 1,
                "target_condition": "*",
                "models": [
                    {
                        "name": "m",
                        "version": 1,
                        "sha256": "0" * 64,
                        "files": [
                            {
                                "path": "../../etc/passwd",
                                "url": "file:///etc/passwd",
                                "sha256": "0" * 64,
                                "size": 1,
                            }
                        ],
                    }
                ],
            }
        ).encode(),
        b"{" * 5000,
    ):
        publish(broker, deployment_topic("evil"), payload)
    time.sleep(0.5)
    assert agents.procs["m1"].poll() is None, "the agent must stay up"
    fleet = read_fleet(broker)
    assert fleet.twins["m1"]["status"] == "online" and fleet.twins["m1"]["models"] == {}
    log = (agents.root / "m1.log").read_text()
    assert (
        "ignored a malformed deployment" in log and "escapes or is not normalized in the model folder" in log
    )
    publish(broker, deployment_topic("evil"), b"")

    # A device connects only with its own client id, and publishes only below its own topics.
    def device_client(client_id: str) -> tuple[mqtt.Client, str]:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set("m1", agents.passwords["m1"])
        answered, reason = threading.Event(), []
        c.on_connect = lambda _c, _u, _f, rc, _p: (reason.append(str(rc)), answered.set())
        c.connect("127.0.0.1", int(broker.url.rsplit(":", 1)[1]))
        c.loop_start()
        assert answered.wait(10)
        return c, reason[0]

    other, why = device_client("m1-spoof")
    other.loop_stop()
    assert why != "Success", "m1's credentials connected under another client id"
    spoof, why = device_client("m1")  # its own id (the agent's session is taken over; it reconnects)
    assert why == "Success"
    spoof.publish(
        twin_topic("victim"), json.dumps({"device_id": "victim", "status": "online"}), qos=1, retain=True
    ).wait_for_publish(5)
    spoof.publish(deployment_topic("rogue"), b'{"x": 1}', qos=1, retain=True).wait_for_publish(5)
    spoof.disconnect()
    spoof.loop_stop()
    fleet = read_fleet(broker)
    assert "victim" not in fleet.twins, "a device must not write another device's twin"
    wrong = Broker(broker.url, "m1", "not-the-password")
    with pytest.raises(Exception, match="refused the credentials of user 'm1'"):
        read_fleet(wrong)


def test_bad_conditions_fail_preview_and_untargeted_warn(
    tmp_path: Path, backend: Path, program, broker: Broker
) -> None:
    model = write_mlp(tmp_path / "m.onnx")
    reg = f"file://{tmp_path / 'registry'}"
    stack = _stack(
        program,
        backend,
        broker,
        reg,
        {"mlp": model},
        [{"name": "bad", "condition": "tags.site = 'a' AND (tags.ring IN ('x',)", "models": ["mlp"]}],
    )
    with pytest.raises(auto.CommandError) as e:
        stack.preview()
    assert "at position" in str(e.value) and "expected a value" in str(e.value)
    stack.set_config(
        "deployments",
        auto.ConfigValue(
            value=json.dumps([{"name": "nobody", "condition": "tags.site = 'atlantis'", "models": ["mlp"]}])
        ),
    )
    preview = stack.preview()
    assert "matches no device" in preview.stdout


def test_signed_urls_from_an_azure_registry_download_and_expire(tmp_path: Path, local_services) -> None:
    """Devices fetch Azure-registry models through short-lived read-only SAS URLs, verified by sha256."""
    from mlinfra.edge.fleet import artifact_urls
    from mlinfra_edge.agent import DownloadError, _download

    local_services("azurite")
    uri = f"azblob://{services.AZURITE_ACCOUNT}/edgesas{os.getpid()}/models?endpoint={services.azurite_blob_url()}"
    mv, _ = ModelRegistry(uri, services.AZURITE_KEY).register("mlp", write_mlp(tmp_path / "m.onnx"))
    model = {
        "name": "mlp",
        "version": mv.version,
        "sha256": mv.sha256,
        "registry": uri,
        "credential": services.AZURITE_KEY,
    }
    f = artifact_urls(model, ttl_s=60)["files"][0]
    assert "sig=" in f["url"] and "sp=r" in f["url"] and services.AZURITE_KEY not in f["url"]
    _download(f["url"], tmp_path / "dl" / "m.onnx", f["sha256"], f["size"])
    assert (tmp_path / "dl" / "m.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    expired = artifact_urls(model, ttl_s=-60)["files"][0]
    with pytest.raises(DownloadError, match=r"download of m\.onnx failed"):
        _download(expired["url"], tmp_path / "dl2" / "m.onnx", f["sha256"], f["size"])
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        _download(f["url"], tmp_path / "dl3" / "m.onnx", "0" * 64, f["size"])


def test_agent_over_tls(tmp_path: Path, broker: Broker, agents: Agents) -> None:
    """mqtts:// with a private CA: the agent verifies the broker's certificate and publishes its twin."""
    import shutil
    import signal

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=mlinfra-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    )
    password = provision_devices(["tls-1"])["tls-1"]
    time.sleep(0.5)  # the plugin writes its configuration after each command
    security = tmp_path / "dynamic-security.json"  # a copy of the module broker's devices, roles and admin
    shutil.copy(lab_broker.config_path(), security)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}\nallow_anonymous false\nplugin {lab_broker.plugin_path()}\n"
        f"plugin_opt_config_file {security}\nacl_file {lab_broker.config_path().parent / 'acl'}\nuser root\n"
    )
    mosq = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        tls = Broker(
            f"mqtts://127.0.0.1:{port}", broker.username, broker.password, ca_file=str(tmp_path / "ca.pem")
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlinfra_edge",
                "--device-id",
                "tls-1",
                "--broker",
                tls.url,
                "--tags",
                "tls=yes",
                "--ca-file",
                str(tmp_path / "ca.pem"),
                "--state-dir",
                str(tmp_path / "tls-1"),
                "--serve-port",
                "0",
            ],
            env={**os.environ, "MLINFRA_EDGE_PASSWORD": password},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if read_fleet(tls, quiet_s=0.2).twins.get("tls-1", {}).get("status") == "online":
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the agent never came online over TLS")
            untrusted = Broker(tls.url, broker.username, broker.password)  # the system CAs do not know ours
            with pytest.raises(Exception, match=r"unreachable|certificate|SSL"):
                read_fleet(untrusted)
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        mosq.send_signal(signal.SIGTERM)
        mosq.wait(10)


def test_withdrawn_deployment_is_reported_and_republished(
    tmp_path: Path, backend: Path, program, broker: Broker, agents: Agents
) -> None:
    """Drift: a colleague clears the retained deployment (the device drops it); refresh reports it, up publishes
    the same generation again and the device serves again; a second up changes nothing."""
    from mlinfra.edge.fleet import read_retained, withdraw

    reg = f"file://{tmp_path / 'registry'}"
    agents.start("w1", "site=withdrawn")  # its own tag: earlier tests' devices stay on this broker, offline
    models = {"mlp": write_mlp(tmp_path / "mlp.onnx", seed=1)}
    stack = _stack(
        program,
        backend,
        broker,
        reg,
        models,
        [{"name": "fleet", "condition": "tags.site = 'withdrawn'", "models": ["mlp"]}],
    )
    try:
        stack.up(on_output=lambda _l: None)
        body = read_retained(broker, deployment_topic("fleet"))
        assert body is not None
        generation = json.loads(body)["generation"]
        assert agents.served("w1") == {"mlp": "1"}
        withdraw(broker, "fleet")
        assert read_retained(broker, deployment_topic("fleet")) is None
        r = stack.refresh(on_output=lambda _l: None)
        assert "edge deployment fleet: drift: withdrawn" in r.stdout, r.stdout[-1500:]
        res = stack.up(on_output=lambda _l: None)
        assert res.summary.resource_changes.get("update") == 1, res.summary.resource_changes
        body = read_retained(broker, deployment_topic("fleet"))
        assert body is not None and json.loads(body)["generation"] == generation
        agents.wait(
            lambda f: (
                f.statuses.get("w1", {}).get("fleet", {}).get("generation") == generation
                and f.statuses["w1"]["fleet"]["state"] == "success"
            ),
            "w1 applied the deployment again",
        )
        assert agents.served("w1") == {"mlp": "1"}
        assert set(stack.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}
    finally:
        stack.destroy(on_output=lambda _l: None)
