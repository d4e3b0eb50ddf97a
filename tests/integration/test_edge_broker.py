"""Edge on a long-lived broker (issue 26): provisioning and credential rotation never knock other devices off.

Provisioning used to rewrite Mosquitto's password and ACL files and SIGHUP the broker: every provisioning reloaded
the whole broker, re-checking every connected client, and a rotated device's running session was kicked into a
"not authorised" loop. The broker now runs Mosquitto's dynamic security plugin and mlinfra changes one client at a
time over ``$CONTROL/dynamic-security/v1`` (mlinfra.lab.broker): no reload, only the rotated device's session ends.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.edge.fleet import Broker, read_fleet
from mlinfra.lab import broker as lab_broker
from mlinfra.lab import services
from mlinfra.lab.broker import provision_devices, security_status
from mlinfra.lab.samples import write_mlp
from mlinfra_edge.agent import AgentConfig, EdgeAgent
from tests.scoring_helpers import free_port

pytestmark = pytest.mark.integration


class Fleet:
    """In-process agents with persistent sessions (clean_start False, a week's session expiry), as on devices."""

    def __init__(self, broker: Broker, root: Path) -> None:
        self.broker, self.root = broker, root
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()
        self.agents: dict[str, EdgeAgent] = {}

    def start(self, device: str, password: str, tags: dict[str, str]) -> EdgeAgent:
        agent = EdgeAgent(
            AgentConfig(device, self.broker.url, password, tags=tags, state_dir=self.root / device),
            on_event=lambda kind, _d: self.events.update([(device, kind)]),
        )
        agent.start()
        assert agent.connected.wait(15), f"{device} did not connect"
        self.agents[device] = agent
        return agent

    def stop(self, device: str) -> None:
        self.agents.pop(device).stop()

    def close(self) -> None:
        for d in list(self.agents):
            self.stop(d)


def _deployments(priority: int) -> str:
    return json.dumps(
        [
            {
                "name": "plant7",
                "condition": "tags.site = 'plant7'",
                "models": ["mlp"],
                "priority": priority,
                "timeout": 60,
            }
        ]
    )


def _edge_stack(program, backend: Path, broker: Broker, tmp_path: Path) -> auto.Stack:
    return local_stack(
        program("edge-deployment"),
        "edge",
        backend_dir=backend,
        config={
            "registry": f"file://{tmp_path / 'registry'}",
            "models": json.dumps({"mlp": str(write_mlp(tmp_path / "m.onnx"))}),
            "deployments": _deployments(0),
            "broker": broker.url,
            "username": broker.username,
            "password": auto.ConfigValue(value=broker.password, secret=True),
        },
    )


def test_rotating_devices_while_rolling_out_drops_no_other_session(
    tmp_path: Path, backend: Path, program, broker: Broker
) -> None:
    pid = services._read_pid("mosquitto")
    log = services.state_dir("mosquitto") / "mosquitto.log"
    offset = log.stat().st_size
    fleet = Fleet(broker, tmp_path / "devices")
    stable = [f"plant7-{i}" for i in range(3)]
    creds = provision_devices(stable)
    try:
        for d in stable:
            fleet.start(d, creds[d], {"site": "plant7"})
        rotated = "lab-rot"
        fleet.start(rotated, provision_devices([rotated])[rotated], {"site": "lab"})
        errors: list[BaseException] = []

        def churn() -> None:
            """20 times: rotate lab-rot's password (its agent restarts with the new one, as a rotation does) and
            provision a new device."""
            try:
                for i in range(20):
                    pw = provision_devices([rotated, f"lab-new-{i}"])
                    fleet.stop(rotated)
                    fleet.start(rotated, pw[rotated], {"site": "lab"})
                    time.sleep(0.2)
            except BaseException as e:
                errors.append(e)

        worker = threading.Thread(target=churn)
        worker.start()
        stack = _edge_stack(program, backend, broker, tmp_path)
        for priority in range(3):  # three roll-outs to the plant (each a new generation) while the lab churns
            stack.set_config("deployments", auto.ConfigValue(value=_deployments(priority)))
            out = stack.up(on_output=lambda _l: None).outputs["plant7"].value
            assert (out["targeted"], out["succeeded"], out["failed"]) == (3, 3, 0), out
        worker.join(120)
        assert not worker.is_alive() and errors == [], errors

        drops = {d: fleet.events[(d, "disconnected")] for d in stable}
        assert drops == dict.fromkeys(stable, 0), f"untouched devices lost their sessions: {drops}"
        # Each rotation ends only the rotated device's session (its old agent is then refused: the old password
        # is gone); the agent started with the new password connects at once (Fleet.start waits for it).
        assert fleet.events[(rotated, "connected")] == 21, (
            "the rotated device reconnected after each rotation"
        )
        text = log.read_text(errors="replace")[offset:]
        assert "Reloading config" not in text, "provisioning must not reload the broker"
        assert "due to timeout" not in text, "no session expired"
        assert services._read_pid("mosquitto") == pid, "the broker was never restarted"
        assert security_status() == {"mode": "dynamic-security", "devices": 3 + 1 + 20}

        # The CLI says which security mode the broker runs and how many devices it knows.
        r = subprocess.run(
            [sys.executable, "-m", "mlinfra.cli", "edge", "provision", "lab-cli"],
            capture_output=True, text=True, timeout=60, env=os.environ.copy(),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["security"] == "dynamic-security" and out["device_count"] == 3 + 1 + 20 + 1
        assert set(out["devices"]) == {"lab-cli"} and out["devices"]["lab-cli"] not in r.stderr
        r = subprocess.run(
            [sys.executable, "-m", "mlinfra.cli", "doctor", "--json"],
            capture_output=True, text=True, timeout=120, env=os.environ.copy(),
        )  # fmt: skip
        mosq = next(c for c in json.loads(r.stdout) if c["name"] == "mosquitto")
        assert mosq["ok"] and "dynamic-security, 25 devices" in mosq["detail"], mosq

        # A broker restart: every device comes back with the password it has (the plugin keeps its clients).
        services.down(["mosquitto"], progress=lambda _m: None)
        services.ensure(["mosquitto"], progress=lambda _m: None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            twins = read_fleet(broker, quiet_s=0.3).twins
            if all(twins.get(d, {}).get("status") == "online" for d in [*stable, rotated]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"devices did not come back after a broker restart: {twins}")
    finally:
        fleet.close()


def test_a_password_file_broker_is_migrated_with_its_devices(tmp_path: Path, monkeypatch) -> None:
    """A broker `make services` started before the plugin: devices provisioned then keep their passwords, and the
    broker comes back in dynamic-security mode (doctor and `edge provision` report it)."""
    monkeypatch.setenv("MLINFRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLINFRA_MQTT_PORT", str(free_port()))
    state = services.state_dir("mosquitto")
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", b"old-device-password", salt, 101)
    (state / "passwd").write_text(
        f"old-dev:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"
    )
    try:
        services.ensure(["mosquitto"], progress=lambda _m: None)
        b = Broker.local()
        assert security_status(b) == {"mode": "dynamic-security", "devices": 1}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="old-dev", protocol=mqtt.MQTTv5)
        c.username_pw_set("old-dev", "old-device-password")
        c.connect("127.0.0.1", int(b.url.rsplit(":", 1)[1]))
        assert c.loop(timeout=2.0) == 0 and c.is_connected(), (
            "a migrated device logs in with its old password"
        )
        c.disconnect()
        wrong = Broker(b.url, "old-dev", "guess")
        with pytest.raises(Exception, match="refused the credentials"):
            read_fleet(wrong)
    finally:
        services.down(["mosquitto"], progress=lambda _m: None)
        shutil.rmtree(lab_broker.broker_dir(), ignore_errors=True)


def _device_logs_in(port: int, device: str, password: str) -> bool:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    c.username_pw_set(device, password)
    c.connect("127.0.0.1", port)
    ok = c.loop(timeout=2.0) == 0 and c.is_connected()
    c.disconnect()
    return ok


def test_the_broker_runs_unprivileged_and_keeps_the_devices_of_a_root_broker(
    tmp_path: Path, monkeypatch
) -> None:
    """Mosquitto drops to the `mosquitto` user, its files in a folder that user owns (0700) outside root's cache;
    a broker that ran as root, its clients file and database in the cache, is moved there once: its devices keep
    their passwords."""
    monkeypatch.setenv("MLINFRA_CACHE", str(tmp_path / "cache"))
    port = free_port()
    monkeypatch.setenv("MLINFRA_MQTT_PORT", str(port))
    old = services.state_dir("mosquitto")
    admin = lab_broker.defaults.broker_credentials()
    clients = [
        lab_broker._client(admin["username"], lab_broker._hash(admin["password"]), device=False),
        lab_broker._client("root-era", lab_broker._hash("root-era-password")),
    ]
    (old / "dynamic-security.json").write_text(
        json.dumps({"clients": clients, "groups": [], "roles": [], "defaultACLAccess": {}})
    )
    (old / "mosquitto.conf").write_text("listener 1 127.0.0.1\nuser root\n")
    try:
        services.ensure(["mosquitto"], progress=lambda _m: None)
        pid = services._read_pid("mosquitto")
        uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[1])
        assert uid == pwd.getpwnam("mosquitto").pw_uid != 0, "the broker runs as the mosquitto user, not root"
        d = lab_broker.broker_dir()
        assert not str(d).startswith(str(Path.home())), d
        assert d.stat().st_uid == uid and d.stat().st_mode & 0o777 == 0o700
        assert not (old / "dynamic-security.json").exists() and not (old / "mosquitto.conf").exists()
        assert _device_logs_in(port, "root-era", "root-era-password"), "a device of the root broker logs in"
        assert not _device_logs_in(port, "root-era", "guess")
        # What the broker writes at run time (the plugin's clients file) it can write as its user.
        provision_devices(["after-drop"], Broker.local())
        time.sleep(0.5)
        assert "after-drop" in (d / "dynamic-security.json").read_text(), "the plugin saved its new client"
        log = (old / "mosquitto.log").read_text()
        assert "Error" not in log and "after-drop" in log, "the log is written as it happens (line-buffered)"
    finally:
        services.down(["mosquitto"], progress=lambda _m: None)
        shutil.rmtree(lab_broker.broker_dir(), ignore_errors=True)


def _connect(port: int, username: str, password: str, client_id: str) -> tuple[mqtt.Client, str]:
    """Connect with the loop running; returns the client and the CONNACK's reason ("Success" or why not)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(username, password)
    answered = threading.Event()
    reason: list[str] = []

    def on_connect(_c, _u, _f, rc, _p) -> None:  # type: ignore[no-untyped-def]
        reason.append(str(rc))
        answered.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert answered.wait(10), "no CONNACK"
    return c, reason[0]


def test_a_device_connects_only_as_itself_and_oversized_messages_are_refused(broker: Broker) -> None:
    """Client ids are bound to usernames (one device cannot take over another's session), and the broker refuses
    a packet over its size limit instead of buffering it."""
    port = int(broker.url.rsplit(":", 1)[1])
    creds = provision_devices(["bind-a", "bind-b"], broker)
    b, why = _connect(port, "bind-b", creds["bind-b"], "bind-b")
    assert why == "Success" and b.is_connected()
    thief, why = _connect(port, "bind-a", creds["bind-a"], "bind-b")  # bind-a's password, bind-b's session
    assert why != "Success", "a device took another device's client id"
    thief.loop_stop()
    time.sleep(0.5)
    assert b.is_connected(), "the real bind-b was knocked off"
    got: list[int] = []
    b.on_message = lambda _c, _u, m: got.append(len(m.payload))
    b.subscribe("mlinfra/edge/deployments/#", qos=1)
    admin, why = _connect(port, broker.username, broker.password, "size-check")
    assert why == "Success"
    admin.publish("mlinfra/edge/deployments/huge", b"x" * (2 << 20), qos=1)
    time.sleep(1.0)
    assert (2 << 20) not in got, "a 2 MiB message went through"
    for c in (admin, b):
        c.disconnect()
        c.loop_stop()
