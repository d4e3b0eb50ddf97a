"""Fleet operations on the platform side: device credentials and ACLs on the broker, reading the fleet's twins and
statuses, and building deployment manifests with short-lived download URLs."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mlinfra import defaults
from mlinfra.errors import EdgeError
from mlinfra.registry import ModelRegistry
from mlinfra_edge.manifest import PREFIX, deployment_topic

DEVICE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def validate_device_id(device_id: str) -> str:
    if not device_id or len(device_id) > 128 or set(device_id) - DEVICE_ID_CHARS or device_id[0] in "-_.":
        raise EdgeError(
            f"device id {device_id!r}: use 1..128 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit"
        )
    return device_id


# -- talking to the broker as the admin -------------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    username: str
    password: str
    ca_file: str | None = None  # for mqtts:// with a private CA

    @staticmethod
    def local() -> Broker:
        creds = defaults.broker_credentials()
        return Broker(defaults.mqtt_url(), creds["username"], creds["password"])

    def client(self, client_id: str) -> mqtt.Client:
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise EdgeError(f"broker URL {self.url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.username, self.password)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=self.ca_file)
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        c.on_connect = on_connect
        try:
            c.connect(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), keepalive=30)
        except OSError as e:
            raise EdgeError(f"broker {self.url} is unreachable: {e.strerror or e}") from None
        c.loop_start()
        if not connected.wait(10):
            c.loop_stop()
            raise EdgeError(f"broker {self.url} did not answer the MQTT handshake within 10 s")
        if refused:
            c.loop_stop()
            raise EdgeError(
                f"broker {self.url} refused the credentials of user {self.username!r}: {refused[0]}"
            )
        return c


@dataclass
class Fleet:
    twins: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=dict
    )  # device -> deployment -> status


def read_fleet(broker: Broker, quiet_s: float = 0.4, max_s: float = 5.0) -> Fleet:
    """The retained twins and statuses of every device (waits until the broker has been quiet for QUIET_S)."""
    fleet = Fleet()
    last = [time.monotonic()]
    c = broker.client(f"mlinfra-fleet-{secrets.token_hex(4)}")

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        last[0] = time.monotonic()
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if len(parts) == 5 and parts[4] == "twin" and isinstance(body, dict):
            fleet.twins[parts[3]] = body
        elif len(parts) == 6 and parts[4] == "status":
            if isinstance(body, dict):
                fleet.statuses.setdefault(parts[3], {})[parts[5]] = body
            else:
                fleet.statuses.get(parts[3], {}).pop(parts[5], None)

    c.on_message = on_message
    c.subscribe(f"{PREFIX}/devices/#", qos=1)
    start = time.monotonic()
    while time.monotonic() - last[0] < quiet_s and time.monotonic() - start < max_s:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return fleet


def read_retained(broker: Broker, topic: str, wait_s: float = 1.0) -> bytes | None:
    """The message retained on TOPIC (None if there is none): the broker sends it right after the SUBACK."""
    got: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()
    c = broker.client(f"mlinfra-read-{secrets.token_hex(4)}")

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.topic == topic:
            got.append(bytes(msg.payload))
            arrived.set()

    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    try:
        c.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise EdgeError(f"broker {broker.url} did not acknowledge the subscription to {topic}")
        arrived.wait(wait_s)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[-1] if got and got[-1] else None


def publish(broker: Broker, topic: str, payload: bytes, retain: bool = True) -> None:
    c = broker.client(f"mlinfra-pub-{secrets.token_hex(4)}")
    try:
        info = c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(15)
        if not info.is_published():
            raise EdgeError(f"broker {broker.url} did not acknowledge the publish to {topic}")
    finally:
        c.disconnect()
        c.loop_stop()


# -- manifests --------------------------------------------------------------------------------------------------


def artifact_urls(model: dict[str, Any], ttl_s: int) -> dict[str, Any]:
    """A model version's files with download URLs: a read-only SAS URL valid for TTL_S on Azure registries, a file
    URL on folder registries (devices on the same machine or a shared mount)."""
    reg = ModelRegistry(model["registry"], model.get("credential") or None)
    mv = reg.resolve(f"{model['name']}:{int(model['version'])}")
    if mv.sha256 != model["sha256"]:
        raise EdgeError(
            f"model {mv.name}:{mv.version} has sha256 {mv.sha256[:12]}… in {reg.uri}, expected "
            f"{model['sha256'][:12]}…"
        )
    files = []
    for f in mv.files:
        files.append(
            {
                "path": f["path"],
                "sha256": f["sha256"],
                "size": int(f["size"]),
                "url": _url(reg, f"blobs/sha256/{f['sha256']}", ttl_s),
            }
        )
    from mlinfra.registry.signing import signatures

    artifact = {
        "name": mv.name,
        "version": mv.version,
        "sha256": mv.sha256,
        "files": files,
        "is_dir": mv.is_dir,
    }
    sigs = signatures(reg, mv.name, mv.version)  # devices with a trust folder check them before serving
    if sigs:
        artifact["signatures"] = {kid: bundle.decode() for kid, bundle in sorted(sigs.items())}
    return artifact


def _url(reg: ModelRegistry, key: str, ttl_s: int) -> str:
    from mlinfra.registry.store import AzureBlobStore, LocalStore

    store = reg.store
    if isinstance(store, LocalStore):
        return "file://" + urllib.parse.quote(str(store.root / key))
    if isinstance(store, AzureBlobStore):
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        key_value = store.credential or ""
        if "AccountKey=" in key_value:
            key_value = dict(p.split("=", 1) for p in key_value.split(";") if "=" in p)["AccountKey"]
        blob = store._key(key)
        sas = generate_blob_sas(
            store.account,
            store.container,
            blob,
            account_key=key_value,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=ttl_s),
        )
        return f"{store.endpoint}/{store.container}/{urllib.parse.quote(blob)}?{sas}"
    raise EdgeError(f"registry {reg.uri}: cannot make download URLs for it")


def manifest(name: str, condition: str, priority: int, layered: bool, models: list[dict[str, Any]]) -> bytes:
    """The manifest JSON; `generation` hashes everything but the (expiring) URLs."""
    stable = {
        "name": name,
        "condition": condition,
        "priority": priority,
        "layered": layered,
        "models": [
            {k: v for k, v in m.items() if k != "files"}
            | {"files": [{k: v for k, v in f.items() if k != "url"} for f in m["files"]]}
            for m in models
        ],
    }
    generation = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
    return json.dumps(
        {
            "name": name,
            "generation": generation,
            "priority": priority,
            "layered": layered,
            "target_condition": condition,
            "models": models,
        },
        sort_keys=True,
    ).encode()


def withdraw(broker: Broker, name: str) -> None:
    publish(broker, deployment_topic(name), b"", retain=True)
