"""The real local services mlinfra's tests, examples and `make demo` run against, on loopback only.

=============  ==========================================  ===========================  ====================
service        what                                        address (default)            port variable
=============  ==========================================  ===========================  ====================
docker         Debian's dockerd (started here: no systemd)  unix:///var/run/docker.sock  —
registry       Debian's docker-registry (OCI distribution)  http://127.0.0.1:5000        MLINFRA_REGISTRY_PORT
azurite        Azure Blob emulator, --disableTelemetry      http://127.0.0.1:10000       MLINFRA_AZURITE_PORT
mosquitto      MQTT broker, dynamic security plugin         mqtt://127.0.0.1:1883        MLINFRA_MQTT_PORT
python-base    scoring images' base (debootstrap), pushed   registry/mlinfra/python-base —
router-base    endpoints' router: Debian nginx, pushed      registry/mlinfra/router      —
kubernetes     one real node (kubelet, containerd), kwok's  kubeconfig in the state dir  —
               control plane: :mod:`mlinfra.lab.node`
buildkit       BuildKit's buildkitd (engine/buildkit), the  unix socket in the state    —
               buildx builder ``mlinfra`` for docker-build  dir
=============  ==========================================  ===========================  ====================

A service that already answers is reused; one that does not is started detached, its PID written to
``<cache>/services/<name>/pid`` and its log to ``.../<name>.log``. :func:`down` stops only processes whose PID file
this module wrote. Installs come from ``scripts/install-system.sh`` (``make setup``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.defaults import (  # noqa: F401  (re-exported: the lab's callers read addresses from here too)
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    BASE_REPO,
    ROUTER_REPO,
    azurite_blob_url,
    azurite_connection_string,
    azurite_port,
    base_image_ref,
    buildx_builder,
    buildx_config_dir,
    docker_cli,
    mqtt_port,
    mqtt_url,
    registry_host,
    registry_port,
    registry_url,
    router_image_ref,
    state_dir,
)
from mlinfra.defaults import broker_credentials as mosquitto_credentials
from mlinfra.engine import cache_dir, pinned_versions
from mlinfra.errors import ServiceError


def port_is_bound(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


# --------------------------------------------------------------------------------------------------------------
# PID files: we only ever stop what we started.


def _pid_file(name: str) -> Path:
    return state_dir(name) / "pid"


def _read_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    log = state_dir(name) / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=state_dir(name),
        )
    _pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait(name: str, ready: Callable[[], bool], pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not _alive(pid):
            raise ServiceError(
                f"{name} exited during start-up; its log ({state_dir(name) / (name + '.log')}) ends with:\n"
                + _tail(state_dir(name) / f"{name}.log")
            )
        time.sleep(0.1)
    raise ServiceError(
        f"{name} did not become ready within {timeout:.0f} s; log: {state_dir(name) / (name + '.log')}\n"
        + _tail(state_dir(name) / f"{name}.log")
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(name: str, timeout: float = 15.0) -> bool:
    pid = _read_pid(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _pid_file(name).unlink(missing_ok=True)
    return True


def _taken(port: int, name: str, var: str) -> ServiceError:
    return ServiceError(
        f"port {port} for {name} is taken by another process that is not {name}: stop that process, "
        f"or choose another port with {var}=<port>"
    )


# --------------------------------------------------------------------------------------------------------------
# The services.


@dataclass
class Service:
    name: str
    description: str
    check: Callable[[], bool]
    start: Callable[[], None]
    address: Callable[[], str]
    fix: str
    depends: list[str] = field(default_factory=list)
    stop: Callable[[], bool] | None = None
    """How to stop it when it is more than the one process in its PID file."""
    after: Callable[[], None] | None = None
    """What must hold beside the process whenever it is up (run by ensure, started or found running)."""


def docker_ok() -> bool:
    if not Path("/var/run/docker.sock").exists():
        return False
    try:
        return (
            subprocess.run(
                [docker_cli(), "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_docker() -> None:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise ServiceError("dockerd is not installed: run `make setup` (installs Debian's docker.io)")
    if os.geteuid() != 0:
        raise ServiceError("dockerd must be started as root here (no systemd): run `sudo make services`")
    pid = _spawn(
        "docker",
        [
            dockerd,
            "--host",
            "unix:///var/run/docker.sock",
            "--pidfile",
            str(state_dir("docker") / "dockerd.pid"),
        ],
    )
    _wait("docker", docker_ok, pid, 60)


def registry_ok() -> bool:
    return _http_status(f"{registry_url()}/v2/") == 200


def _start_registry() -> None:
    port = registry_port()
    if port_is_bound(port):
        raise _taken(port, "the OCI registry", "MLINFRA_REGISTRY_PORT")
    binary = "/usr/bin/docker-registry"
    if not Path(binary).exists():
        raise ServiceError(
            "docker-registry is not installed: run `make setup` (installs Debian's docker-registry)"
        )
    d = state_dir("registry")
    (d / "data").mkdir(exist_ok=True)
    config = d / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {d / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    pid = _spawn("registry", [binary, "serve", str(config)])
    _wait("registry", registry_ok, pid, 30)


def azurite_ok() -> bool:
    # Any HTTP answer from the blob endpoint means Azurite is up (unauthenticated requests get 403).
    status = _http_status(f"{azurite_blob_url()}?comp=list")
    return status is not None and status < 500


FORWARD_CHAIN = "MLINFRA-LOOPBACK"


BRIDGES = ("docker0", "mlinfra0")
"""Docker's default bridge and the local Kubernetes node's pod bridge (mlinfra.lab.node.BRIDGE)."""


OTLP_PORT = 4318
"""OTLP/HTTP's standard port: an OpenTelemetry Collector (or a test's receiver) on this machine's loopback, which
scoring containers reach like Azurite (a DataCollection's `otlp_endpoint` on 127.0.0.1 is rewritten for them)."""


def forward_loopback_to_containers() -> None:
    """Containers on Docker's default bridge and pods on the local cluster reach Azurite and an OTLP receiver on
    port 4318 (bound to 127.0.0.1 only) at any address of this machine — the bridge's gateway, the node's address —
    on their ports: a DNAT in chain
    MLINFRA-LOOPBACK (nat PREROUTING) for packets that arrive *from those bridges* to a local address and that
    port, to 127.0.0.1, with route_localnet on those bridges only (never on `all`: a packet from another interface
    to 127.0.0.1 stays a martian). Nothing outside this machine reaches them and nothing but those two ports is
    forwarded: a data-collecting replica needs no host network (it used to run on it, seeing every loopback
    service). Idempotent; bridges that do not exist yet are skipped (Docker and the cluster call it again when
    they start); a no-op without root."""
    if os.geteuid() != 0:
        return
    bridges = [b for b in BRIDGES if Path(f"/sys/class/net/{b}").exists()]
    ports = [str(azurite_port()), str(OTLP_PORT)]

    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise ServiceError(f"iptables -t nat {' '.join(args)}: {r.stderr.strip()}")
        return r

    ipt("-N", FORWARD_CHAIN, check=False)
    ipt("-F", FORWARD_CHAIN)
    for b in bridges:
        Path(f"/proc/sys/net/ipv4/conf/{b}/route_localnet").write_text("1\n")
        for port in ports:
            ipt(
                "-A", FORWARD_CHAIN, "-i", b, "-m", "addrtype", "--dst-type", "LOCAL", "-p", "tcp", "--dport", port,
                "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}",
            )  # fmt: skip
    if ipt("-C", "PREROUTING", "-j", FORWARD_CHAIN, check=False).returncode != 0:
        ipt("-I", "PREROUTING", "1", "-j", FORWARD_CHAIN)


def _start_azurite() -> None:
    port = azurite_port()
    if port_is_bound(port):
        raise _taken(port, "Azurite", "MLINFRA_AZURITE_PORT")
    version = pinned_versions().get("AZURITE_VERSION", "")
    binary = cache_dir() / f"azurite-{version}" / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise ServiceError(f"Azurite {version} is not installed at {binary}: run `make setup`")
    d = state_dir("azurite")
    (d / "data").mkdir(exist_ok=True)
    argv = [
        str(binary),
        "--silent",
        "--location",
        str(d / "data"),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",  # required: without it Azurite tries to reach the internet
    ]
    pid = _spawn("azurite", argv)
    _wait("azurite", azurite_ok, pid, 30)


def _mosquitto_outdated() -> bool:
    """A broker this module started earlier with an older configuration (a password file, before the dynamic security
    plugin; no packet size limit): restarted, devices keep their passwords and sessions."""
    from mlinfra.lab import broker

    if _read_pid("mosquitto") is None:
        return False
    conf = broker.broker_dir() / "mosquitto.conf"
    if not conf.exists():  # ours, but from before the broker left the cache (it ran as root)
        return True
    text = conf.read_text()
    return "dynamic_security" not in text or "max_packet_size" not in text or "user root" in text


def mosquitto_ok() -> bool:
    port = mqtt_port()
    if not port_is_bound(port) or _mosquitto_outdated():
        return False
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        return True
    creds = mosquitto_credentials()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"mlinfra-check-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(creds["username"], creds["password"])
    try:
        client.connect("127.0.0.1", port, keepalive=5)
        rc = client.loop(timeout=2.0)
        ok = rc == 0 and client.is_connected()
        client.disconnect()
        return ok
    except OSError:
        return False


def _start_mosquitto() -> None:
    """Mosquitto with the dynamic security plugin: devices, passwords and ACLs change at run time through
    mlinfra.lab.broker, never by rewriting files and reloading (see there). Persistent sessions survive restarts."""
    from mlinfra.lab import broker

    if _mosquitto_outdated():  # ours, from before the plugin: restart it (devices keep their passwords)
        _stop("mosquitto")
    port = mqtt_port()
    if port_is_bound(port):
        raise _taken(port, "Mosquitto", "MLINFRA_MQTT_PORT")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise ServiceError("mosquitto is not installed: run `make setup` (installs Debian's mosquitto)")
    plugin = broker.plugin_path()
    if plugin is None:
        raise ServiceError(
            "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is not installed: run `make "
            "setup` (Debian's mosquitto ships it)"
        )
    d = broker.prepare_broker_dir()
    dynsec, acl = broker.write_config(mosquitto_credentials())
    owner = broker.broker_user()
    (d / "data").mkdir(exist_ok=True, mode=0o700)
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        # A message larger than any manifest (256 KiB) or control batch mlinfra sends is refused, never buffered.
        "max_packet_size 1048576\n"
        f"plugin {plugin}\n"
        f"plugin_opt_config_file {dynsec}\n"
        f"acl_file {acl}\n"
        "persistence true\n"
        f"persistence_location {d / 'data'}/\n"
        # Started by root, it drops to the `mosquitto` user once its listener is open (see broker.broker_dir).
        + (f"user {broker.BROKER_USER}\n" if owner is not None else "")
        + "log_dest stdout\n"
    )
    if owner is not None:
        for p in (d / "data", conf):
            os.chown(p, *owner)
    # Line-buffered: Mosquitto writes its stdout log with stdio and never flushes it, so without stdbuf the log (which
    # tests and `services status` read) would reach the file only at exit. stdbuf execs: the PID is Mosquitto's.
    stdbuf = shutil.which("stdbuf")
    pid = _spawn("mosquitto", [*([stdbuf, "-oL"] if stdbuf else []), binary, "-c", str(conf)])
    _wait("mosquitto", mosquitto_ok, pid, 20)


# The base image --------------------------------------------------------------------------------------------

# What each debootstrapped base holds: scoring images start from "python"; endpoints' router from "router" (nginx).
BASE_PACKAGES = {"python": "python3,ca-certificates", "router": "nginx,ca-certificates"}


def base_image_ok() -> bool:
    from mlinfra.images.oci import RegistryClient

    suite = pinned_versions().get("BASE_SUITE", "bookworm")
    try:
        return RegistryClient(registry_url()).manifest_digest(BASE_REPO, suite) is not None
    except OSError:
        return False


def _debian_mirror() -> str:
    for src in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        with contextlib.suppress(OSError):
            for line in src.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
                if line.startswith("deb ") and "security" not in line:
                    return line.split()[1]
    return "http://deb.debian.org/debian"


def build_base_layer(progress: Callable[[str], None] = print, kind: str = "python") -> Path:
    """debootstrap a minimal Debian with BASE_PACKAGES[kind] once per machine; returns the cached layer
    (tar.gz)."""
    suite = pinned_versions().get("BASE_SUITE", "bookworm")
    d = cache_dir() / "base"
    d.mkdir(parents=True, exist_ok=True)
    layer = d / f"{kind}-{suite}.tar.gz"
    if layer.exists():
        return layer
    if shutil.which("debootstrap") is None:
        raise ServiceError("debootstrap is not installed: run `make setup`")
    rootfs = d / f"rootfs-{kind}-{suite}"
    _unmount_under(rootfs)
    shutil.rmtree(rootfs, ignore_errors=True)
    progress(f"{kind}-base: debootstrap {suite} with {BASE_PACKAGES[kind]} (≈1 min, once per machine)")
    log = d / f"debootstrap-{kind}.log"
    with open(log, "wb") as out:
        rc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES[kind]}",
                suite,
                str(rootfs),
                _debian_mirror(),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0:
        raise ServiceError(f"debootstrap failed (exit {rc}); log: {log}\n{_tail(log)}")
    for junk in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/log",
    ]:
        target = rootfs / junk
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True, exist_ok=True)
    # A non-root user for scoring servers (uid 10001), as images run non-root.
    with open(rootfs / "etc/passwd", "a") as f:
        f.write("scorer:x:10001:10001:mlinfra scoring server:/home/scorer:/usr/sbin/nologin\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write("scorer:x:10001:\n")
    (rootfs / "home/scorer").mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / "home/scorer", 10001, 10001)
    _unmount_under(rootfs)  # debootstrap may leave proc/sys mounted after a failure
    if kind == "router":  # the image's nginx.conf comes from the endpoint; drop the packaged site
        for junk in ["etc/nginx/sites-enabled/default", "var/www/html/index.nginx-debian.html"]:
            (rootfs / junk).unlink(missing_ok=True)
    progress(f"{kind}-base: packing the layer")
    tmp = layer.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        tar = subprocess.Popen(
            [
                "tar",
                "--sort=name",
                "--numeric-owner",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./dev/*",
                "-C",
                str(rootfs),
                "-c",
                ".",
            ],
            stdout=subprocess.PIPE,
        )
        assert tar.stdout is not None
        for chunk in iter(lambda: tar.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            gz.write(chunk)
        if tar.wait() != 0:
            raise ServiceError(f"packing {rootfs} failed")
    tmp.rename(layer)
    shutil.rmtree(rootfs, ignore_errors=True)
    return layer


def _unmount_under(root: Path) -> None:
    """Unmount anything mounted below ROOT (deepest first), so it can be packed or removed safely."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _diff_id(layer: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(layer, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _start_base_image(kind: str = "python") -> None:
    from mlinfra.images.oci import RegistryClient, image_config, push_image

    layer = build_base_layer(kind=kind)
    suite = pinned_versions().get("BASE_SUITE", "bookworm")
    meta_path = layer.with_suffix(".diffid")
    if not meta_path.exists():
        meta_path.write_text(_diff_id(layer))
    if kind == "router":
        cmd = ["nginx", "-g", "daemon off;"]
        title = "mlinfra endpoint router (nginx)"
    else:
        cmd, title = ["python3"], "mlinfra python base"
    config = image_config(
        diff_ids=[meta_path.read_text().strip()],
        env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        cmd=cmd,
        labels={"org.opencontainers.image.title": title, "mlinfra.base.suite": suite},
    )
    repo = ROUTER_REPO if kind == "router" else BASE_REPO
    push_image(RegistryClient(registry_url()), repo, suite, [layer], config)


def router_image_ok() -> bool:
    from mlinfra.images.oci import RegistryClient

    try:
        return (
            RegistryClient(registry_url()).manifest_digest(
                ROUTER_REPO, pinned_versions().get("BASE_SUITE", "bookworm")
            )
            is not None
        )
    except OSError:
        return False


def buildkit_socket() -> Path:
    return state_dir("buildkit") / "buildkitd.sock"


def buildkitd_binary() -> Path:
    version = pinned_versions().get("BUILDKIT_VERSION", "")
    return cache_dir() / "engine" / f"buildkit-{version}" / "buildkitd"


def _builder_instance() -> dict[str, object]:
    """The buildx builder instance (buildx's store format) that names our buildkitd: what
    `docker buildx create --name mlinfra --driver remote unix://SOCKET` would write."""
    return {
        "Name": buildx_builder(),
        "Driver": "remote",
        "Nodes": [
            {
                "Name": f"{buildx_builder()}0",
                "Endpoint": f"unix://{buildkit_socket()}",
                "Platforms": None,
                "DriverOpts": {},
                "Flags": None,
                "Files": None,
            }
        ],
        "Dynamic": False,
    }


def _register_builder() -> None:
    """Register (or correct) the buildx builder instance docker-build resolves by name."""
    import json

    path = buildx_config_dir() / "instances" / buildx_builder()
    want = _builder_instance()
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == want:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(path)


def buildkit_ok() -> bool:
    pid = _read_pid("buildkit")
    if pid is None or not buildkit_socket().exists():
        return False
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(buildkit_socket()))
        except OSError:
            return False
    return True


def _start_buildkit() -> None:
    binary = buildkitd_binary()
    if not binary.exists():
        raise ServiceError(
            f"buildkitd is not built at {binary}: run `make setup` (scripts/engine.sh builds it)"
        )
    if shutil.which("runc") is None:
        raise ServiceError("runc is not installed (buildkitd runs build steps with it): run `make setup`")
    d = state_dir("buildkit")
    buildkit_socket().unlink(missing_ok=True)
    config = d / "buildkitd.toml"
    # Build steps run in the host's network namespace, so they reach loopback services (the local registry,
    # over plain HTTP) exactly as the host does.
    config.write_text(
        f'root = "{d / "root"}"\n'
        f'[grpc]\n  address = ["unix://{buildkit_socket()}"]\n'
        '[worker.oci]\n  enabled = true\n  snapshotter = "auto"\n  gc = true\n  gckeepstorage = "10GB"\n'
        "[worker.containerd]\n  enabled = false\n"
        f'[registry."{registry_host()}"]\n  http = true\n  insecure = true\n'
    )
    pid = _spawn("buildkit", [str(binary), "--config", str(config)])
    _wait("buildkit", buildkit_ok, pid, 60)


def _docker_address() -> str:
    return "unix:///var/run/docker.sock"


SERVICES: dict[str, Service] = {
    s.name: s
    for s in [
        Service(
            "docker",
            "Docker engine (dockerd)",
            docker_ok,
            _start_docker,
            _docker_address,
            "make services (starts dockerd; install with make setup)",
            after=forward_loopback_to_containers,  # docker0 is new after a restart of dockerd
        ),
        Service(
            "registry",
            "OCI registry (docker-registry)",
            registry_ok,
            _start_registry,
            registry_url,
            "make services",
        ),
        Service(
            "azurite",
            "Azure Blob emulator (Azurite)",
            azurite_ok,
            _start_azurite,
            azurite_blob_url,
            "make services",
            after=forward_loopback_to_containers,
        ),
        Service(
            "mosquitto", "MQTT broker (Mosquitto)", mosquitto_ok, _start_mosquitto, mqtt_url, "make services"
        ),
        Service(
            "python-base",
            "Python base image for scoring images",
            base_image_ok,
            _start_base_image,
            base_image_ref,
            "make services (builds it once with debootstrap)",
            depends=["registry"],
        ),
        Service(
            "router-base",
            "nginx image for endpoints' routers",
            router_image_ok,
            lambda: _start_base_image("router"),
            router_image_ref,
            "make services (builds it once with debootstrap)",
            depends=["registry"],
        ),
        Service(
            "kubernetes",
            "single-node Kubernetes cluster (real pods)",
            lambda: _node().node_ready(),
            lambda: _node().start(progress=lambda _m: None),
            lambda: str(_node().kubeconfig_path()),
            "mlinfra services up kubernetes (binaries: make kube; containerd, CNI plugins: make setup)",
            depends=["registry"],
            stop=lambda: _node().stop(progress=lambda _m: None),
        ),
        Service(
            "buildkit",
            "BuildKit daemon (buildx builder for docker-build)",
            buildkit_ok,
            _start_buildkit,
            lambda: f"unix://{buildkit_socket()} (buildx builder {buildx_builder()!r})",
            "make services (buildkitd: make setup)",
            depends=["registry"],
            after=_register_builder,
        ),
    ]
}


def _node():
    from mlinfra.lab import node

    return node


def ensure(names: Iterable[str] | None = None, progress: Callable[[str], None] = print) -> None:
    """Start each named service (default: all) that is not answering; raise ServiceError naming the one that
    could not start."""
    wanted = list(names) if names is not None else list(SERVICES)
    order: list[str] = []
    for n in wanted:
        if n not in SERVICES:
            raise ServiceError(f"unknown service {n!r}: choose from {', '.join(SERVICES)}")
        for dep in SERVICES[n].depends:
            if dep not in order:
                order.append(dep)
        if n not in order:
            order.append(n)
    for n in order:
        svc = SERVICES[n]
        if svc.check():
            if svc.after:
                svc.after()
            progress(f"{n:12s} up       {svc.address()}")
            continue
        t0 = time.monotonic()
        try:
            svc.start()
        except ServiceError:
            raise
        except Exception as e:  # surface any failure as the service's failure
            raise ServiceError(f"{n} ({svc.description}) could not start: {e}") from e
        if svc.after:
            svc.after()
        progress(f"{n:12s} started  {svc.address()}  ({time.monotonic() - t0:.1f} s)")


def down(names: Iterable[str] | None = None, progress: Callable[[str], None] = print) -> None:
    """Stop the services this module started (by PID); leaves anything else alone."""
    for n in reversed(list(names) if names is not None else list(SERVICES)):
        svc = SERVICES.get(n)
        if svc is not None and svc.stop is not None:
            if svc.stop():
                progress(f"{n:12s} stopped")
        elif _stop(n):
            progress(f"{n:12s} stopped")


def status(names: Iterable[str] | None = None) -> dict[str, bool]:
    for n in names or ():
        if n not in SERVICES:
            raise ServiceError(f"unknown service {n!r}: choose from {', '.join(SERVICES)}")
    return {n: SERVICES[n].check() for n in (names or SERVICES)}


def describe(name: str) -> dict[str, object]:
    """What `mlinfra services status NAME --json` prints: up or not, its address, its PID (and the cluster's
    kubeconfig for ``kubernetes``)."""
    if name not in SERVICES:
        raise ServiceError(f"unknown service {name!r}: choose from {', '.join(SERVICES)}")
    svc = SERVICES[name]
    if name == "kubernetes":
        return {"up": svc.check(), **_node().status().to_json()}
    return {"up": svc.check(), "address": svc.address(), "pid": _read_pid(name)}


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin wrapper used by the CLI
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "down":
        down(args[1:] or None)
    else:
        ensure(args[1:] or None)
    return 0
