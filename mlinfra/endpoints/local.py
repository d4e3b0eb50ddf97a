"""CloudEndpoint's Local Docker target: replica containers on the local Docker engine (each published on
127.0.0.1) and a router container (Debian nginx, host network, listening on 127.0.0.1:<port>) in front, driven by
the rollout engine (rollout.py) through :class:`LocalDockerTarget`.

The Docker engine is driven through its CLI (Debian's ``/usr/bin/docker``): no pulumi-docker plugin can be built
here (docs/engine.md). Every container carries the labels ``mlinfra.io/endpoint``, ``mlinfra.io/deployment``,
``mlinfra.io/revision``, ``mlinfra.io/model``, ``mlinfra.io/model-version`` and ``mlinfra.io/image-digest``, which is
how ``mlinfra endpoints list`` finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.defaults import docker_cli
from mlinfra.endpoints import gates, nginx
from mlinfra.endpoints.rollout import Desired, Revision
from mlinfra.endpoints.spec import EndpointSpec
from mlinfra.engine import cache_dir
from mlinfra.errors import EndpointError

Log = Callable[[str], None]
CONTAINER_PORT = 8080
CONTAINER_GRPC_PORT = 8081
"""Where a replica serves the Open Inference Protocol's gRPC service (MLINFRA_SERVE_GRPC_PORT)."""


def docker(
    *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The docker CLI. ENV is added to the CLI's own environment: secrets go there (``-e NAME`` without a value takes
    it from there), never on a command line that `ps` shows."""
    try:
        r = subprocess.run(
            [docker_cli(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError:
        raise EndpointError("the docker CLI is not installed: run `make setup`") from None
    except subprocess.TimeoutExpired:
        raise EndpointError(
            f"docker {args[0]} did not finish in {timeout:g} s: is dockerd healthy?"
        ) from None
    if check and r.returncode != 0:
        raise EndpointError(f"docker {' '.join(args[:2])} failed: {r.stderr.strip()[-800:]}")
    return r


def _listener_ports() -> range:
    """Where endpoints' ports are picked: below the kernel's ephemeral range (ip_local_port_range), so the source
    port of some outgoing connection never holds a replica's or router's port when it is bound — possibly long after
    it was picked, since slots keep their ports across updates — and below Kubernetes' NodePort range (30000+)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = min(low, 30000)
    return range(20000, top) if top - 20000 >= 1000 else range(1024, top)


def free_port(avoid: set[int] | None = None) -> int:
    """A port free on 127.0.0.1 now, other than those in AVOID, outside the ephemeral range (:func:`_listener_ports`)."""
    ports = _listener_ports()
    for _ in range(500):
        port = random.randrange(ports.start, ports.stop)
        if port not in (avoid or set()) and not port_taken(port):
            return port
    while True:  # a crowded range: any free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in (avoid or set()):
            return port


def port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:PORT (connections in TIME_WAIT do not count, as for nginx)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def endpoint_dir(endpoint: str) -> Path:
    d = cache_dir() / "endpoints" / endpoint
    # 0711: nginx's workers (user nobody) may look up a file whose name they know (a route, a key) but not list.
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o711)
    return d


def router_name(endpoint: str) -> str:
    return f"mlinfra-ep-{endpoint}-router"


def label_value(v: str) -> str:
    """Docker labels take anything; keep them equal to the Kubernetes form (≤ 63 chars, [A-Za-z0-9._-])."""
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in v)[:63]
    return out.strip("-._")


def model_labels(models: list[dict[str, Any]], digest: str | None) -> dict[str, str]:
    """mlinfra.io/model, model-version and image-digest (when known), as containers and Kubernetes objects carry
    them."""
    labels = {"mlinfra.io/image-digest": label_value(digest.split(":", 1)[-1])} if digest else {}
    if models:
        labels["mlinfra.io/model"] = label_value(".".join(m["name"] for m in models))
        labels["mlinfra.io/model-version"] = label_value(".".join(str(int(m["version"])) for m in models))
    return labels


# ----------------------------------------------------------------------------------------------------------------
# Replicas


def uname(rev: Revision) -> str:
    """The router's (nginx) upstream name of a revision: one per deployment and slot."""
    return nginx.upstream_name(rev.deployment, rev.slot)


def image_info(ref: str) -> tuple[str, list[dict[str, Any]]]:
    """Pull REF if needed; return (digest, models from the image's mlinfra.model.<n>.* labels)."""
    if docker("image", "inspect", ref, check=False).returncode != 0:
        r = docker("pull", "-q", ref, timeout=600, check=False)
        if r.returncode != 0:
            raise EndpointError(f"image {ref!r} could not be pulled: {r.stderr.strip()[-400:]}")
    info = json.loads(docker("image", "inspect", ref).stdout)[0]
    digest = (
        ref.split("@", 1)[1] if "@" in ref else (info.get("RepoDigests") or [info["Id"]])[0].split("@")[-1]
    )
    labels = (info.get("Config") or {}).get("Labels") or {}
    models = []
    n = 0
    while f"mlinfra.model.{n}.name" in labels:
        models.append(
            {
                "name": labels[f"mlinfra.model.{n}.name"],
                "version": int(labels.get(f"mlinfra.model.{n}.version", "0")),
                "sha256": labels.get(f"mlinfra.model.{n}.sha256", ""),
            }
        )
        n += 1
    return digest, models


def start_upstream(
    endpoint: str,
    up: Revision,
    ports: list[int],
    log: Log,
    secret_env: dict[str, str] | None = None,
    grpc_ports: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Start containers until UP has one per port in PORTS (its slot's loopback ports; replica i serves gRPC on
    GRPC_PORTS[i]); returns the new ones.

    With data collection (MLINFRA_SERVE_COLLECT in the env) a replica stays on Docker's bridge like the others: a
    blob endpoint on this machine's loopback (Azurite) is addressed at the bridge's gateway instead
    (:func:`container_sink`); its spool is a host folder that survives restarts
    (`<endpoint dir>/spool/<deployment>-<i>`), and a local-folder sink is mounted at its own path."""
    spec = up.spec
    digest, models = image_info(spec["image"])
    spec["digest"], spec["models"] = digest, models
    labels = {
        "mlinfra.io/endpoint": endpoint,
        "mlinfra.io/deployment": up.deployment,
        "mlinfra.io/revision": up.revision,
        **model_labels(models, digest),
    }
    started = []
    used = {int(c["port"]) for c in up.replicas}
    for i, port in enumerate(ports):
        if port in used:  # a replica runs there (after a repair, the free ports need not be the last ones)
            continue
        name = f"mlinfra-ep-{endpoint}-{up.deployment}-{up.revision}-{i}"
        docker("rm", "-f", name, check=False)  # a leftover of an interrupted run, or of a replica that died
        env = dict(spec.get("env") or {})
        if grpc_ports:
            env["MLINFRA_SERVE_GRPC_PORT"] = str(CONTAINER_GRPC_PORT)
        args = [
            "run", "-d", "--name", name, "--restart", "unless-stopped",
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--cpus", f"{float(spec['cpu']):g}", "--memory", f"{int(spec['memory_mb'])}m",
            "--log-opt", "max-size=10m", "--log-opt", "max-file=2",
        ]  # fmt: skip
        if "MLINFRA_SERVE_COLLECT" in env:
            spool = endpoint_dir(endpoint) / "spool" / f"{up.deployment}-{i}"
            spool.mkdir(parents=True, exist_ok=True)
            os.chown(spool, 10001, 10001)
            args += ["-v", f"{spool}:/var/lib/mlinfra/spool"]
            collect = json.loads(env["MLINFRA_SERVE_COLLECT"])
            sink = collect.get("sink", "")
            if sink.startswith("file://"):
                folder = Path(sink[len("file://") :])
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, 10001, 10001)
                args += ["-v", f"{folder}:{folder}"]
            env["MLINFRA_SERVE_COLLECT"] = json.dumps({**collect, "sink": container_sink(sink)})
        if "MLINFRA_SERVE_OTLP_ENDPOINT" in env:  # a collector on this machine's loopback
            env["MLINFRA_SERVE_OTLP_ENDPOINT"] = container_url(env["MLINFRA_SERVE_OTLP_ENDPOINT"])
        args += ["-p", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
        if grpc_ports:
            args += ["-p", f"127.0.0.1:{grpc_ports[i]}:{CONTAINER_GRPC_PORT}"]
        for k, v in sorted(labels.items()):
            args += ["--label", f"{k}={v}"]
        for k, v in sorted(env.items()):
            args += ["-e", f"{k}={v}"]
        for k in sorted(secret_env or {}):
            args += ["-e", k]  # the value comes from the CLI's environment: never on a command line
        r = docker(*args, spec["image"], check=False, env=secret_env)
        for _ in range(
            3
        ):  # a port held for a moment (a connection's source port): wait for it, then try again
            if r.returncode == 0 or "address already in use" not in r.stderr:
                break
            time.sleep(1.0)
            docker("rm", "-f", name, check=False)
            r = docker(*args, spec["image"], check=False, env=secret_env)
        if r.returncode != 0:
            raise EndpointError(
                f"{up.key}: container {name} could not start on 127.0.0.1:{port}: {r.stderr.strip()[-400:]}"
            )
        c = {"name": name, "port": port}
        up.replicas.append(c)
        started.append(c)
        log(f"{up.key}: started {name} on 127.0.0.1:{port} (slot {up.slot})")
    return started


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def container_url(url: str, host: str | None = None) -> str:
    """URL as a container reaches it: on this machine's loopback it gets HOST instead (default: Docker's bridge
    gateway; a pod gets its node's address), port and path kept. `mlinfra services` forwards Azurite's port and
    OTLP's 4318 from those addresses to 127.0.0.1 (mlinfra.lab.services.forward_loopback_to_containers); another
    loopback service needs the same forward. Any other URL is returned unchanged."""
    e = urllib.parse.urlsplit(url)
    if (e.hostname or "") in LOOPBACK_HOSTS or (e.hostname or "").startswith("127."):
        netloc = (host or bridge_gateway()) + (f":{e.port}" if e.port else "")
        return urllib.parse.urlunsplit(e._replace(netloc=netloc))
    return url


def container_sink(sink: str, host: str | None = None) -> str:
    """SINK as a container reaches it: an ``azblob://…?endpoint=URL`` gets the endpoint :func:`container_url`
    gives. Anything else is returned unchanged."""
    u = urllib.parse.urlsplit(sink)
    if u.scheme != "azblob":
        return sink
    query = [
        (k, container_url(v, host) if k == "endpoint" else v)
        for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)
    ]
    # "$()" kept as is: Kubernetes expands $(VAR) in a pod's env values
    return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(query, safe=":/$()")))


_GATEWAY: list[str] = []


def bridge_gateway() -> str:
    """The address of Docker's default bridge on this machine, as its containers see it (cached per process): the
    network's IPAM gateway, else (a daemon that records none, as a freshly started one here did) the address of its
    bridge interface (docker0), which is the gateway its containers route through."""
    if not _GATEWAY:
        r = docker(
            "network", "inspect", "bridge", "-f",
            '{{range .IPAM.Config}}{{.Gateway}}{{end}} {{index .Options "com.docker.network.bridge.name"}}',
            check=False,
        )  # fmt: skip
        gw, _, bridge = r.stdout.strip("\n").partition(" ")  # "GATEWAY BRIDGE" or " BRIDGE"
        if r.returncode == 0 and not gw:
            ip = subprocess.run(
                ["ip", "-4", "-o", "addr", "show", "dev", bridge.strip() or "docker0"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            found = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", ip.stdout)
            gw = found.group(1) if found else ""
        if r.returncode != 0 or not gw:
            raise EndpointError(
                f"Docker's default bridge has no gateway address (neither in `docker network inspect bridge` nor on "
                f"its interface): restart Docker (`mlinfra services down docker && mlinfra services up docker`) "
                f"{r.stderr.strip()[-300:]}"
            )
        _GATEWAY.append(gw)
    return _GATEWAY[0]


def container_logs(name: str, lines: int = 8) -> str:
    """The container's last LINES log lines that are not access-log entries (those say little about a failure)."""
    r = docker("logs", "--tail", "500", name, check=False)
    kept = [line for line in (r.stdout + r.stderr).splitlines() if '"path":' not in line]
    return "\n".join(kept[-lines:])[-1500:]


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
    ctx = ssl._create_unverified_context() if url.startswith("https") else None  # our own router, on loopback
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None, b""


def wait_ready(up: Revision, containers: list[dict[str, Any]], timeout: float, log: Log) -> None:
    """Every one of CONTAINERS answers 200 on /v2/health/ready within TIMEOUT, else EndpointError naming the
    gate."""
    deadline = time.monotonic() + timeout
    pending = list(containers)
    while pending:
        c = pending[0]
        status, _ = http_get(f"http://127.0.0.1:{c['port']}/v2/health/ready", 1.0)
        if status == 200:
            pending.pop(0)
            continue
        state = docker(
            "inspect", "-f", "{{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}}", c["name"],
            check=False,
        ).stdout.strip()  # fmt: skip
        restarts = int(state.rsplit("restarts=", 1)[1]) if "restarts=" in state else 0
        crashed = state.startswith(("exited", "dead", "restarting")) or restarts > 0
        if crashed or time.monotonic() >= deadline:
            why = f"container crashed ({state})" if crashed else "not ready"
            raise EndpointError(
                f"gate readiness failed for {up.key}: {c['name']} {why} within readiness_timeout_s="
                f"{timeout:g} s (GET /v2/health/ready answered {status}). Its last log lines: "
                + " | ".join(container_logs(c["name"]).splitlines())
            )
        time.sleep(0.25)
    if containers:
        log(f"{up.key}: {len(containers)} replica(s) ready")


def remove_containers(containers: list[dict[str, Any]], log: Log, grace_s: int = 30) -> None:
    names = [c["name"] for c in containers]
    if names:
        # SIGTERM first: the scoring server finishes its in-flight requests before it exits.
        docker("stop", "-t", str(grace_s), *names, check=False, timeout=grace_s + 30)
        docker("rm", "-f", *names, check=False)
        log(f"removed {', '.join(names)}")


def scrape(up: Revision) -> gates.Sample:
    total = gates.Sample()
    for c in up.replicas:
        status, body = http_get(f"http://127.0.0.1:{c['port']}/metrics", 2.0)
        if status == 200:
            total = total + gates.parse(body.decode("utf-8", "replace"))
    return total


def ready_count(up: Revision) -> int:
    return sum(
        1 for c in up.replicas if http_get(f"http://127.0.0.1:{c['port']}/v2/health/ready", 1.0)[0] == 200
    )


# ----------------------------------------------------------------------------------------------------------------
# Router


@dataclass
class Router:
    endpoint: str
    port: int
    image: str
    auth: str  # key | none | tls
    tls: dict[str, str] = field(default_factory=dict)  # cert, key, client_ca: host paths
    max_body_mb: float = 10.0
    upstream_key: str | None = None  # presented to the replicas, which accept nothing else
    grpc_port: int | None = None  # the gRPC listener on 127.0.0.1 (None: REST only)

    @property
    def scheme(self) -> str:
        return "https" if self.auth == "tls" else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def dir(self) -> Path:
        return endpoint_dir(self.endpoint)

    def render(
        self,
        upstreams: dict[str, tuple[str, list[str]]],
        mirror: dict[str, float],
        grpc_upstreams: dict[str, list[str]] | None = None,
    ) -> str:
        tls = self.auth == "tls"
        return nginx.render(
            nginx.RouterConfig(
                listen=f"127.0.0.1:{self.port}",
                generation=str(time.time_ns()),
                upstreams=upstreams,
                state_dir="/etc/mlinfra",
                mirror=mirror,
                key_auth=self.auth == "key",
                tls_cert="/etc/mlinfra/tls/cert.pem" if tls else None,
                tls_key="/etc/mlinfra/tls/key.pem" if tls else None,
                tls_client_ca="/etc/mlinfra/tls/client_ca.pem" if tls and self.tls.get("client_ca") else None,
                max_body_mb=self.max_body_mb,
                upstream_key=self.upstream_key,
                grpc_listen=f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None,
                grpc_upstreams=grpc_upstreams or {},
            )
        )

    def running(self) -> bool:
        r = docker("inspect", "-f", "{{.State.Running}}", router_name(self.endpoint), check=False)
        return r.stdout.strip() == "true"

    def configure(
        self,
        upstreams: dict[str, tuple[str, list[str]]],
        mirror: dict[str, float],
        grpc_upstreams: dict[str, list[str]] | None = None,
    ) -> bool:
        """Load a configuration with UPSTREAMS ({nginx name: (deployment, addresses)}), their replicas' gRPC
        addresses (GRPC_UPSTREAMS, by the same names) and MIRROR; starts the router if needed. Reloads only when the
        configuration really changed (a reload makes old workers drop idle keep-alive connections). Returns whether
        it reloaded or started."""
        d = self.dir
        text = self.render(upstreams, mirror, grpc_upstreams)
        conf = d / "nginx.conf"

        def body(t: str) -> str:
            return "\n".join(line for line in t.splitlines() if "_mlinfra/generation" not in line)

        running = self.running()
        if running and conf.exists() and body(conf.read_text()) == body(text):
            return False
        if self.auth == "tls":
            (d / "tls").mkdir(exist_ok=True, mode=0o700)
            for k in ("cert", "key", "client_ca"):
                if self.tls.get(k):
                    dst = d / "tls" / f"{k}.pem"
                    dst.write_bytes(Path(self.tls[k]).read_bytes())
                    dst.chmod(0o600)
        (d / "routes").mkdir(exist_ok=True)
        tmp = d / "nginx.conf.tmp"
        tmp.touch(mode=0o600)
        tmp.chmod(0o600)  # it holds the replicas' key: root (nginx's master) reads it, nobody else
        tmp.write_text(text)
        if running:
            r = docker(
                "exec",
                router_name(self.endpoint),
                "nginx",
                "-t",
                "-q",
                "-c",
                "/etc/mlinfra/nginx.conf.tmp",
                check=False,
            )
        else:
            r = docker(
                "run", "--rm", "--network", "none", "-v", f"{d}:/etc/mlinfra:ro", "--tmpfs", "/tmp",
                self.image, "nginx", "-t", "-q", "-c", "/etc/mlinfra/nginx.conf.tmp", check=False,
            )  # fmt: skip
        if r.returncode != 0:
            raise EndpointError(f"the router rejected its generated configuration: {r.stderr.strip()[-600:]}")
        os.replace(d / "nginx.conf.tmp", conf)
        generation = text.split('location = /_mlinfra/generation { return 200 "', 1)[1].split('"', 1)[0]
        if running:
            docker("kill", "-s", "HUP", router_name(self.endpoint))
        else:
            docker("rm", "-f", router_name(self.endpoint), check=False)
            for key, port in (("port", self.port), ("grpc_port", self.grpc_port)):
                if port and port_taken(port):
                    raise EndpointError(
                        f"port {port} on 127.0.0.1 is already taken by another process: choose another "
                        f"LocalDocker({key}=...) or leave it unset to pick a free one"
                    )
            docker(
                "run", "-d", "--name", router_name(self.endpoint), "--network", "host",
                "--restart", "unless-stopped", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/nginx",
                "--tmpfs", "/var/log/nginx", "--cap-drop", "ALL", "--cap-add", "SETUID", "--cap-add", "SETGID",
                "--cap-add", "CHOWN", "--security-opt", "no-new-privileges",
                "--label", f"mlinfra.io/endpoint={self.endpoint}", "--label", "mlinfra.io/role=router",
                "--label", f"mlinfra.io/port={self.port}", "--label", f"mlinfra.io/grpc-port={self.grpc_port or ''}",
                "-v", f"{d}:/etc/mlinfra:ro", "--log-opt", "max-size=10m", "--log-opt", "max-file=2",
                self.image, "nginx", "-c", "/etc/mlinfra/nginx.conf", "-g", "daemon off;",
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            status, got = http_get(f"{self.url}/_mlinfra/generation", 1.0)
            if status == 200 and got.decode() == generation:
                return True
            if time.monotonic() >= deadline:
                logs = docker("logs", "--tail", "10", router_name(self.endpoint), check=False).stderr
                raise EndpointError(
                    f"the router did not load its new configuration within 20 s: {logs[-600:]}"
                )
            time.sleep(0.05)

    def drain(self, timeout: float = 60) -> None:
        """After a reload: wait until the old workers finished their requests (they may still send to
        containers about to be removed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                "shutting down"
                not in docker("top", router_name(self.endpoint), "-eo", "args", check=False).stdout
            ):
                return
            time.sleep(0.1)

    def route(self, weights: dict[str, float], pins: dict[str, str]) -> None:
        """Traffic by nginx upstream name (percent), and the x-mlinfra-deployment pins: files, no reload."""
        nginx.write_routes(self.dir / "routes", nginx.bucket_routes(weights, pins))

    def set_keys(self, keys: list[str]) -> None:
        nginx.write_keys(self.dir / "keys", keys)

    def remove(self) -> None:
        docker("rm", "-f", router_name(self.endpoint), check=False)


# ----------------------------------------------------------------------------------------------------------------
# Traffic


def to_router(
    everything: dict[str, Revision], weights: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Weights by `deployment@revision` → (weights by nginx upstream, pins {deployment: upstream}): a pin goes to
    the deployment's revision with the most traffic (ties: the newest map's)."""
    by_name: dict[str, float] = {}
    pins: dict[str, tuple[float, str]] = {}
    for key, w in weights.items():
        u = everything[key]
        by_name[uname(u)] = by_name.get(uname(u), 0.0) + w
    for key, u in everything.items():
        w = weights.get(key, 0.0)
        if u.deployment not in pins or w > pins[u.deployment][0]:
            pins[u.deployment] = (w, uname(u))
    return by_name, {d: n for d, (_w, n) in pins.items()}


def find_containers(endpoint: str | None = None) -> list[dict[str, Any]]:
    """Every container mlinfra endpoints run on this Docker engine, with their labels."""
    flt = f"label=mlinfra.io/endpoint={endpoint}" if endpoint else "label=mlinfra.io/endpoint"
    r = docker("ps", "-a", "--filter", flt, "--format", "{{json .}}", check=False)
    out = []
    for line in r.stdout.splitlines():
        with contextlib.suppress(ValueError):
            d = json.loads(line)
            labels = dict(kv.split("=", 1) for kv in d.get("Labels", "").split(",") if "=" in kv)
            out.append(
                {
                    "name": d["Names"],
                    "state": d.get("State", ""),
                    "status": d.get("Status", ""),
                    "labels": labels,
                }
            )
    return out


_snapshot: tuple[float, list[dict[str, Any]]] | None = None
_snapshot_lock = threading.Lock()


def containers_snapshot(endpoint: str, max_age_s: float = 2.0) -> list[dict[str, Any]]:
    """For reads only (`pulumi refresh`): ENDPOINT's containers out of one `docker ps` of every endpoint's, shared by
    the reads of one refresh that come within MAX_AGE_S — a refresh of 100 endpoints asks Docker a few times, not
    100. Never for applying changes, which must see Docker now (:func:`find_containers`)."""
    global _snapshot
    with _snapshot_lock:
        if _snapshot is None or time.monotonic() - _snapshot[0] > max_age_s:
            _snapshot = (time.monotonic(), find_containers())
        every = _snapshot[1]
    return [c for c in every if c["labels"].get("mlinfra.io/endpoint") == endpoint]


def replica_up(container: dict[str, Any] | None) -> bool:
    """Whether a container (from :func:`find_containers`) serves: running and not reported unhealthy."""
    return (
        container is not None and container["state"] == "running" and "(unhealthy)" not in container["status"]
    )


def healthy_observation(spec: EndpointSpec) -> dict[str, Any]:
    """What :func:`observe` reports for an endpoint running as SPEC declares."""
    return {
        "router": "running",
        "deployments": {
            d: f"{s.replicas} of {s.replicas} replicas running" for d, s in sorted(spec.deployments.items())
        },
    }


def observe(
    spec: EndpointSpec, upstreams: dict[str, Revision], containers: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The endpoint as it really is (one `docker ps`): the router, and per deployment how many of the replicas
    recorded in state for its serving revisions run. Compared with :func:`healthy_observation`, what differs is
    drift, named the way `pulumi refresh` shows it (e.g. ``deployments.blue: "0 of 2 replicas running"``)."""
    found = containers if containers is not None else find_containers(spec.endpoint_name)
    by_name = {c["name"]: c for c in found}
    router = by_name.get(router_name(spec.endpoint_name))
    files = [endpoint_dir(spec.endpoint_name) / "nginx.conf"]
    if spec.auth == "key":
        files.append(endpoint_dir(spec.endpoint_name) / "keys")
    if router is None:
        router_state = "missing"
    elif router["state"] != "running":
        router_state = f"not running ({router['state']})"
    elif not all(f.exists() for f in files):
        router_state = "running without its configuration"
    else:
        router_state = "running"
    deployments: dict[str, str] = {}
    for d, s in sorted(spec.deployments.items()):
        names = [r["name"] for u in upstreams.values() if u.deployment == d for r in u.replicas]
        running = sum(1 for n in names if replica_up(by_name.get(n)))
        deployments[d] = f"{running} of {s.replicas} replicas running"
    return {"router": router_state, "deployments": deployments}


# ----------------------------------------------------------------------------------------------------------------
# The Local Docker target of the rollout engine


def _ports(slots: dict[str, dict[str, list[int]]]) -> set[int]:
    return {int(p) for d in slots.values() for ports in d.values() for p in ports}


class LocalDockerTarget:
    """Replicas as containers on 127.0.0.1 ports, traffic through the endpoint's nginx router (route files, no
    reloads while traffic moves). Each deployment has two port sets, slots A and B, one port per replica: a new
    revision starts in the slot the serving one does not use, so both run side by side during a rollout."""

    def __init__(
        self,
        spec: EndpointSpec,
        port: int,
        grpc_port: int,
        old_slots: dict[str, dict[str, list[int]]],
        old_grpc_slots: dict[str, dict[str, list[int]]],
        log: Log,
    ):
        self.spec = spec
        self.log = log
        self.router = Router(
            endpoint=spec.endpoint_name,
            port=port,
            image=spec.router_image,
            auth=spec.auth,
            tls=spec.tls.model_dump() if spec.tls else {},
            max_body_mb=spec.max_body_mb,
            upstream_key=spec.internal_key or None,
            grpc_port=grpc_port,
        )
        self.old_slots = old_slots
        self.old_grpc_slots = old_grpc_slots
        taken = {port, grpc_port} | _ports(old_slots) | _ports(old_grpc_slots)
        self.slots = self._allocate(old_slots, taken)
        self.grpc_slots = self._allocate(old_grpc_slots, taken)  # replica i of a slot: REST and gRPC ports i
        self.reloaded = False
        sas = spec.collect_credential
        self.secret_env = {"MLINFRA_SERVE_COLLECT_CREDENTIAL": sas} if sas else {}
        if spec.internal_key:  # the replicas answer only the router (health and /metrics stay open)
            self.secret_env["MLINFRA_SERVE_KEYS"] = spec.internal_key

    def _allocate(
        self, old: dict[str, dict[str, list[int]]], taken: set[int]
    ) -> dict[str, dict[str, list[int]]]:
        """Ports per deployment and slot, one per replica; kept across updates. TAKEN grows with what it picks."""
        out: dict[str, dict[str, list[int]]] = {}
        for d, dep in self.spec.deployments.items():
            out[d] = {}
            for slot in ("A", "B"):
                ports = [int(p) for p in (old.get(d) or {}).get(slot, [])][: dep.replicas]
                while len(ports) < dep.replicas:
                    p = free_port()
                    if p not in taken:
                        taken.add(p)
                        ports.append(p)
                out[d][slot] = ports
        return out

    @classmethod
    def _grpc_upstreams(cls, slots: dict[str, dict[str, list[int]]]) -> dict[str, list[str]]:
        """The replicas' gRPC addresses by REST upstream name (GRPC_SLOTS is shaped like the REST slots)."""
        return {name: addresses for name, (_d, addresses) in cls._upstreams(slots).items()}

    @staticmethod
    def _upstreams(slots: dict[str, dict[str, list[int]]]) -> dict[str, tuple[str, list[str]]]:
        return {
            nginx.upstream_name(d, slot): (d, [f"127.0.0.1:{p}" for p in ports])
            for d, by_slot in slots.items()
            for slot, ports in by_slot.items()
        }

    def _mirror(self, revisions: dict[str, Revision]) -> dict[str, float]:
        """Mirror percent by nginx upstream: the shadow deployment's revision."""
        out = {}
        for d, pct in self.spec.mirror.items():
            ups = [u for u in revisions.values() if u.deployment == d]
            if pct and ups:
                out[uname(ups[-1])] = float(pct)
        return out

    # -- the Target interface (mlinfra.endpoints.rollout) -----------------------------------------------------

    def new_revision(self, deployment: str, desired: Desired, current: list[Revision]) -> Revision:
        slot = "B" if current and current[0].slot == "A" else "A"
        return Revision(deployment, desired.revision, dict(desired.spec), slot)

    def scale(self, rev: Revision, replicas: int) -> list[dict[str, Any]]:
        ports = self.slots[rev.deployment][rev.slot][:replicas]
        grpc_ports = self.grpc_slots[rev.deployment][rev.slot][:replicas]
        return start_upstream(self.spec.endpoint_name, rev, ports, self.log, self.secret_env, grpc_ports)

    def wait_ready(self, rev: Revision, replicas: list[dict[str, Any]], timeout_s: float) -> None:
        wait_ready(rev, replicas, timeout_s, self.log)

    def connect(self, everything: dict[str, Revision], desired: dict[str, Revision]) -> None:
        # During a rollout the router knows the old and the new upstreams; it reloads only if that set changed.
        transition = {
            **self._upstreams({d: v for d, v in self.old_slots.items() if d not in self.slots}),
            **self._upstreams(self.slots),
        }
        grpc_transition = {
            **self._grpc_upstreams(
                {d: v for d, v in self.old_grpc_slots.items() if d not in self.grpc_slots}
            ),
            **self._grpc_upstreams(self.grpc_slots),
        }
        self.router.set_keys(self.spec.user_keys())
        self.reloaded = (
            self.router.configure(transition, self._mirror(desired), grpc_transition) or self.reloaded
        )

    def route(self, weights: dict[str, float], everything: dict[str, Revision]) -> None:
        self.router.route(*to_router(everything, weights))

    def scrape(self, rev: Revision) -> gates.Sample:
        return scrape(rev)

    def ready_count(self, rev: Revision) -> int:
        return ready_count(rev)

    def retire(self, replicas: list[dict[str, Any]], grace_s: int) -> None:
        remove_containers(replicas, self.log, grace_s=grace_s)

    def lost(self, rev: Revision) -> list[dict[str, Any]]:
        containers = {c["name"]: c for c in find_containers(self.spec.endpoint_name)}
        return [r for r in rev.replicas if not replica_up(containers.get(r["name"]))]

    def settle(self, desired: dict[str, Revision], weights: dict[str, float]) -> None:
        # The router forgets what left (a reload only if the upstream set shrank), then old workers drain.
        reloaded = self.router.configure(
            self._upstreams(self.slots), self._mirror(desired), self._grpc_upstreams(self.grpc_slots)
        )
        self.router.route(*to_router(desired, weights))
        time.sleep(1.0)  # requests already on their way to what leaves finish first
        if reloaded or self.reloaded:
            self.router.drain()
