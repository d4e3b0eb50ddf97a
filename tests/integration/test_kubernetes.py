"""CloudEndpoint on the local single-node cluster with real pods (`mlinfra services up kubernetes`): pods pull the
scoring images from the local registry and run; the router scores with a key; a second `up` changes nothing; a new
image rolls out under load with no failed request; the HorizontalPodAutoscaler adds a pod on real CPU and the next
`up` keeps it; pods reach nothing beyond this machine; `destroy` leaves the namespace empty."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.images.builder import ImageSpec, ModelInput, build_and_push
from mlinfra.lab.cluster import LocalCluster
from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from tests.endpoint_helpers import ROW, Load
from tests.waiting import until

JSON = "application/json"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(local_services) -> LocalCluster:
    from mlinfra.lab import node

    local_services("registry", "python-base", "router-base", "kubernetes")
    return node.local_cluster()


@pytest.fixture(scope="module")
def images(tmp_path_factory, local_services) -> dict[str, str]:
    local_services("docker", "registry", "python-base")
    tmp = tmp_path_factory.mktemp("k8s-images")
    reg_uri = f"file://{tmp / 'registry'}"
    reg = ModelRegistry(reg_uri)
    out = {}
    for tag, seed in (("v1", 1), ("v2", 2)):
        mv, _ = reg.register("mlp", write_mlp(tmp / f"{tag}.onnx", seed=seed))
        spec = ImageSpec(
            repository="127.0.0.1:5000/mlinfra-test/k8s",
            models=[ModelInput("mlp", mv.version, mv.sha256, reg_uri)],
            base="127.0.0.1:5000/mlinfra/python-base:bookworm",
        )
        out[tag] = build_and_push(spec).image_ref
    out["tampered"] = _tampered_signed_image(tmp, reg)
    return out


def _tampered_signed_image(tmp, signed_reg: ModelRegistry) -> str:
    """An image whose model bytes are not the ones signed: mlp:1 was signed in SIGNED_REG; another registry holds
    other bytes as mlp:1 with that bundle beside them, and the image is built from it with the signer trusted."""
    from mlinfra.registry.signing import sign_version, signatures
    from tests.signing_helpers import ec_keypair

    private, public = ec_keypair()
    kid = sign_version(signed_reg, "mlp", 1, private)
    forged_uri = f"file://{tmp / 'forged-registry'}"
    forged = ModelRegistry(forged_uri)
    mv, _ = forged.register("mlp", write_mlp(tmp / "forged.onnx", seed=99))
    forged.store.put(f"models/mlp/signatures/{1:010d}/{kid}.json", signatures(signed_reg, "mlp", 1)[kid])
    spec = ImageSpec(
        repository="127.0.0.1:5000/mlinfra-test/k8s",
        models=[ModelInput("mlp", mv.version, mv.sha256, forged_uri)],
        base="127.0.0.1:5000/mlinfra/python-base:bookworm",
        trusted_keys=[public],
    )
    return build_and_push(spec).image_ref


def _post(url: str, key: str | None, body: dict, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def _grpc_infer(target: str, key: str | None) -> tuple[str, list[float]] | None:
    """One ModelInfer of ROW through TARGET: (the answering deployment, the output); None while not reachable."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.array([ROW], dtype=np.float32).tobytes())
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            resp, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and key:
                return None
            raise
    deployment = dict(call.initial_metadata()).get("x-mlinfra-deployment", "")
    return str(deployment), np.frombuffer(resp.raw_output_contents[0], dtype="<f4").tolist()


def _router(cluster: LocalCluster, ns: str, svc: str) -> str:
    ip = cluster.kubectl("get", "svc", svc, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    return f"http://{ip}"


def _pods(cluster: LocalCluster, ns: str, selector: str) -> list[dict]:
    """The pods that serve (not those being deleted)."""
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if p["metadata"].get("deletionTimestamp") is None]


def _images(cluster: LocalCluster, ns: str, selector: str) -> set[str]:
    """The images the serving pods are told to run (a pod just added has no imageID yet)."""
    return {p["spec"]["containers"][0]["image"] for p in _pods(cluster, ns, selector)}


def blue(image: str) -> dict:
    return {
        "image": image,
        "cpu": 0.1,
        "autoscale": {"min_replicas": 1, "max_replicas": 3, "cpu_target_percent": 30},
    }


def test_endpoint_runs_real_pods(cluster, images, program, backend) -> None:
    ns = "ep-real"
    st = local_stack(
        program("k8s-endpoint"),
        "real",
        backend,
        {
            "deployments": json.dumps({"blue": blue(images["v1"])}),
            "namespace": ns,
            "kubeconfig": str(cluster.kubeconfig),
            "rollout": json.dumps({"steps": [25, 100], "bake_s": 3, "readiness_timeout_s": 90}),
        },
    )
    try:
        res = st.up(on_output=lambda _m: None)
        key = res.outputs["primary_key"].value
        pods = _pods(cluster, ns, "mlinfra.io/deployment=blue")
        assert pods and all(p["status"]["phase"] == "Running" for p in pods), pods
        # the image ran from the local registry, by digest
        assert pods[0]["status"]["containerStatuses"][0]["imageID"].endswith(images["v1"].split("@", 1)[1])
        router = _router(cluster, ns, "scoring-real")

        def scored():
            code, body = _post(f"{router}/score", key, {"data": [ROW]})
            return body if code == 200 else None

        first = until("the router answers", scored)
        assert isinstance(first, list) and len(first[0]) > 0, first
        assert _post(f"{router}/score", None, {"data": [ROW]})[0] == 401
        assert _post(f"{router}/score", "not-the-key", {"data": [ROW]})[0] == 401
        # gRPC through the router's Service (port 81), with the same key rule.
        assert res.outputs["grpc_uri"].value == f"scoring-real.{ns}.svc.cluster.local:81"
        grpc_target = router.removeprefix("http://") + ":81"
        answer = until("the router answers gRPC", lambda: _grpc_infer(grpc_target, key))
        assert answer[0] == "blue" and len(answer[1]) == 10, answer
        with pytest.raises(grpc.RpcError) as e:
            _grpc_infer(grpc_target, None)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The pods answer only the router (an internal key from a Secret): straight to a pod, a client key is refused.
        pod_ip = _pods(cluster, ns, "mlinfra.io/deployment=blue")[0]["status"]["podIP"]
        assert _post(f"http://{pod_ip}:8080/score", key, {"data": [ROW]})[0] == 401
        assert _post(f"http://{pod_ip}:8080/score", None, {"data": [ROW]})[0] == 401
        policy = json.loads(
            cluster.kubectl("get", "netpol", "scoring-real-scorers", "-n", ns, "-o", "json").stdout
        )
        assert (
            policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["mlinfra.io/role"]
            == "router"
        )

        again = st.preview(on_output=lambda _m: None)
        assert not {k: v for k, v in again.change_summary.items() if k != "same"}, again.change_summary

        st.set_config("deployments", auto.ConfigValue(json.dumps({"blue": blue(images["v2"])})))
        pre = st.preview(on_output=lambda _m: None, diff=True)
        assert pre.change_summary.get("update", 0) >= 1, pre.change_summary

        assert "step 1/2: blue@" in pre.stdout, "preview shows the rollout's planned steps"

        def slots() -> dict[str, int]:
            """The deployment's slot Deployments: {name: replicas} (one, except during a rollout)."""
            items = json.loads(
                cluster.kubectl(
                    "get", "deploy", "-n", ns, "-l", "mlinfra.io/endpoint=scoring-real,mlinfra.io/deployment=blue",
                    "-o", "json",
                ).stdout
            )["items"]  # fmt: skip
            return {d["metadata"]["name"]: int(d["spec"].get("replicas") or 0) for d in items}

        def replicas() -> int:
            return max(slots().values())

        # Under continuous load: the roll to v2 fails no request, and the load's CPU makes the
        # HorizontalPodAutoscaler (metrics-server, real CPU) add a pod.
        with Load(f"{router}:80/score", key, threads=4) as load:
            rolled = st.up(on_output=lambda _m: None)
            # The rollout engine moved traffic in the policy's steps, gated on the new pods' own metrics.
            steps = rolled.outputs["last_rollout"].value
            assert len(steps) == 2 and steps[0].startswith("step 1/2: blue@"), steps
            assert "error_rate" in steps[0] and "no scoring requests" not in steps[0], steps
            # the rollout completed: soon every pod that is not terminating runs v2 (the old slot's pods get their
            # deletion mark from the garbage collector a moment after `up`; a pod the HPA just added has no
            # imageID yet: compare what the pods are told to run)
            until(
                "only v2 pods serve",
                lambda: _images(cluster, ns, "mlinfra.io/deployment=blue") == {images["v2"]},
                30,
            )
            until("the HorizontalPodAutoscaler adds a pod under load", lambda: replicas() > 1, 180)
        assert load.total > 50 and load.failed == 0, (load.total, load.statuses, load.errors)
        # v2 answers (a v1 pod may still answer on the router's pooled connections while it drains: a few seconds)
        until("v2 answers", lambda: (b := scored()) is not None and b != first, 60)
        scaled = replicas()
        res = st.up(on_output=lambda _m: None)
        assert not {k: v for k, v in res.summary.resource_changes.items() if k != "same"}, (
            res.summary.resource_changes
        )
        # `up` never resets what the autoscaler chose (it scales in only after its 5-minute stabilization window)
        assert replicas() == scaled
        v2 = scored()

        # A v3 whose image the node cannot pull: the readiness gate fails at once, naming the image and the pull
        # error; no traffic moved, v2 serves 100 % and v3's slot is gone.
        bad = images["v2"].split("@", 1)[0] + "@sha256:" + "0" * 64
        st.set_config("deployments", auto.ConfigValue(json.dumps({"blue": blue(bad)})))
        t0 = time.monotonic()
        with pytest.raises(auto.CommandError) as failed:
            st.up(on_output=lambda _m: None)
        assert time.monotonic() - t0 < 75, "an unpullable image fails fast, not at the readiness timeout"
        assert "gate readiness failed" in str(failed.value) and "cannot pull image" in str(failed.value)
        assert bad in str(failed.value), str(failed.value)[-2000:]
        assert len(slots()) == 1, slots()
        assert all(scored() == v2 for _ in range(20)), "v2 still serves every request"
        # A v3 whose model does not match its signature: the server refuses it at load and exits, the pod
        # crash-loops, the gate fails naming the version and what changed; v2 keeps serving.
        st.set_config("deployments", auto.ConfigValue(json.dumps({"blue": blue(images["tampered"])})))
        t0 = time.monotonic()
        with pytest.raises(auto.CommandError) as refused:
            st.up(on_output=lambda _m: None)
        took = time.monotonic() - t0
        msg = str(refused.value)
        assert "gate readiness failed" in msg and "crash-loops" in msg, msg[-2000:]
        assert "model mlp:1 refused" in msg and "changed: ." in msg, msg[-2000:]
        assert took < 100, f"the refused model failed the up only after {took:.0f} s"
        assert all(scored() == v2 for _ in range(20)), "v2 still serves every request"
        st.set_config("deployments", auto.ConfigValue(json.dumps({"blue": blue(images["v2"])})))

        # Pods reach this machine, never beyond it: a TEST-NET-2 address (RFC 5737) is refused at once.
        pod = _pods(cluster, ns, "mlinfra.io/deployment=blue")[0]["metadata"]["name"]
        probe = cluster.kubectl(
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "python3",
            "-c",
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(5)\n"
            "try:\n s.connect(('198.51.100.1', 80)); print('connected')\n"
            "except OSError as e: print(type(e).__name__, e.errno)",
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert "connected" not in probe.stdout and "timeout" not in probe.stdout.lower(), probe.stdout
    finally:
        st.destroy(on_output=lambda _m: None)
    left = cluster.kubectl("get", "all,cm,secret,pdb,hpa", "-n", ns, "-o", "name", check=False).stdout.split()
    assert [x for x in left if "kube-root-ca" not in x and "default-token" not in x] == [], left


def test_services_status_json_names_the_kubeconfig(cluster) -> None:
    import contextlib
    import io

    from mlinfra.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["services", "status", "kubernetes", "--json"]) == 0
    got = json.loads(buf.getvalue())
    assert got["up"] is True and got["node_ready"] is True
    assert got["kubeconfig"] == str(cluster.kubeconfig)
    r = cluster.kubectl("--kubeconfig", got["kubeconfig"], "get", "node", "localhost", "-o", "name")
    assert r.stdout.strip() == "node/localhost"


def test_tls_client_certificates_on_kubernetes(cluster, images, program, backend, tmp_path) -> None:
    import http.client
    import ssl

    from tests.integration.test_cloud_endpoint import _tls_material

    _tls_material(tmp_path)
    ns = "ep-tls"
    st = local_stack(
        program("k8s-endpoint"),
        "tls",
        backend,
        {
            "deployments": json.dumps({"blue": {"image": images["v1"]}}),
            "namespace": ns,
            "kubeconfig": str(cluster.kubeconfig),
            "auth": "tls",
            "tls_dir": str(tmp_path),
        },
    )
    try:
        out = st.up(on_output=lambda _m: None).outputs
        assert out["scoring_uri"].value.startswith("https://") and (
            "primary_key" not in out or out["primary_key"].value is None
        )
        ip = cluster.kubectl("get", "svc", "scoring-tls", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout

        def post(cert: str | None) -> int | str:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            ctx.check_hostname = False  # the test certificate names 127.0.0.1, not the ClusterIP
            if cert:
                ctx.load_cert_chain(str(tmp_path / f"{cert}.pem"), str(tmp_path / f"{cert}.key"))
            conn = http.client.HTTPSConnection(ip, 443, context=ctx, timeout=10)
            try:
                conn.request(
                    "POST", "/score", body=json.dumps({"data": [ROW]}), headers={"Content-Type": JSON}
                )
                return conn.getresponse().status
            except OSError as e:
                return type(e).__name__
            finally:
                conn.close()

        assert until("the TLS router answers", lambda: post("client") == 200, 60)
        assert post(None) == 403
        assert post("rogue") in (400, 403)  # a certificate the endpoint CA did not sign
        # The key never reaches the cluster in plain sight: only in the Secret the router mounts.
        conf = cluster.kubectl("get", "cm", "scoring-tls-router", "-n", ns, "-o", "jsonpath={.data}").stdout
        assert "PRIVATE KEY" not in conf and "ssl_verify_client optional;" in conf
    finally:
        st.destroy(on_output=lambda _m: None)


def test_pods_collect_data_into_azurite_and_bad_pods_fail_fast(
    cluster, images, program, backend, local_services
) -> None:
    """Pods record what they score into Azurite on this machine (bound to 127.0.0.1): a loopback sink is addressed
    at the pod's node, whose Azurite port the lab forwards from the pod bridge to loopback."""
    import os

    from azure.storage.blob import ContainerClient

    from mlinfra.lab import services

    local_services("azurite")
    ns = "ep-collect"
    container = f"k8s-collected-{os.getpid()}"
    st = local_stack(
        program("k8s-endpoint"),
        "collect",
        backend,
        {
            "deployments": json.dumps({"blue": {"image": images["v1"], "cpu": 0.25}}),
            "namespace": ns,
            "kubeconfig": str(cluster.kubeconfig),
            "storage": f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}",
            "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
        },
    )
    try:
        res = st.up(on_output=lambda _m: None)
        key = res.outputs["primary_key"].value
        router = _router(cluster, ns, "scoring-collect")
        until("the router answers", lambda: _post(f"{router}/score", key, {"data": [ROW]})[0] == 200)
        for _ in range(10):
            assert _post(f"{router}/score", key, {"data": [ROW]})[0] == 200
        c = ContainerClient(
            services.azurite_blob_url(), container,
            credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
        )  # fmt: skip

        def records() -> int:
            lines = [
                line
                for b in c.list_blobs()
                for line in c.download_blob(b.name).readall().decode().splitlines()
                if line.strip()
            ]
            return len(lines) if len(lines) >= 10 else 0

        assert until("the pods' records reach Azurite", records, 60) >= 10

        # Bad pods fail the `up` fast, naming the reason, and v1 keeps serving: a pod the node cannot fit (the
        # scheduler's message), then one that crash-loops (its last log lines).
        for change, words in (
            ({"cpu": 64}, ("cannot be scheduled", "Insufficient cpu")),
            ({"env": {"MLINFRA_SERVE_MAX_BATCH_SIZE": "lots"}}, ("crash-loops", "is not a number")),
        ):
            st.set_config(
                "deployments",
                auto.ConfigValue(json.dumps({"blue": {"image": images["v2"], "cpu": 0.25, **change}})),
            )
            started = time.monotonic()
            with pytest.raises(auto.CommandError) as e:
                st.up(on_output=lambda _m: None)
            took = time.monotonic() - started
            assert all(w in str(e.value) for w in words), str(e.value)[-2000:]
            assert took < 100, f"{change}: the up failed only after {took:.0f} s"
            assert _post(f"{router}/score", key, {"data": [ROW]})[0] == 200
            until(  # the failed slot's pods are deleted in the background, a moment after the up
                "only v1 pods are left",
                lambda: _images(cluster, ns, "mlinfra.io/deployment=blue") == {images["v1"]},
                30,
            )
    finally:
        st.destroy(on_output=lambda _m: None)


def test_a_model_monitor_runs_as_a_cron_job(
    cluster, images, program, backend, local_services, tmp_path
) -> None:
    """ModelMonitor on Kubernetes: a CronJob whose pod (the scoring image's runtime) reads the records in Azurite at
    its node's address with its read + list SAS, passes on the baseline's distribution, fails (the Job marked
    failed) on one shifted feature and flags only it; a second up changes nothing; destroy removes the CronJob and
    keeps the reports."""
    import os

    from azure.storage.blob import ContainerClient

    from mlinfra.lab import services

    local_services("azurite")
    container = f"k8s-monitored-{os.getpid()}"
    c = ContainerClient(
        services.azurite_blob_url(), container,
        credential={"account_name": services.AZURITE_ACCOUNT, "account_key": services.AZURITE_KEY},
    )  # fmt: skip
    rng = np.random.default_rng(31)
    np.save(tmp_path / "baseline.npy", rng.normal(size=(5_000, 64)))

    def collect(name: str, rows: np.ndarray) -> None:
        from datetime import UTC, datetime

        from mlinfra_scoring.monitor import stamp

        now = stamp(datetime.now(UTC))  # after the previous run's window, before the next one's end
        lines = [json.dumps({"time": now, "inputs": {"input": [r.tolist()]}}) for r in rows]
        c.upload_blob(f"ep/blue/mlp/1/{name}.jsonl", "\n".join(lines).encode(), overwrite=True)

    def run(job: str) -> dict:
        cluster.kubectl("create", "job", "--from=cronjob/drift-mon-monitor", job, "-n", "default")

        def finished() -> str | None:
            status = json.loads(cluster.kubectl("get", "job", job, "-n", "default", "-o", "json").stdout)[
                "status"
            ]
            return "succeeded" if status.get("succeeded") else "failed" if status.get("failed") else None

        outcome = until(f"job {job} finishes", finished, 180)
        index = json.loads(c.download_blob("monitoring/drift-mon/index.json").readall())
        return {"outcome": outcome, **index["runs"][-1]}

    st = local_stack(
        program("k8s-monitor"),
        "mon",
        backend,
        {
            "image": images["v1"],
            "kubeconfig": str(cluster.kubeconfig),
            "baseline": str(tmp_path / "baseline.npy"),
            "storage": f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}",
            "storage_key": auto.ConfigValue(services.AZURITE_KEY, secret=True),
        },
    )
    try:
        out = st.up(on_output=lambda _m: None).outputs
        assert out["cron_job"].value == "default/drift-mon-monitor"
        got = json.loads(
            cluster.kubectl("get", "cronjob", "drift-mon-monitor", "-n", "default", "-o", "json").stdout
        )
        assert got["spec"]["schedule"] == "0 0 1 1 *" and got["spec"]["timeZone"] == "Etc/UTC"
        assert "sig=" not in json.dumps(got), "the SAS tokens stay in the Secret"
        collect("a", rng.normal(size=(800, 64)))
        first = run("drift-now-1")
        assert first["outcome"] == "succeeded" and first["status"] == "passed" and first["rows"] == 800, first
        shifted = rng.normal(size=(800, 64))
        shifted[:, 5] += 2.0
        collect("b", shifted)
        now = subprocess.run(  # `mlinfra monitor run NAME --namespace NS`: a Job from the CronJob, followed
            [sys.executable, "-m", "mlinfra.cli", "monitor", "run", "drift-mon", "--namespace", "default",
             "--kubeconfig", str(cluster.kubeconfig)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert now.returncode == 1, now.stdout + now.stderr
        assert "drift-mon: failed over 800 rows" in now.stdout and "  f5: PSI" in now.stdout, now.stdout
        second = json.loads(c.download_blob("monitoring/drift-mon/index.json").readall())["runs"][-1]
        assert second["flagged"] == ["f5"] and second["rows"] == 800, second
        assert set(st.up(on_output=lambda _m: None).summary.resource_changes) == {"same"}
    finally:
        st.destroy(on_output=lambda _m: None)
    gone = cluster.kubectl("get", "cronjob", "drift-mon-monitor", "-n", "default", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, "destroy removes the CronJob"
    assert len(json.loads(c.download_blob("monitoring/drift-mon/index.json").readall())["runs"]) == 2, (
        "reports kept"
    )
