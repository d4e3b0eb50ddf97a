"""CloudEndpoint's Local Docker target: replica containers on the local Docker engine (each published on
127.0.0.1), a router container (Debian nginx, host network, listening on 127.0.0.1:<port>) in front, and the
progressive rollout that moves traffic between them.

The Docker engine is driven through its CLI (Debian's ``/usr/bin/docker``): no pulumi-docker plugin can be built
here (docs/engine.md). Every container carries the labels ``mlinfra.io/endpoint``, ``mlinfra.io/deployment``,
``mlinfra.io/revision``, ``mlinfra.io/model``, ``mlinfra.io/model-version`` and ``mlinfra.io/image-digest``, which is
how ``mlinfra endpoints list`` finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.endpoint import gates, nginx
from mlinfra.endpoint.plan import EndpointError, describe, gaining, plan
from mlinfra.engine import cache_dir
from mlinfra.services import _docker_cli

Log = Callable[[str], None]
CONTAINER_PORT = 8080


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run([_docker_cli(), *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EndpointError("the docker CLI is not installed: run `make setup`") from None
    except subprocess.TimeoutExpired:
        raise EndpointError(
            f"docker {args[0]} did not finish in {timeout:g} s: is dockerd healthy?"
        ) from None
    if check and r.returncode != 0:
        raise EndpointError(f"docker {' '.join(args[:2])} failed: {r.stderr.strip()[-800:]}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class Upstream:
    """One deployment revision's containers."""

    deployment: str
    revision: str
    spec: dict[str, Any]
    slot: str = "A"  # A or B: which of the deployment's two port sets it runs on
    containers: list[dict[str, Any]] = field(default_factory=list)  # {"name", "port"}

    @property
    def key(self) -> str:
        return f"{self.deployment}@{self.revision}"

    @property
    def uname(self) -> str:
        return nginx.upstream_name(self.deployment, self.slot)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "revision": self.revision,
            "spec": self.spec,
            "slot": self.slot,
            "containers": self.containers,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Upstream:
        containers = [{"name": c["name"], "port": int(c["port"])} for c in d["containers"]]  # float64 → int
        return Upstream(d["deployment"], d["revision"], d["spec"], d.get("slot") or "A", containers)


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
    endpoint: str, up: Upstream, ports: list[int], log: Log, secret_env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Start containers until UP has one per port in PORTS (its slot's loopback ports); returns the new ones.

    With data collection (MLINFRA_SERVE_COLLECT in the env) a replica runs on the host network, its server bound to
    127.0.0.1:<port>, so it reaches storage on loopback (Azurite) too; its spool is a host folder that survives
    restarts (`<endpoint dir>/spool/<deployment>-<i>`), and a local-folder sink is mounted at its own path."""
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
    for i in range(len(up.containers), len(ports)):
        name = f"mlinfra-ep-{endpoint}-{up.deployment}-{up.revision}-{i}"
        docker("rm", "-f", name, check=False)  # a leftover of an interrupted run
        port = ports[i]
        env = dict(spec.get("env") or {})
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
            args += ["--network", "host", "-v", f"{spool}:/var/lib/mlinfra/spool"]
            env.update({"MLINFRA_SERVE_HOST": "127.0.0.1", "MLINFRA_SERVE_PORT": str(port)})
            sink = json.loads(env["MLINFRA_SERVE_COLLECT"]).get("sink", "")
            if sink.startswith("file://"):
                folder = Path(sink[len("file://") :])
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, 10001, 10001)
                args += ["-v", f"{folder}:{folder}"]
        else:
            args += ["-p", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
        for k, v in sorted(labels.items()):
            args += ["--label", f"{k}={v}"]
        for k, v in sorted({**env, **(secret_env or {})}.items()):
            args += ["-e", f"{k}={v}"]
        r = docker(*args, spec["image"], check=False)
        if r.returncode != 0:
            raise EndpointError(
                f"{up.key}: container {name} could not start on 127.0.0.1:{port}: {r.stderr.strip()[-400:]}"
            )
        c = {"name": name, "port": port}
        up.containers.append(c)
        started.append(c)
        log(f"{up.key}: started {name} on 127.0.0.1:{port} (slot {up.slot})")
    return started


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


def wait_ready(up: Upstream, containers: list[dict[str, Any]], timeout: float, log: Log) -> None:
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


def scrape(up: Upstream) -> gates.Sample:
    total = gates.Sample()
    for c in up.containers:
        status, body = http_get(f"http://127.0.0.1:{c['port']}/metrics", 2.0)
        if status == 200:
            total = total + gates.parse(body.decode("utf-8", "replace"))
    return total


def ready_count(up: Upstream) -> int:
    return sum(
        1 for c in up.containers if http_get(f"http://127.0.0.1:{c['port']}/v2/health/ready", 1.0)[0] == 200
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

    @property
    def scheme(self) -> str:
        return "https" if self.auth == "tls" else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def dir(self) -> Path:
        return endpoint_dir(self.endpoint)

    def render(self, upstreams: dict[str, tuple[str, list[str]]], mirror: dict[str, float]) -> str:
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
            )
        )

    def running(self) -> bool:
        r = docker("inspect", "-f", "{{.State.Running}}", router_name(self.endpoint), check=False)
        return r.stdout.strip() == "true"

    def configure(self, upstreams: dict[str, tuple[str, list[str]]], mirror: dict[str, float]) -> bool:
        """Load a configuration with UPSTREAMS ({nginx name: (deployment, addresses)}) and MIRROR; starts the
        router if needed. Reloads only when the configuration really changed (a reload makes old workers drop
        idle keep-alive connections). Returns whether it reloaded or started."""
        d = self.dir
        text = self.render(upstreams, mirror)
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
        (d / "nginx.conf.tmp").write_text(text)
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
            if port_taken(self.port):
                raise EndpointError(
                    f"port {self.port} on 127.0.0.1 is already taken by another process: choose another "
                    "LocalDocker(port=...) or leave it unset to pick a free one"
                )
            docker(
                "run", "-d", "--name", router_name(self.endpoint), "--network", "host",
                "--restart", "unless-stopped", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/nginx",
                "--tmpfs", "/var/log/nginx", "--cap-drop", "ALL", "--cap-add", "SETUID", "--cap-add", "SETGID",
                "--cap-add", "CHOWN", "--security-opt", "no-new-privileges",
                "--label", f"mlinfra.io/endpoint={self.endpoint}", "--label", "mlinfra.io/role=router",
                "--label", f"mlinfra.io/port={self.port}",
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
# The rollout


@dataclass
class Policy:
    steps: list[float]
    bake_s: float
    max_error_rate: float | None
    max_p99_ms: float | None
    min_requests: int
    readiness_timeout_s: float
    auto_rollback: bool

    @staticmethod
    def from_props(p: dict[str, Any]) -> Policy:
        g = p.get("gates") or {}
        return Policy(
            steps=[float(s) for s in p["steps"]],
            bake_s=float(p["bake_s"]),
            max_error_rate=None if g.get("max_error_rate") is None else float(g["max_error_rate"]),
            max_p99_ms=None if g.get("max_p99_ms") is None else float(g["max_p99_ms"]),
            min_requests=int(g.get("min_requests") or 0),
            readiness_timeout_s=float(g.get("readiness_timeout_s") or 120),
            auto_rollback=bool(p.get("auto_rollback", True)),
        )


class RolloutFailed(EndpointError):
    pass


def to_router(
    everything: dict[str, Upstream], weights: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Weights by `deployment@revision` → (weights by nginx upstream, pins {deployment: upstream}): a pin goes to
    the deployment's revision with the most traffic (ties: the newest map's)."""
    by_name: dict[str, float] = {}
    pins: dict[str, tuple[float, str]] = {}
    for key, w in weights.items():
        u = everything[key]
        by_name[u.uname] = by_name.get(u.uname, 0.0) + w
    for key, u in everything.items():
        w = weights.get(key, 0.0)
        if u.deployment not in pins or w > pins[u.deployment][0]:
            pins[u.deployment] = (w, u.uname)
    return by_name, {d: n for d, (_w, n) in pins.items()}


def rollout(
    router: Router,
    everything: dict[str, Upstream],
    old_weights: dict[str, float],
    new_weights: dict[str, float],
    new_only: list[Upstream],
    policy: Policy,
    log: Log,
) -> list[str]:
    """Move traffic from OLD_WEIGHTS to NEW_WEIGHTS (by `deployment@revision`, all in EVERYTHING, started and
    ready) in the policy's steps, baking and reading the gates after each. Returns the rollout's record. On a
    failed gate (auto_rollback): restores OLD_WEIGHTS, removes NEW_ONLY's containers, raises RolloutFailed naming
    the gate, the measured value and the limit."""
    maps = plan(old_weights, new_weights, policy.steps)
    record: list[str] = []
    started = time.monotonic()
    for i, weights in enumerate(maps):
        watched = [everything[k] for k in gaining(old_weights, weights) if k in everything]
        before = {u.key: scrape(u) for u in watched}
        router.route(*to_router(everything, weights))
        line = f"step {i + 1}/{len(maps)}: {describe(weights)}"
        if len(maps) == 1:
            record.append(line)
            break
        log(line + f"; baking {policy.bake_s:g} s")
        time.sleep(policy.bake_s)
        failures: list[str] = []
        results: list[str] = []
        for u in watched:
            ready = ready_count(u)
            if ready < len(u.containers):
                failures.append(
                    f"gate readiness failed for {u.key}: {ready} of {len(u.containers)} replicas ready"
                )
            delta = scrape(u) - before[u.key]
            for g in gates.evaluate(delta, policy.max_error_rate, policy.max_p99_ms, policy.min_requests):
                results.append(f"{u.key} {g.describe()}")
                if not g.ok:
                    failures.append(f"gate {g.gate} failed for {u.key}: measured {g.describe()}")
        record.append(line + (f" — {'; '.join(results)}" if results else " — no scoring requests"))
        log(record[-1])
        if failures:
            if not policy.auto_rollback:
                log("auto_rollback is off: continuing despite " + "; ".join(failures))
                record.append("gates failed (auto_rollback off): " + "; ".join(failures))
                continue
            router.route(*to_router(everything, old_weights))
            time.sleep(1.0)  # requests already sent to the new revision finish
            for u in new_only:
                remove_containers(u.containers, log, grace_s=10)
            raise RolloutFailed(
                f"rollout stopped at step {i + 1}/{len(maps)} ({describe(weights)}) and rolled back to "
                f"{describe(old_weights)}: " + "; ".join(failures)
            )
    log(f"rollout done in {time.monotonic() - started:.1f} s")
    return record


def find_containers(endpoint: str | None = None) -> list[dict[str, Any]]:
    """Every container mlinfra endpoints run on this Docker engine, with their labels."""
    flt = f"label=mlinfra.io/endpoint={endpoint}" if endpoint else "label=mlinfra.io/endpoint"
    r = docker("ps", "-a", "--filter", flt, "--format", "{{json .}}", check=False)
    out = []
    for line in r.stdout.splitlines():
        with contextlib.suppress(ValueError):
            d = json.loads(line)
            labels = dict(kv.split("=", 1) for kv in d.get("Labels", "").split(",") if "=" in kv)
            out.append({"name": d["Names"], "state": d.get("State", ""), "labels": labels})
    return out
