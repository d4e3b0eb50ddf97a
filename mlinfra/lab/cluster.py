"""A local Kubernetes control plane for tests and demos: kube-apiserver, etcd, kube-controller-manager,
kube-scheduler and kwok (simulated nodes and pods, so Deployments become Available and pulumi-kubernetes' await
logic runs for real), all built from Go modules by `make kube` and bound to 127.0.0.1. With ``real_node=True`` kwok's
controller is left out (it would take over every node) and :mod:`mlinfra.lab.node` adds a real kubelet.

    with LocalCluster.start("demo") as cluster:
        print(cluster.kubeconfig)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlinfra.engine import cache_dir, pinned_versions
from mlinfra.errors import KubeError


def kube_bin_dir() -> Path:
    v = pinned_versions()
    return (
        cache_dir()
        / "kube"
        / (f"k8s-v{v.get('KUBERNETES_VERSION')}-etcd-v{v.get('ETCD_VERSION')}-kwok-v{v.get('KWOK_VERSION')}")
        / "bin"
    )


BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
)

FAKE_NODE = """apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations: {{node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}}
  labels: {{kubernetes.io/hostname: {name}, type: kwok}}
spec:
  taints: [{{effect: NoSchedule, key: kwok.x-k8s.io/node, value: fake}}]
status:
  allocatable: {{cpu: "32", memory: 256Gi, pods: "110"}}
  capacity: {{cpu: "32", memory: 256Gi, pods: "110"}}
"""


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


LEASE_ARGS = {"leader-elect-lease-duration": "60s", "leader-elect-renew-deadline": "45s"}
"""The controller manager's and the scheduler's leader election, tolerant of a slow API server: with the defaults
(renew within 10 s), an API server slowed down by a busy machine made the controller manager lose its lease and
exit, and nothing restarts it (Deployments then get no pods, namespaces never finish deleting). Leader election
itself stays on: without it the controller manager exits at once when the API server is not healthy yet."""


@dataclass
class LocalCluster:
    name: str
    workdir: Path
    kubeconfig: Path
    server: str

    @staticmethod
    def start(
        name: str, workdir: Path | None = None, nodes: int = 1, timeout_s: int = 120, real_node: bool = False
    ) -> LocalCluster:
        bins = kube_bin_dir()
        missing = [b for b in BINARIES if not (bins / b).exists()]
        if missing:
            raise KubeError(
                f"the local control plane is not built ({', '.join(missing)} missing in {bins}): "
                "run `make kube`"
            )
        workdir = workdir or cache_dir() / "kwok"
        workdir.mkdir(parents=True, exist_ok=True)
        api, etcd, peer, kcm, sched, ctl = free_ports(6)
        config = workdir / f"{name}-kwokctl.yaml"
        pki = workdir / "clusters" / name / "pki"
        # A real kubelet authenticates the API server (logs, exec, port-forward) by client certificate.
        kubelet_client = (
            f", {{key: kubelet-client-certificate, value: {pki / 'admin.crt'}}}, "
            f"{{key: kubelet-client-key, value: {pki / 'admin.key'}}}"
            if real_node
            else ""
        )
        # HPAs re-evaluate every 5 s instead of 15 s: scale-outs show in tests and demos sooner.
        hpa_sync = ", {key: horizontal-pod-autoscaler-sync-period, value: 5s}"
        single = "".join(f", {{key: {k}, value: {v}}}" for k, v in LEASE_ARGS.items())
        config.write_text(f"""kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
componentsPatches:
- name: kube-apiserver
  extraArgs: [{{key: bind-address, value: 127.0.0.1}}{kubelet_client}]
- name: kube-controller-manager
  extraArgs: [{{key: bind-address, value: 127.0.0.1}}{hpa_sync}{single}]
- name: kube-scheduler
  extraArgs: [{{key: bind-address, value: 127.0.0.1}}{single}]
- name: etcd
  extraArgs:
  - {{key: listen-client-urls, value: "http://127.0.0.1:{etcd}"}}
  - {{key: listen-peer-urls, value: "http://127.0.0.1:{peer}"}}
- name: kwok-controller
  extraArgs: [{{key: server-address, value: "127.0.0.1:{ctl}"}}]
""")
        env = {**os.environ, "KWOK_WORKDIR": str(workdir)}
        cmd = [
            str(bins / "kwokctl"),
            "-c",
            str(config),
            "create",
            "cluster",
            "--name",
            name,
            "--runtime",
            "binary",
            "--kube-apiserver-port",
            str(api),
            "--etcd-port",
            str(etcd),
            "--kube-controller-manager-port",
            str(kcm),
            "--kube-scheduler-port",
            str(sched),
            "--controller-port",
            str(ctl),
            "--timeout",
            f"{timeout_s}s",
        ]
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"):
            cmd += [f"--{b}-binary", str(bins / b)]
        cmd += ["--kwok-controller-binary", str(bins / "kwok")]
        if real_node:
            cmd += ["--disable", "kwok-controller"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s + 30)
        if res.returncode != 0:
            raise KubeError(f"kwokctl could not start cluster {name}: {res.stderr.strip()[-800:]}")
        cluster = LocalCluster(
            name, workdir, workdir / "clusters" / name / "kubeconfig.yaml", f"https://127.0.0.1:{api}"
        )
        cluster.wait_ready(timeout_s)
        for i in range(nodes):
            cluster.kubectl("apply", "-f", "-", stdin=FAKE_NODE.format(name=f"kwok-node-{i}"))
        return cluster

    def wait_ready(self, timeout_s: float, check: bool = True) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            if time.monotonic() > deadline:
                if check:
                    raise KubeError(
                        f"cluster {self.name}: the API server at {self.server} never became ready"
                    )
                return False
            time.sleep(0.3)
        return True

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and res.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)} on cluster {self.name}: {res.stderr.strip()[-500:]}")
        return res

    def stop(self, keep: bool = False) -> None:
        """Delete the cluster, or with ``keep`` only stop its processes (``kwokctl start cluster`` resumes it)."""
        env = {**os.environ, "KWOK_WORKDIR": str(self.workdir)}
        subprocess.run(
            [str(kube_bin_dir() / "kwokctl"), "stop" if keep else "delete", "cluster", "--name", self.name],
            env=env,
            capture_output=True,
            timeout=120,
        )
        if not keep:
            shutil.rmtree(self.workdir / "clusters" / self.name, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
