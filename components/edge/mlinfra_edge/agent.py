"""The edge agent: one device's connection to the fleet.

It connects to the broker with its own credentials (MQTT v5, persistent session: QoS 1 messages sent while it is
offline are delivered when it is back), publishes its twin (retained), subscribes to deployments, resolves which
apply to it (target condition, priority, layering), downloads each model (signed URL or file URL), verifies every
file's sha256, loads it and swaps it in atomically — the old model keeps serving until the new one is loaded — and
reports `applied`, then `success` or `failure` with a reason, per deployment. A failed update keeps the last good
model. Malformed messages are logged and ignored. paho reconnects after broker restarts; retained manifests make the
device converge to the latest deployments when it is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mlinfra_edge.manifest import (
    PREFIX,
    Artifact,
    Deployment,
    ManifestError,
    parse_manifest,
    resolve,
    status_topic,
    twin_topic,
)

log = logging.getLogger("mlinfra.edge.fleet")


class DownloadError(RuntimeError):
    pass


@dataclass
class AgentConfig:
    device_id: str
    broker: str  # mqtt://host:port or mqtts://host:port
    password: str
    tags: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=lambda: {"onnxruntime": True})
    state_dir: Path = Path("/var/lib/mlinfra-edge")
    serve_port: int | None = None  # None: verify and record models without serving (lightweight/simulated)
    ca_file: str | None = None
    session_expiry_s: int = 7 * 24 * 3600
    trust: Path | None = None
    """A trust folder (keys/*.pem: public keys or root certificates the device trusts; see
    mlinfra_scoring.provenance): every model must match a signature bundle its deployment carries, by one of them,
    before it is swapped in — else the update fails and the last good model keeps serving. None: not checked."""


def _broker(url: str) -> tuple[str, int, bool]:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ValueError(f"broker URL {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    return u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), u.scheme == "mqtts"


class EdgeAgent:
    def __init__(self, config: AgentConfig, on_event: Callable[[str, dict[str, Any]], None] | None = None):
        self.config = config
        self.deployments: dict[str, Deployment] = {}
        self.current: dict[str, Artifact] = {}  # model name -> artifact being served (last good)
        self.statuses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._on_event = on_event or (lambda _k, _d: None)
        self.connected = threading.Event()
        self.server: Any = None
        self.serve_port: int | None = None
        self._stop_server: Callable[[], None] | None = None
        host, port, tls = _broker(config.broker)
        self._host, self._port = host, port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=config.device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(config.device_id, config.password)
        if tls:
            self.client.tls_set(ca_certs=config.ca_file)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # If the agent dies, the broker tells the fleet (retained): the twin says "offline".
        self.client.will_set(
            twin_topic(config.device_id), json.dumps(self._twin("offline")), qos=1, retain=True
        )
        self._worker = threading.Thread(target=self._run, name=f"agent-{config.device_id}", daemon=True)
        self._load_state()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.serve_port is not None:
            from mlinfra_scoring.server import ScoringServer, ServerConfig

            self.server = ScoringServer(
                ServerConfig(models=[], port=self.config.serve_port, access_log=False)
            )
            self.serve_port, self._stop_server = self.server.start_in_thread()
            self._serve_last_good()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self.client.connect_async(self._host, self._port, keepalive=15, clean_start=False, properties=props)
        self.client.loop_start()
        self._worker.start()

    def _serve_last_good(self) -> None:
        """Serve the last good models right away — with a trust folder, only those that still verify (a device may
        have been given its trust after they were downloaded, or its disk changed): the others are dropped, and the
        next reconcile fetches what the deployments name."""
        for name, art in list(self.current.items()):
            try:
                if self.config.trust is not None:
                    self._verify(art, self._model_path(art))
                self.server.swap_model(name, str(art.version), str(self._model_path(art)))
            except Exception as e:
                log.warning("not serving last good %s: %s", art.key, e)
                if self.config.trust is not None:
                    self.current.pop(name)
                    self._save_state()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(Exception):
            self.client.publish(
                twin_topic(self.config.device_id), json.dumps(self._twin("offline")), qos=1, retain=True
            ).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self._worker.join(10)
        if self._stop_server:
            self._stop_server()

    # -- MQTT callbacks -------------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("%s: broker refused the connection: %s", self.config.device_id, reason)
            self._on_event("connect_failed", {"reason": str(reason)})
            return
        client.subscribe(f"{PREFIX}/deployments/+", qos=1)
        self._publish_twin("online")
        self.connected.set()
        self._on_event("connected", {})

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected.clear()
        self._on_event("disconnected", {})

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread: nothing may escape it (an exception there would stop the device's MQTT
        loop for good), so anything a message does wrong is logged and the message ignored."""
        try:
            self._message(msg)
        except Exception as e:
            log.warning(
                "%s: ignored a message on %s: %s: %s", self.config.device_id, msg.topic, type(e).__name__, e
            )
            with contextlib.suppress(Exception):
                self._on_event("malformed", {"topic": msg.topic, "error": f"{type(e).__name__}: {e}"[:500]})

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        name = msg.topic.rsplit("/", 1)[-1]
        if not msg.payload:  # withdrawn
            with self._lock:
                self.deployments.pop(name, None)
                self.statuses.pop(name, None)
            self._wake.set()
            return
        try:
            dep = parse_manifest(bytes(msg.payload))
            if dep.name != name:
                raise ManifestError(f"manifest name {dep.name!r} does not match its topic {msg.topic}")
        except ManifestError as e:
            log.warning("%s: ignored a malformed deployment on %s: %s", self.config.device_id, msg.topic, e)
            self._on_event("malformed", {"topic": msg.topic, "error": str(e)})
            return
        with self._lock:
            self.deployments[name] = dep
        self._wake.set()

    # -- reconciling ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                self._wake.clear()
                try:
                    self.reconcile()
                except Exception as e:
                    log.exception("%s: reconcile failed: %s", self.config.device_id, e)

    def _twin(self, status: str) -> dict[str, Any]:
        return {
            "device_id": self.config.device_id,
            "tags": self.config.tags,
            "capabilities": self.config.capabilities,
            "models": {n: {"version": a.version, "sha256": a.sha256} for n, a in self.current.items()},
            "status": status,
            "ts": time.time(),
        }

    def reconcile(self) -> None:
        with self._lock:
            deployments = list(self.deployments.values())
        res = resolve(deployments, self._twin("online"))
        failed: dict[str, str] = {}
        for name, (art, dep_name) in sorted(res.models.items()):
            cur = self.current.get(name)
            if cur is not None and cur.key == art.key:
                continue
            self._status(dep_name, res, "applied", art=art)
            try:
                path = self._fetch(art)
                if self.server is not None:
                    self.server.swap_model(name, str(art.version), str(path))
                self.current[name] = art
                self._save_state()
            except Exception as e:
                failed[dep_name] = f"{art.name}:{art.version}: {e}"
                log.warning(
                    "%s: update to %s failed, keeping %s: %s",
                    self.config.device_id,
                    art.key,
                    cur.key if cur else "nothing",
                    e,
                )
        # Models no applied deployment provides any more: stop serving them.
        for name in [n for n in self.current if n not in res.models]:
            self.current.pop(name)
            if self.server is not None:
                self.server.remove_model(name)
            self._save_state()
        for dep in res.applied:
            provided = [a for a in dep.models if res.models[a.name][1] == dep.name]
            served = all(
                self.current.get(a.name) is not None and self.current[a.name].key == a.key for a in provided
            )
            if dep.name in failed:
                self._status(dep.name, res, "failure", reason=failed[dep.name])
            elif served:
                self._status(dep.name, res, "success")
        for dep in res.superseded:
            self._status(dep.name, res, "superseded", reason="a higher-priority deployment applies")
        targeted = {d.name for d in res.targeting}
        with self._lock:
            gone = [d for d in self.statuses if d not in targeted]
        for d in gone:  # no longer targeted (tags changed or deployment withdrawn): clear the retained status
            self.client.publish(status_topic(self.config.device_id, d), b"", qos=1, retain=True)
            with self._lock:
                self.statuses.pop(d, None)
        self._publish_twin("online")

    def _status(
        self, deployment: str, res: Any, state: str, reason: str = "", art: Artifact | None = None
    ) -> None:
        dep = next((d for d in res.targeting if d.name == deployment), None)
        body = {
            "device_id": self.config.device_id,
            "deployment": deployment,
            "generation": dep.generation if dep else "",
            "state": state,
            "reason": reason,
            "ts": time.time(),
            "models": {n: a.version for n, a in self.current.items()},
        }
        with self._lock:
            prev = self.statuses.get(deployment)
            if prev and (prev["state"], prev["generation"], prev["reason"]) == (
                state,
                body["generation"],
                reason,
            ):
                return
            self.statuses[deployment] = body
        self.client.publish(
            status_topic(self.config.device_id, deployment), json.dumps(body), qos=1, retain=True
        )
        self._on_event("status", body)

    def _publish_twin(self, status: str) -> None:
        self.client.publish(
            twin_topic(self.config.device_id), json.dumps(self._twin(status)), qos=1, retain=True
        )

    # -- artifacts ------------------------------------------------------------------------------------------

    def _model_dir(self, art: Artifact) -> Path:
        return self.config.state_dir / "models" / art.name / f"{art.version}-{art.sha256[:16]}"

    def _model_path(self, art: Artifact) -> Path:
        d = self._model_dir(art)
        return d if art.is_dir else d / art.files[0]["path"]

    def _fetch(self, art: Artifact) -> Path:
        final = self._model_dir(art)
        if (final / ".complete").exists():
            if (
                self.config.trust is not None
            ):  # downloaded before this device trusted keys, maybe: check again
                self._verify(art, self._model_path(art))
            return self._model_path(art)
        tmp = final.with_name(final.name + f".part-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for f in art.files:
                _download(f["url"], tmp / f["path"], f["sha256"], int(f["size"]))
            if self.config.trust is not None:
                self._verify(art, tmp if art.is_dir else tmp / art.files[0]["path"])
            (tmp / ".complete").write_text(art.key)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._model_path(art)

    def _verify(self, art: Artifact, path: Path) -> None:
        """The downloaded files must match one of the artifact's signatures by a key this device trusts."""
        from mlinfra_scoring.provenance import TrustStore

        assert self.config.trust is not None
        signer = TrustStore.from_dir(self.config.trust).verify_model(
            art.name,
            str(art.version),
            path,
            [(k, b.encode()) for k, b in art.signatures],
            ignore=(".complete",),
        )
        self._on_event("verified", {"model": art.key, "signer": signer})

    def _save_state(self) -> None:
        path = self.config.state_dir / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    n: {
                        "name": a.name,
                        "version": a.version,
                        "sha256": a.sha256,
                        "files": list(a.files),
                        "is_dir": a.is_dir,
                        "signatures": dict(a.signatures),  # checked again when it serves after a restart
                    }
                    for n, a in self.current.items()
                }
            )
        )
        os.replace(tmp, path)

    def _load_state(self) -> None:
        try:
            data = json.loads((self.config.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return
        for n, a in data.items():
            art = Artifact(
                a["name"],
                int(a["version"]),
                a["sha256"],
                tuple(a["files"]),
                bool(a.get("is_dir")),
                tuple(sorted((a.get("signatures") or {}).items())),
            )
            if (self._model_dir(art) / ".complete").exists():
                self.current[n] = art


def _download(url: str, dest: Path, sha256: str, size: int) -> None:
    """Stream URL to DEST, refusing more bytes than announced and content whose sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    u = urllib.parse.urlsplit(url)
    h = hashlib.sha256()
    n = 0
    try:
        if u.scheme == "file":
            src: Any = open(urllib.parse.unquote(u.path), "rb")  # noqa: SIM115 - closed below
        elif u.scheme in ("http", "https"):
            src = urllib.request.urlopen(url, timeout=30)
        else:
            raise DownloadError(f"unsupported URL scheme {u.scheme!r}")
    except OSError as e:
        raise DownloadError(f"download of {dest.name} failed: {e}") from None
    with src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > size:
                raise DownloadError(f"{dest.name}: more than the announced {size} bytes")
            h.update(chunk)
            out.write(chunk)
    if n != size or h.hexdigest() != sha256:
        raise DownloadError(
            f"{dest.name}: sha256 mismatch (expected {sha256[:12]}…, got {h.hexdigest()[:12]}…, "
            f"{n} of {size} bytes): refusing the download"
        )
