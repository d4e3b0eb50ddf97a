"""The local Mosquitto's security: Mosquitto's dynamic security plugin, administered at run time over MQTT.

Devices and their passwords live in the plugin's own configuration (``<broker dir>/dynamic-security.json``,
written by the broker; see :func:`broker_dir`) and change with commands on the ``$CONTROL/dynamic-security/v1``
topic: creating or rotating a device touches that device only. Nothing rewrites a password file and nothing
reloads the broker — a reload (SIGHUP) re-checks every connected client, and provisioning used to send one each time
(issue 26).

What a client may publish or subscribe to is one static ACL file (:data:`ACL`, written at start, never changed):
devices read deployments and write only below ``mlinfra/edge/devices/<their username>/``; the admin reaches every
topic and the plugin's ``$CONTROL`` topics. Debian's Mosquitto 2.0.11 does not expand ``%u`` in the plugin's own
ACLs, and the same rule for every device needs no per-device state: so the file holds the patterns, and a new
device is one ``createClient`` command.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlinfra import defaults
from mlinfra.edge.fleet import Broker, validate_device_id
from mlinfra.errors import EdgeError
from mlinfra_edge.manifest import PREFIX

CONTROL = "$CONTROL/dynamic-security/v1"
MODE = "dynamic-security"
ITERATIONS = 101  # what mosquitto_ctrl and the plugin use for PBKDF2-SHA512
BATCH = 200  # commands per control message (one answer each)


def plugin_path() -> Path | None:
    """Debian's (or another distribution's) build of the plugin, if installed."""
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/lib64/mosquitto_dynamic_security.so",
    ):
        if Path(candidate).exists():
            return Path(candidate)
    return None


BROKER_USER = "mosquitto"  # Debian's package creates it
BROKER_ROOT = Path("/var/lib/mlinfra")


def broker_user() -> tuple[int, int] | None:
    """(uid, gid) the broker drops to when started by root; None when not root (it then runs as the caller)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam(BROKER_USER)
    except KeyError:
        raise EdgeError(
            f"user {BROKER_USER!r} does not exist: run `make setup` (Debian's mosquitto package creates it); the "
            "broker never runs as root"
        ) from None
    return pw.pw_uid, pw.pw_gid


def broker_dir() -> Path:
    """The broker's own files: configuration, ACL, the plugin's clients file and the persistence database.

    Started by root, Mosquitto drops to the ``mosquitto`` user, which cannot reach the cache under /root (0700): the
    folder is then ``/var/lib/mlinfra/mosquitto`` for the default cache (``mosquitto-<12 hex of the cache's path>``
    for another one, so a test's broker never shares it), owned by that user, mode 0700. Not root: the service's
    folder in the cache. Its PID file and log stay in the cache (written by mlinfra, not by the broker)."""
    if broker_user() is None:
        return defaults.state_dir("mosquitto")
    cache = defaults.cache_dir().resolve()
    default = (Path.home() / ".cache" / "mlinfra").resolve()
    name = (
        "mosquitto"
        if cache == default
        else f"mosquitto-{hashlib.sha256(str(cache).encode()).hexdigest()[:12]}"
    )
    return BROKER_ROOT / name


def prepare_broker_dir() -> Path:
    """Create the broker's folder (0700, owned by the broker's user, every file in it too); move the files of a
    broker that ran as root from the cache (its devices, passwords and sessions), once. Returns the folder."""
    d = broker_dir()
    old = defaults.state_dir("mosquitto")
    owner = broker_user()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if d != old:
        BROKER_ROOT.chmod(0o755)
        for name in ("dynamic-security.json", "data"):
            if (old / name).exists() and not (d / name).exists():
                shutil.move(str(old / name), str(d / name))
        for name in ("mosquitto.conf", "acl"):  # the root broker's, rewritten in the new folder
            (old / name).unlink(missing_ok=True)
    d.chmod(0o700)
    if owner is not None:
        for path in [d, *d.rglob("*")]:
            os.chown(path, *owner, follow_symlinks=False)
    return d


def config_path() -> Path:
    return broker_dir() / "dynamic-security.json"


def _hash(password: str) -> dict[str, Any]:
    """The plugin's stored form of a password: PBKDF2-SHA512 over a random salt, base64."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return {
        "salt": base64.b64encode(salt).decode(),
        "password": base64.b64encode(digest).decode(),
        "iterations": ITERATIONS,
    }


def acl_text(admin: str) -> str:
    """The broker's ACL: the same rule for every device, so it never changes (no reload)."""
    return (
        f"# Generated by mlinfra (mlinfra/lab/broker.py): devices publish only their own twin and status.\n"
        f"pattern read {PREFIX}/deployments/#\n"
        f"pattern readwrite {PREFIX}/devices/%u/#\n"
        f"\nuser {admin}\ntopic readwrite #\ntopic readwrite {CONTROL.rsplit('/', 1)[0]}/#\n"
    )


def _client(username: str, secret: dict[str, Any], device: bool = True) -> dict[str, Any]:
    """A client entry of the plugin's file; no roles: the ACL file decides what clients may do. A device may connect
    only with its own id as client id (so no one can take over its session); the admin is not bound."""
    return {"username": username, **({"clientid": username} if device else {}), **secret, "roles": []}


def migrate_password_file(path: Path) -> dict[str, dict[str, Any]]:
    """Device credentials from an earlier broker's password file (mosquitto_passwd's ``$7$`` form, PBKDF2-SHA512:
    the same hash the plugin stores), so devices keep their passwords across the switch."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        user, _, h = line.partition(":")
        parts = h.split("$")
        if len(parts) == 5 and parts[1] == "7":
            out[user] = {"iterations": int(parts[2]), "salt": parts[3], "password": parts[4]}
    return out


def write_config(admin: dict[str, str]) -> tuple[Path, Path]:
    """Before the broker starts: create the plugin's configuration (first start: the admin and the devices of an
    earlier password file), or make the admin's password the one in the cache (mode 0600); write the ACL file.
    Returns (plugin configuration, ACL file)."""
    path = config_path()
    if path.exists():
        cfg = json.loads(path.read_text())
    else:
        cfg = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [],
            "groups": [],
            "roles": [],
        }
        for user, secret in migrate_password_file(defaults.state_dir("mosquitto") / "passwd").items():
            if user != admin["username"]:
                cfg["clients"].append(_client(user, secret))
    cfg["clients"] = [c for c in cfg["clients"] if c.get("username") != admin["username"]]
    for c in cfg["clients"]:  # devices provisioned before client ids were bound
        c.setdefault("clientid", c.get("username"))
    cfg["clients"].insert(0, _client(admin["username"], _hash(admin["password"]), device=False))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=1)
    os.replace(tmp, path)
    acl = path.parent / "acl"
    acl.write_text(acl_text(admin["username"]))
    if (owner := broker_user()) is not None:
        for p in (path, acl):
            os.chown(p, *owner)
    return path, acl


class Control:
    """The plugin's control topic, as the admin: send commands in batches, wait for each batch's answers."""

    def __init__(self, broker: Broker | None = None, timeout_s: float = 30.0):
        self.broker = broker or Broker.local()
        self.timeout_s = timeout_s
        self._answers: dict[str, dict[str, Any]] = {}
        self._cv = threading.Condition()
        self._client = self.broker.client(f"mlinfra-dynsec-{uuid.uuid4().hex[:8]}")  # connected, loop running
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.subscribe(f"{CONTROL}/response", qos=1)
        if not subscribed.wait(10):
            self.close()
            raise EdgeError(
                f"broker {self.broker.url} did not confirm the subscription to {CONTROL}/response"
            )

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            answers = json.loads(msg.payload).get("responses") or []
        except ValueError:
            return
        with self._cv:
            for a in answers:
                key = a.get("correlationData")
                if key:
                    self._answers[key] = a
            self._cv.notify_all()

    def _answered(self, keys: list[str]) -> bool:
        return all(k in self._answers for k in keys)

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each command's answer ({"command", "error"?, "data"?}), in order."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(commands), BATCH):
            batch = [{**c, "correlationData": uuid.uuid4().hex} for c in commands[start : start + BATCH]]
            keys = [c["correlationData"] for c in batch]
            self._client.publish(CONTROL, json.dumps({"commands": batch}), qos=1)
            with self._cv:
                if not self._cv.wait_for(functools.partial(self._answered, keys), self.timeout_s):
                    raise EdgeError(
                        f"broker {self.broker.url} did not answer on {CONTROL} within {self.timeout_s:g} s: is it "
                        "running with the dynamic security plugin? Restart it: mlinfra services down mosquitto && "
                        "mlinfra services up mosquitto"
                    )
                out += [self._answers.pop(k) for k in keys]
        return out

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *_a: Any) -> None:
        self.close()


def _check(answers: list[dict[str, Any]], ok_errors: tuple[str, ...] = ()) -> None:
    bad = [a for a in answers if a.get("error") and a["error"] not in ok_errors]
    if bad:
        raise EdgeError(
            "the broker refused: " + "; ".join(f"{a.get('command')}: {a['error']}" for a in bad[:5])
        )


def provision_devices(device_ids: Iterable[str], broker: Broker | None = None) -> dict[str, str]:
    """Create devices, or rotate the passwords of existing ones, on the local broker: {device id: password}. Only a
    rotated device's own session is closed (it reconnects with its new password); no other device notices."""
    ids = list(dict.fromkeys(device_ids))
    admin = defaults.broker_credentials()["username"]
    for d in ids:
        validate_device_id(d)
        if d == admin:
            raise EdgeError(f"device id {d!r} is reserved for the broker's admin")
    passwords = {d: secrets.token_urlsafe(18) for d in ids}
    with Control(broker) as ctl:
        created = ctl.run(
            [{"command": "createClient", "username": d, "password": passwords[d], "clientid": d} for d in ids]
        )
        _check(created, ("Client already exists",))
        existing = [d for d, a in zip(ids, created, strict=True) if a.get("error") == "Client already exists"]
        if existing:
            _check(
                ctl.run(
                    [
                        cmd
                        for d in existing
                        for cmd in (
                            {"command": "setClientId", "username": d, "clientid": d},
                            {"command": "setClientPassword", "username": d, "password": passwords[d]},
                        )
                    ]
                )
            )
    return passwords


def security_status(broker: Broker | None = None) -> dict[str, Any]:
    """The local broker's security mode and how many devices it knows (the admin not counted)."""
    with Control(broker, timeout_s=5) as ctl:
        (answer,) = ctl.run([{"command": "listClients", "verbose": False, "count": -1}])
    _check([answer])
    clients = answer.get("data", {}).get("clients") or []
    admin = defaults.broker_credentials()["username"]
    return {"mode": MODE, "devices": sum(1 for c in clients if c != admin)}
