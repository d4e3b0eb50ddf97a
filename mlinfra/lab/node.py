"""A single-node Kubernetes cluster that runs real pods, on loopback: `mlinfra services up kubernetes`.

The control plane is the kwok one (:mod:`mlinfra.lab.cluster`, kube-apiserver + etcd + controller-manager +
scheduler) with kwok's controller disabled, plus a real node:

==============  =====================================================================================================
containerd      Debian's, an instance of our own (own socket, root and state under the service folder) beside
                Docker's; the CRI sandbox image is the pause binary built by ``make kube``, pushed to the local
                registry; the local registry is reached over plain HTTP.
CNI             Debian's plugins: bridge ``mlinfra0`` (pods in ``POD_CIDR``), host-local IPAM, portmap, firewall.
                No masquerading, and a REJECT for anything forwarded from the pod range beyond it: pods reach this
                machine (registry, services on the bridge address) and nothing else.
kubelet         node ``localhost`` (the API server reaches kubelets by node name), on 127.0.0.1, x509 + webhook auth,
                cgroupfs; ``oomScoreAdj: 0`` — root here lacks CAP_SYS_RESOURCE and runc fails every sandbox if
                anything asks for a negative ``oom_score_adj``.
kube-proxy      iptables mode: ClusterIPs work from the host and from pods (there is no cluster DNS: use ClusterIPs).
metrics-server  on 127.0.0.1, registered as ``v1beta1.metrics.k8s.io``: HorizontalPodAutoscalers scale on real CPU.
==============  =====================================================================================================

Every process is started detached like the other services (:mod:`mlinfra.lab.services`: PID file and log in
``<cache>/services/kubernetes-<component>/``); :func:`stop` stops those PIDs only, then
removes what the kubelet, containerd and the CNI plugins leave on the host (pod sandboxes, mounts, the bridge, their
iptables chains, kubepods cgroups, ``/var/lib/cni``/``/run/netns`` entries of ours) — never Docker's.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlinfra.defaults import registry_host, registry_url, state_dir
from mlinfra.engine import pinned_versions
from mlinfra.errors import ServiceError
from mlinfra.lab import services
from mlinfra.lab.cluster import LocalCluster, free_ports, kube_bin_dir

NAME = "mlinfra"
"""The cluster's name (kwokctl's, and the kubeconfig's context ``kwok-mlinfra``)."""
NODE = "localhost"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "mlinfra0"
CHAIN = "MLINFRA-PODS"
PAUSE_REPO = "mlinfra/pause"
CNI_BIN = Path("/usr/lib/cni")
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "metrics-server")
NODE_BINARIES = ("kubelet", "kube-proxy", "metrics-server", "pause")
"""Built by `make kube` beside the control plane's (:data:`mlinfra.lab.cluster.BINARIES`)."""


def home() -> Path:
    return state_dir("kubernetes")


def kubeconfig_path() -> Path:
    return home() / "kwok" / "clusters" / NAME / "kubeconfig.yaml"


def _sock() -> Path:
    return home() / "containerd" / "containerd.sock"


def pause_image() -> str:
    return f"{registry_host()}/{PAUSE_REPO}:{pinned_versions().get('KUBERNETES_VERSION', 'dev')}"


# --------------------------------------------------------------------------------------------------------------
# processes


def _service(component: str) -> str:
    """Each component is a process of :mod:`mlinfra.lab.services`' kind: PID file and log under its own name."""
    return f"kubernetes-{component}"


def _pid(component: str) -> int | None:
    return services._read_pid(_service(component))


def _log(component: str) -> Path:
    return state_dir(_service(component)) / f"{_service(component)}.log"


def _tail(component: str) -> str:
    return services._tail(_log(component), 12)


def _spawn(component: str, argv: list[str]) -> int:
    return services._spawn(_service(component), argv)


def _until(what: str, component: str, ok, timeout_s: float, watch: tuple[str, ...] = ()) -> None:
    """Wait for ok(); fail naming the first of COMPONENT and WATCH that died (with its log), or the timeout."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        for c in (component, *watch):
            if _pid(c) is None:
                raise ServiceError(f"kubernetes: {c} exited while {what}; its log ends with:\n{_tail(c)}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"kubernetes: {what} took over {timeout_s:.0f} s; {component}'s log ({_log(component)}) ends "
                f"with:\n{_tail(component)}"
            )
        time.sleep(0.2)


def _stop_pid(component: str) -> bool:
    return services._stop(_service(component), timeout=20)


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise ServiceError(
            f"kubernetes: {' '.join(argv[:4])} failed: {(res.stderr or res.stdout).strip()[-600:]}"
        )
    return res


# --------------------------------------------------------------------------------------------------------------
# pieces


def _spawn_kubelet(argv: list[str], tries: int = 5) -> None:
    """Start the kubelet; start it again while it exits because containerd's CRI service, whose socket already
    answers, has not finished initializing ("server is not initialized yet": seen on a cold `make services`, the
    kubelet validates the runtime within a second of starting). Any other exit is left for the caller's wait to
    report with the log."""
    for _ in range(tries):
        _spawn("kubelet", argv)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and _pid("kubelet") is not None:
            time.sleep(0.2)
        if _pid("kubelet") is not None or "not initialized yet" not in _tail("kubelet"):
            return
        time.sleep(1)


def _push_pause() -> str:
    """The kubelet's sandbox image: the pause binary as a one-file image in the local registry."""
    from mlinfra.images.oci import RegistryClient, image_config, push_image

    binary = kube_bin_dir() / "pause"
    if not binary.exists():
        raise ServiceError(f"kubernetes: {binary} is not built: run `make kube`")
    client = RegistryClient(registry_url())
    tag = pause_image().rsplit(":", 1)[1]
    if client.manifest_digest(PAUSE_REPO, tag) is not None:
        return pause_image()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with open(binary, "rb") as f:
            tar.addfile(info, f)
    layer = home() / "pause.tar.gz"
    layer.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    config = image_config(
        diff_ids=["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()],
        env=[],
        cmd=None,
        entrypoint=["/pause"],
        labels={"org.opencontainers.image.title": "pause (built by make kube)"},
        user="65535:65535",
    )
    push_image(client, PAUSE_REPO, tag, [layer], config)
    return pause_image()


def _containerd_config() -> Path:
    h = home() / "containerd"
    (h / "root").mkdir(parents=True, exist_ok=True)
    (h / "state").mkdir(parents=True, exist_ok=True)
    cni = home() / "cni"
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    reg = registry_host()
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{h / "root"}"
state = "{h / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{_sock()}"
[ttrpc]
  address = "{h / "ttrpc.sock"}"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{pause_image()}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / "net.d"}"
  [{cri}.registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
"""
    path = h / "config.toml"
    path.write_text(text)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "mlinfra",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(cni / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }
    (cni / "net.d" / "10-mlinfra.conflist").write_text(json.dumps(conflist, indent=1))
    return path


def _isolate() -> None:
    """Pods reach this machine and each other, nothing beyond: REJECT what is forwarded from the pod range to any
    other destination (ClusterIP traffic is DNAT-ed to pod IPs before FORWARD, so it passes). The CNI firewall
    plugin and kube-proxy insert their ACCEPTs at the top of FORWARD, so the check sits in CNI-ADMIN (the firewall
    plugin's chain for administrators' rules, which it keeps and evaluates before its own) and first in FORWARD."""
    _run(["iptables", "-w", "-N", CHAIN], check=False)
    _run(["iptables", "-w", "-F", CHAIN])
    _run(["iptables", "-w", "-A", CHAIN, "-s", POD_CIDR, "-d", POD_CIDR, "-j", "RETURN"])
    _run(
        [
            "iptables",
            "-w",
            "-A",
            CHAIN,
            "-s",
            POD_CIDR,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-net-prohibited",
        ]
    )
    _run(["iptables", "-w", "-N", "CNI-ADMIN"], check=False)
    if _run(["iptables", "-w", "-C", "CNI-ADMIN", "-j", CHAIN], check=False).returncode != 0:
        _run(["iptables", "-w", "-I", "CNI-ADMIN", "1", "-j", CHAIN])
    while _run(["iptables", "-w", "-D", "FORWARD", "-j", CHAIN], check=False).returncode == 0:
        pass
    _run(["iptables", "-w", "-I", "FORWARD", "1", "-j", CHAIN])


def _kubelet_config(ca: Path, ports: dict[str, int]) -> Path:
    h = home() / "kubelet"
    (h / "pki").mkdir(parents=True, exist_ok=True)
    path = home() / "kubelet-config.yaml"
    path.write_text(f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{_sock()}
address: 127.0.0.1
port: {ports["kubelet"]}
healthzBindAddress: 127.0.0.1
healthzPort: {ports["kubelet_healthz"]}
readOnlyPort: 0
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
oomScoreAdj: 0
serializeImagePulls: false
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
evictionHard: {{memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
syncFrequency: 10s
fileCheckFrequency: 10s
resolvConf: /etc/resolv.conf
""")
    return path


# --------------------------------------------------------------------------------------------------------------
# the cluster


@dataclass
class Status:
    kubeconfig: Path
    server: str
    node_ready: bool
    components: dict[str, int | None]

    def to_json(self) -> dict[str, object]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "node": NODE,
            "node_ready": self.node_ready,
            "pod_cidr": POD_CIDR,
            "pids": self.components,
        }


def local_cluster() -> LocalCluster:
    """The cluster as a :class:`LocalCluster` (for ``kubectl``), from its kubeconfig."""
    kc = kubeconfig_path()
    server = ""
    with contextlib.suppress(OSError):
        for line in kc.read_text().splitlines():
            if line.strip().startswith("server:"):
                server = line.split(":", 1)[1].strip()
                break
    return LocalCluster(NAME, home() / "kwok", kc, server)


def _control_plane_alive() -> bool:
    """Every control-plane process kwokctl started is alive (the API server answering is not enough: a controller
    manager that exited leaves Deployments without pods and namespaces never deleted)."""
    pids = home() / "kwok" / "clusters" / NAME / "pids"
    files = list(pids.glob("*.pid")) if pids.is_dir() else []
    if not files:
        return False
    for f in files:
        try:
            os.kill(int(f.read_text().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


def _single_instance_config() -> None:
    """A cluster created before the tolerant leader election (mlinfra.lab.cluster.LEASE_ARGS): add it to its saved
    configuration (the controller manager's and the scheduler's arguments are the ones with --kubeconfig)."""
    from mlinfra.lab.cluster import LEASE_ARGS

    path = home() / "kwok" / "clusters" / NAME / "kwok.yaml"
    if not path.exists():
        return
    text = path.read_text()
    if all(f"--{k}=" in text for k in LEASE_ARGS) and "--leader-elect=false" not in text:
        return
    out = []
    for line in text.splitlines():
        if line.strip() == "- --leader-elect=false" or any(
            line.strip().startswith(f"- --{k}=") for k in LEASE_ARGS
        ):
            continue
        out.append(line)
        if line.strip().startswith("- --kubeconfig="):
            indent = line.split("-", 1)[0]
            out += [f"{indent}- --{k}={v}" for k, v in LEASE_ARGS.items()]
    path.write_text("\n".join(out) + "\n")


def node_ready() -> bool:
    if not kubeconfig_path().exists() or any(_pid(c) is None for c in COMPONENTS):
        return False
    if not _control_plane_alive():
        return False
    res = local_cluster().kubectl(
        "get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
    )
    return res.returncode == 0 and res.stdout.strip() == "True"


def status() -> Status:
    c = local_cluster()
    return Status(c.kubeconfig, c.server, node_ready(), {k: _pid(k) for k in COMPONENTS})


def start(progress=print, timeout_s: float = 120) -> Status:
    """Start (or restart) the control plane and the node; idempotent: what runs is reused."""
    for tool in ("containerd", "iptables"):
        if shutil.which(tool) is None:
            raise ServiceError(f"kubernetes: {tool} is not installed: run `make setup`")
    if not (CNI_BIN / "bridge").exists():
        raise ServiceError(f"kubernetes: the CNI plugins are not in {CNI_BIN}: run `make setup`")
    if os.geteuid() != 0:
        raise ServiceError("kubernetes: a real node needs root (containerd, iptables, mounts): run as root")
    bins = kube_bin_dir()
    missing = [b for b in NODE_BINARIES if not (bins / b).exists()]
    if missing:
        raise ServiceError(f"kubernetes: {', '.join(missing)} not built in {bins}: run `make kube`")
    t0 = time.monotonic()
    cluster = _control_plane(timeout_s)
    pki = kubeconfig_path().parent / "pki"
    ports = json.loads((home() / "ports.json").read_text())
    kc = str(kubeconfig_path())

    if _pid("containerd") is None:
        config = _containerd_config()
        _spawn("containerd", ["containerd", "--config", str(config)])
        _until("containerd started", "containerd", lambda: _sock().exists(), 30)
    _push_pause()
    _isolate()
    # The pod bridge, before any pod (the CNI bridge plugin adopts it and adds the gateway address), so pods reach
    # Azurite on this machine's addresses from the start (mlinfra.lab.services.forward_loopback_to_containers).
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=False)
    _run(["ip", "link", "set", BRIDGE, "up"], check=False)
    services.forward_loopback_to_containers()
    if _pid("kubelet") is None:
        config = _kubelet_config(pki / "ca.crt", ports)
        _spawn_kubelet(
            [
                str(bins / "kubelet"),
                "--config",
                str(config),
                "--kubeconfig",
                kc,
                "--root-dir",
                str(home() / "kubelet"),
                "--cert-dir",
                str(home() / "kubelet" / "pki"),
                "--hostname-override",
                NODE,
                "--v",
                "1",
            ]
        )
    if _pid("kube-proxy") is None:
        _spawn(
            "kube-proxy",
            [
                str(bins / "kube-proxy"),
                "--kubeconfig",
                kc,
                "--proxy-mode",
                "iptables",
                "--hostname-override",
                NODE,
                "--cluster-cidr",
                POD_CIDR,
                "--oom-score-adj",
                "0",
                "--conntrack-max-per-core",
                "0",
                "--iptables-localhost-nodeports=false",
                "--metrics-bind-address",
                f"127.0.0.1:{ports['proxy_metrics']}",
                "--healthz-bind-address",
                f"127.0.0.1:{ports['proxy_healthz']}",
            ],
        )
    if _pid("metrics-server") is None:
        _spawn(
            "metrics-server",
            [
                str(bins / "metrics-server"),
                "--kubeconfig",
                kc,
                "--authentication-kubeconfig",
                kc,
                "--authorization-kubeconfig",
                kc,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(ports["metrics"]),
                "--cert-dir",
                str(home() / "metrics-server"),
                "--kubelet-insecure-tls",
                "--kubelet-preferred-address-types=Hostname",
                "--kubelet-use-node-status-port",
                "--metric-resolution=10s",
                "--kubelet-request-timeout=5s",
            ],
        )
        cluster.kubectl("apply", "-f", "-", stdin=_METRICS_API.format(port=ports["metrics"]))
    _until("the node became Ready", "kubelet", node_ready, timeout_s, watch=COMPONENTS)
    _isolate()  # first again, ahead of what the kubelet and kube-proxy inserted meanwhile
    # Pods are refused until the default ServiceAccount exists (≈1.5 s after the control plane is up).
    _until(
        "the default ServiceAccount appeared",
        "kubelet",
        lambda: cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
    )
    progress(f"kubernetes: node {NODE} Ready ({time.monotonic() - t0:.1f} s)")
    return status()


_METRICS_API = """apiVersion: v1
kind: Service
metadata: {{name: metrics-server, namespace: kube-system}}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{{name: https, port: {port}, targetPort: {port}}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.metrics.k8s.io}}
spec:
  service: {{name: metrics-server, namespace: kube-system, port: {port}}}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"""


def _control_plane(timeout_s: float) -> LocalCluster:
    ports_file = home() / "ports.json"
    cluster = local_cluster()
    _single_instance_config()
    if (
        cluster.server
        and _control_plane_alive()
        and cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0
    ):
        return cluster
    if not ports_file.exists():
        names = ("kubelet", "kubelet_healthz", "proxy_metrics", "proxy_healthz", "metrics")
        ports_file.write_text(json.dumps(dict(zip(names, free_ports(len(names)), strict=True))))
    if (home() / "kwok" / "clusters" / NAME).exists():
        # Stopped (machine restart, services down) or a component died: start it again with its etcd data.
        if cluster.server:
            LocalCluster(NAME, home() / "kwok", kubeconfig_path(), "").stop(keep=True)
        res = subprocess.run(
            [str(kube_bin_dir() / "kwokctl"), "start", "cluster", "--name", NAME],
            env={**os.environ, "KWOK_WORKDIR": str(home() / "kwok")},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        cluster = local_cluster()
        if res.returncode == 0 and cluster.wait_ready(timeout_s, check=False):
            return cluster
        LocalCluster(NAME, home() / "kwok", kubeconfig_path(), "").stop()
    return LocalCluster.start(NAME, home() / "kwok", nodes=0, timeout_s=int(timeout_s), real_node=True)


def stop(progress=print) -> bool:
    """Stop what :func:`start` started (by PID) and clean the host; True if anything was running."""
    ran = any(_pid(c) is not None for c in COMPONENTS) or kubeconfig_path().exists()
    for c in ("metrics-server", "kube-proxy", "kubelet"):
        _stop_pid(c)
    _kill_sandboxes()
    _stop_pid("containerd")
    _clean_host()
    if kubeconfig_path().exists():
        LocalCluster(NAME, home() / "kwok", kubeconfig_path(), "").stop(keep=True)
    if ran:
        progress("kubernetes   stopped")
    return ran


def _kill_sandboxes() -> None:
    """Stop every container our containerd runs (their shims would outlive it) through its own `ctr`."""
    if _pid("containerd") is None or shutil.which("ctr") is None:
        return
    ctr = ["ctr", "--address", str(_sock()), "--namespace", "k8s.io"]
    tasks = _run([*ctr, "tasks", "list", "-q"], check=False).stdout.split()
    for t in tasks:
        _run([*ctr, "tasks", "kill", "--signal", "SIGKILL", t], check=False)
    deadline = time.monotonic() + 15
    for t in tasks:
        while _run([*ctr, "tasks", "delete", t], check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    for c in _run([*ctr, "containers", "list", "-q"], check=False).stdout.split():
        _run([*ctr, "containers", "delete", c], check=False)


def _clean_host() -> None:
    """What the kubelet, containerd and CNI leave on the host whatever their root dirs say (ours only)."""
    h = home()
    # mounts under our dirs (pod volumes, overlay snapshots, sandbox shm), deepest first
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(h) + "/")), key=len, reverse=True):
            _run(["umount", "-l", m], check=False)
    netns = Path("/run/netns")
    if netns.is_dir():
        for ns in netns.glob("cni-*"):
            _run(["ip", "netns", "delete", ns.name], check=False)
    _run(["ip", "link", "delete", BRIDGE], check=False)
    for d in (h / "kubelet", h / "containerd" / "state", h / "cni" / "ipam"):
        shutil.rmtree(d, ignore_errors=True)
    # Docker's containerd keeps its own shims' sockets in /run/containerd/s: never touched.
    for d in (Path("/run/containerd/runc/k8s.io"), Path("/var/lib/kubelet/device-plugins")):
        shutil.rmtree(d, ignore_errors=True)
    for log in Path("/var/log/containers").glob("*.log") if Path("/var/log/containers").is_dir() else []:
        log.unlink(missing_ok=True)
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for r in results.glob("mlinfra-*"):
            r.unlink(missing_ok=True)
    # kube-proxy's rules (its own cleanup), the kubelet's and the CNI plugins' chains, our isolation chain
    _run([str(kube_bin_dir() / "kube-proxy"), "--cleanup"], check=False)
    _drop_chains()
    for cg in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for d in sorted(cg.rglob("*"), key=lambda p: len(str(p)), reverse=True):
            if d.is_dir():
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            cg.rmdir()


def _drop_chains() -> None:
    """Remove the iptables chains named KUBE-*, CNI-* and ours, with the jumps to them from other chains."""
    import shlex

    def ours(chain: str) -> bool:
        return chain.startswith(("KUBE-", "CNI-", CHAIN))

    for table in ("filter", "nat", "mangle"):
        lines = _run(["iptables-save", "-t", table], check=False).stdout.splitlines()
        chains = [ln[1:].split()[0] for ln in lines if ln.startswith(":") and ours(ln[1:].split()[0])]
        for line in lines:
            if not line.startswith("-A "):
                continue
            parts = shlex.split(line)
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if not ours(parts[1]) and ours(target):
                _run(["iptables", "-w", "-t", table, "-D", *parts[1:]], check=False)
        for op in ("-F", "-X"):
            for chain in chains:
                _run(["iptables", "-w", "-t", table, op, chain], check=False)
