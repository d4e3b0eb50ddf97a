"""CloudEndpoint on the real engine with the local Docker engine, registry and the nginx router: deploy, score with
keys, a canary rollout under continuous load with zero failed requests, automatic rollback on failed gates,
mirroring, key rotation under load, bad input at preview, destroy."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pulumi import automation as auto

from mlinfra.automation import local_stack
from mlinfra.endpoints.local import endpoint_dir, find_containers, port_taken
from mlinfra.images.builder import ImageSpec, ModelInput, build_and_push
from mlinfra.lab.samples import write_mlp
from mlinfra.registry import ModelRegistry
from tests.endpoint_helpers import ROW, Load, score
from tests.state_helpers import plaintext_secrets

pytestmark = pytest.mark.integration

BROKEN_500 = """
def init():
    pass


def run(raw_data):
    raise RuntimeError("v3 is broken")
"""
NEVER_READY = """
def init():
    raise RuntimeError("cannot load: missing weights")


def run(raw_data):
    return []
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory, local_services) -> dict[str, str]:
    """Image refs: v1 and v2 (two MLPs), broken (answers 500 on /score), never_ready (init fails)."""
    local_services("docker", "registry", "python-base", "router-base")
    tmp = tmp_path_factory.mktemp("endpoint-images")
    reg_uri = f"file://{tmp / 'registry'}"
    reg = ModelRegistry(reg_uri)
    out: dict[str, str] = {}
    models = {}
    for tag, seed in (("v1", 1), ("v2", 2)):
        mv, _ = reg.register("mlp", write_mlp(tmp / f"{tag}.onnx", seed=seed))
        models[tag] = (ModelInput("mlp", mv.version, mv.sha256, reg_uri), tmp / f"{tag}.onnx")
    (tmp / "broken.py").write_text(BROKEN_500)
    (tmp / "never_ready.py").write_text(NEVER_READY)
    for tag, model, script in (
        ("v1", "v1", None),
        ("v2", "v2", None),
        ("broken", "v2", tmp / "broken.py"),
        ("never_ready", "v2", tmp / "never_ready.py"),
    ):
        spec = ImageSpec(
            repository="127.0.0.1:5000/mlinfra-test/endpoint",
            models=[models[model][0]],
            base="127.0.0.1:5000/mlinfra/python-base:bookworm",
            script=script,
        )
        out[tag] = build_and_push(spec).image_ref
    out["v1_model"] = str(models["v1"][1])
    out["v2_model"] = str(models["v2"][1])
    return out


def _expected(model: str) -> list[float]:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.array([ROW], dtype=np.float32)})[0][0].tolist()


def _stack(program, backend, name: str, config: dict[str, str]) -> auto.Stack:
    return local_stack(program("cloud-endpoint"), name, backend, config)


def _deps(**images: str) -> str:
    return json.dumps({k: {"image": v} for k, v in images.items()})


def _close(a: list[float], b: list[float]) -> bool:
    return bool(np.allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5))


def _metrics_requests(container: str) -> float:
    port = (
        subprocess.run(
            ["/usr/bin/docker", "port", container, "8080"], capture_output=True, text=True, check=True
        )
        .stdout.split(":")[-1]
        .strip()
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlinfra_requests_total") and 'route="score"' in line
    )


def _endpoints_list(*args: str) -> list[dict]:
    import contextlib
    import io

    from mlinfra.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["endpoints", "list", "--json", *args]) == 0
    return [e for e in json.loads(buf.getvalue()) if e["endpoint"].startswith("scoring-")]


def test_local_endpoint_lifecycle(images, program, backend) -> None:
    st = _stack(program, backend, "life", {"deployments": _deps(blue=images["v1"])})
    ep = "scoring-life"
    try:
        # --- deploy v1, score through the router with a key -------------------------------------------------
        res = st.up(on_output=lambda _l: None)
        out = {k: v.value for k, v in res.outputs.items()}
        uri, primary, secondary = out["scoring_uri"], out["primary_key"], out["secondary_key"]
        assert res.outputs["primary_key"].secret and res.outputs["secondary_key"].secret
        assert primary != secondary and len(primary) >= 40
        v1, v2 = _expected(images["v1_model"]), _expected(images["v2_model"])
        status, body, headers = score(uri, primary)
        assert status == 200 and _close(body[0], v1), body
        assert headers["x-mlinfra-deployment"] == "blue"
        assert score(uri, secondary)[0] == 200
        assert score(uri, None)[0] == 401
        assert score(uri, "not-the-key")[0] == 401
        assert out["deployments"]["blue"]["digest"] == images["v1"].split("@")[1]
        assert out["deployments"]["blue"]["models"][0]["name"] == "mlp"
        labels = {c["name"]: c["labels"] for c in find_containers(ep)}
        replica = next(n for n, lab in labels.items() if lab.get("mlinfra.io/deployment") == "blue")
        assert labels[replica]["mlinfra.io/model"] == "mlp"
        assert labels[replica]["mlinfra.io/image-digest"] == images["v1"].split(":")[-1][:63]
        # A replica answers only the router: straight to its port, a client's key is refused (probes stay open).
        direct = (
            subprocess.run(
                ["/usr/bin/docker", "port", replica, "8080"], capture_output=True, text=True, check=True
            )
            .stdout.split(":")[-1]
            .strip()
        )
        assert score(f"http://127.0.0.1:{direct}", primary)[0] == 401
        assert score(f"http://127.0.0.1:{direct}", None)[0] == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{direct}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        conf = endpoint_dir(ep) / "nginx.conf"
        assert conf.stat().st_mode & 0o077 == 0, "the router's configuration holds the replicas' key: 0600"
        # Hostile input at the router: answered, nothing escapes, the endpoint stays up.
        assert score(uri, "../../nginx.conf")[0] == 401  # not a key shape: never becomes a file lookup
        assert score(uri, "k" * 5000)[0] in (400, 401)
        status, _, headers = score(uri, primary, headers={"x-mlinfra-deployment": "../../etc/passwd"})
        assert status == 200 and headers["x-mlinfra-deployment"] == "blue"  # unknown pin: the normal split
        big = [[0.1] * 64] * 40000  # ≈ 12.8 MB of JSON > max_body_mb=10
        assert score(uri, primary, rows=big)[0] == 413
        assert score(uri, primary, rows=[["x"] * 64])[0] == 400  # the scoring server's own validation
        assert score(uri, primary)[0] == 200
        # Found by `mlinfra endpoints list`, by model and by image digest.
        # (Other tests' endpoints on this machine may serve a model named mlp too: look at this one.)
        serving_mlp = _endpoints_list("--model", "mlp")
        assert all(
            any("mlp" in (d.get("model") or "").split(".") for d in e["deployments"].values())
            for e in serving_mlp
        ), serving_mlp
        listed = [e for e in serving_mlp if e["endpoint"] == ep]
        assert len(listed) == 1 and listed[0]["deployments"]["blue"]["model_version"] == "1", serving_mlp
        by_image = _endpoints_list("--image", images["v1"].split("@")[1])
        assert [e for e in by_image if e["endpoint"] == ep] == listed
        assert _endpoints_list("--model", "no-such-model") == []
        # The keys are secrets: not in plain text in the state file (nor the router's key towards its replicas).
        internal = conf.read_text().split('proxy_set_header Authorization "Bearer ', 1)[1].split('"', 1)[0]
        assert plaintext_secrets(backend, primary, secondary, internal) == []

        # --- a second up changes nothing ----------------------------------------------------------------------
        res = st.up(on_output=lambda _l: None)
        assert res.summary.resource_changes == {"same": 5}, res.summary.resource_changes

        # --- canary to v2 under continuous load: zero failed requests ----------------------------------------
        st.set_config("deployments", auto.ConfigValue(_deps(blue=images["v2"])))
        pv = st.preview(diff=True, on_output=lambda _l: None)
        assert pv.change_summary.get("update") == 2, (
            pv.change_summary
        )  # the component's inputs and its router
        assert "step 1/3: blue@" in pv.stdout and "bake 1.5 s, then gates on blue@" in pv.stdout, pv.stdout[
            -3000:
        ]
        with Load(uri, primary, threads=3) as load:
            res = st.up(on_output=lambda _l: None)
        out = {k: v.value for k, v in res.outputs.items()}
        assert load.total > 100, load.statuses
        assert load.failed == 0, (load.statuses, load.errors)
        assert len(out["last_rollout"]) == 3 and "step 3/3" in out["last_rollout"][2], out["last_rollout"]
        assert "step 1/3: blue@" in out["last_rollout"][0] and " 20%" in out["last_rollout"][0]
        status, body, _ = score(uri, primary)
        assert status == 200 and _close(body[0], v2)
        outputs = {json.dumps(json.loads(b)[0]) for b in load.outputs}
        assert len(outputs) == 2, "requests during the canary were answered by v1 and by v2"
        assert out["deployments"]["blue"]["digest"] == images["v2"].split("@")[1]
        assert len([c for c in find_containers(ep) if c["labels"].get("mlinfra.io/deployment")]) == 1

        # --- a broken v3 (500s) rolls back automatically; the up fails naming the gate -----------------------
        st.set_config("deployments", auto.ConfigValue(_deps(blue=images["broken"])))
        with Load(uri, primary, threads=2) as load, pytest.raises(auto.CommandError) as err:
            st.up(on_output=lambda _l: None)
        message = str(err.value)
        assert "max_error_rate" in message and "rolled back" in message, message[-2000:]
        assert "limit 0.01" in message
        assert load.statuses[500] > 0  # the canary share saw the failure …
        status, body, _ = score(uri, primary)  # … and v2 has 100 % again
        assert status == 200 and _close(body[0], v2)
        assert len([c for c in find_containers(ep) if c["labels"].get("mlinfra.io/deployment")]) == 1

        # --- never ready: readiness gate, no traffic ever moved ------------------------------------------------
        st.set_config("deployments", auto.ConfigValue(_deps(blue=images["never_ready"])))
        st.set_config("gates", auto.ConfigValue(json.dumps({"readiness_timeout_s": 20})))
        with Load(uri, primary, threads=2) as load, pytest.raises(auto.CommandError) as err:
            st.up(on_output=lambda _l: None)
        assert "gate readiness failed" in str(err.value), str(err.value)[-2000:]
        message = str(err.value)
        assert "missing weights" in message, message[message.find("gate readiness") :][
            :1500
        ]  # the log says why
        assert load.failed == 0, (load.statuses, load.errors)
        assert _close(score(uri, primary)[1][0], v2)

        # --- back to the last good config: nothing to do ----------------------------------------------------
        st.set_config("deployments", auto.ConfigValue(_deps(blue=images["v2"])))
        st.remove_config("gates")
        res = st.up(on_output=lambda _l: None)
        # The router and keys are unchanged; only the component's recorded inputs (state, no provider) go back
        # from the failed attempt's to the last good ones.
        assert res.summary.resource_changes == {"same": 4, "update": 1}, res.summary.resource_changes
        assert set(st.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}

        # --- mirror: a shadow sees a copy of live traffic; answers unchanged ----------------------------------
        st.set_config("deployments", auto.ConfigValue(_deps(blue=images["v2"], green=images["v1"])))
        st.set_config("traffic", auto.ConfigValue(json.dumps({"blue": 100, "green": 0})))
        st.set_config("mirror", auto.ConfigValue(json.dumps({"green": 50})))
        st.up(on_output=lambda _l: None)
        green = next(
            c["name"] for c in find_containers(ep) if c["labels"].get("mlinfra.io/deployment") == "green"
        )
        before = _metrics_requests(green)
        answers = [score(uri, primary) for _ in range(200)]
        assert all(
            s == 200 and _close(b[0], v2) and h["x-mlinfra-deployment"] == "blue" for s, b, h in answers
        )
        mirrored = _metrics_requests(green) - before
        assert 60 <= mirrored <= 140, mirrored  # ≈ 50 % of 200
        # A client can pin a deployment (like Azure ML's azureml-model-deployment header).
        status, body, headers = score(uri, primary, headers={"x-mlinfra-deployment": "green"})
        assert status == 200 and _close(body[0], v1) and headers["x-mlinfra-deployment"] == "green"

        # --- key rotation under load: no 401 ------------------------------------------------------------------
        with Load(uri, primary, threads=2) as load:
            st.set_config("key_version", auto.ConfigValue("2"))  # regenerates the secondary key
            out2 = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
            assert out2["primary_key"] == primary and out2["secondary_key"] != secondary
            load.key = out2["secondary_key"]  # clients move to the new secondary …
            st.set_config("key_version", auto.ConfigValue("3"))  # … then the primary is regenerated
            out3 = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        assert load.statuses[401] == 0 and load.failed == 0, (load.statuses, load.errors)
        assert load.total > 50
        assert out3["secondary_key"] == out2["secondary_key"] and out3["primary_key"] != primary
        assert score(uri, primary)[0] == 401  # the old primary is gone
        assert score(uri, out3["primary_key"])[0] == 200
    finally:
        st.destroy(on_output=lambda _l: None)
    assert find_containers(ep) == []
    assert not port_taken(int(uri.rsplit(":", 1)[1].split("/")[0]))


def test_bad_input_fails_preview_and_applies_nothing(images, program, backend) -> None:
    cases = [
        ({"deployments": _deps(blue=images["v1"], green=images["v2"]), "traffic": '{"blue": 60, "green": 30}'},
         "sum to 90, not 100"),
        ({"deployments": _deps(blue=images["v1"]), "traffic": '{"blue": 100, "red": 0}'}, "'red'"),
        ({"deployments": _deps(blue=images["v1"], green=images["v2"]), "traffic": '{"blue": 50, "green": 50}',
          "mirror": '{"green": 10}'}, "takes 50 % of live traffic"),
        ({"deployments": _deps(blue="127.0.0.1:5000/mlinfra-test/endpoint:latest"), "require_digest": "true"},
         "has no digest"),
    ]  # fmt: skip
    project = program("cloud-endpoint")
    for i, (config, needle) in enumerate(cases):
        st = local_stack(project, f"bad{i}", backend, config)
        with pytest.raises(auto.CommandError) as err:
            st.preview(on_output=lambda _l: None)
        assert needle in str(err.value), str(err.value)[-1500:]
    # A port some other process holds: named at preview.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        st = local_stack(
            project, "taken", backend, {"deployments": _deps(blue=images["v1"]), "port": str(taken)}
        )
        with pytest.raises(auto.CommandError) as err:
            st.preview(on_output=lambda _l: None)
        assert f"port {taken} on 127.0.0.1 is already taken" in str(err.value), str(err.value)[-1500:]
    assert find_containers("scoring-taken") == []


K8S_IMAGE = "127.0.0.1:5000/mlinfra/scorer@sha256:" + "ab" * 32  # kwok runs no containers: any pinned ref


def test_kubernetes_endpoint_on_the_local_control_plane(program, backend, kube_cluster) -> None:
    """Objects created and awaited; a second up after the autoscaler moved replicas changes nothing; a new image is
    an update of that Deployment only; destroy removes it all."""
    kubeconfig = str(kube_cluster.kubeconfig)
    st = local_stack(
        program("cloud-endpoint-k8s"),
        "k8s",
        backend,
        {"kubeconfig": kubeconfig, "namespace": "ep-k8s", "image": K8S_IMAGE},
    )
    try:
        res = st.up(on_output=lambda _l: None)
        assert res.summary.result == "succeeded"
        got = json.loads(
            kube_cluster.kubectl(
                "get", "deploy,svc,hpa,pdb,cm,secret,netpol", "-n", "ep-k8s", "-o", "json"
            ).stdout
        )
        kinds = sorted(
            f"{o['kind']}/{o['metadata']['name']}"
            for o in got["items"]
            if "mlinfra.io/endpoint" in o["metadata"].get("labels", {})
        )
        # Each deployment runs in slot a of two (a new revision starts in b beside it: the gated rollout).
        assert kinds == sorted(
            [
                "ConfigMap/scoring-k8s-router", "ConfigMap/scoring-k8s-routes", "Secret/scoring-k8s-keys",
                "Deployment/scoring-k8s-blue-a", "Deployment/scoring-k8s-green-a", "Deployment/scoring-k8s-router",
                "Service/scoring-k8s", "Service/scoring-k8s-blue", "Service/scoring-k8s-green",
                "Service/scoring-k8s-blue-a", "Service/scoring-k8s-blue-b", "Service/scoring-k8s-green-a",
                "Service/scoring-k8s-green-b",
                "HorizontalPodAutoscaler/scoring-k8s-blue-a", "PodDisruptionBudget/scoring-k8s-blue",
                "PodDisruptionBudget/scoring-k8s-green", "Secret/scoring-k8s-internal",
                "NetworkPolicy/scoring-k8s-scorers",
            ]
        ), kinds  # fmt: skip
        blue = next(
            o
            for o in got["items"]
            if o["metadata"]["name"] == "scoring-k8s-blue-a" and o["kind"] == "Deployment"
        )
        assert blue["metadata"]["labels"]["mlinfra.io/image-digest"] == ("ab" * 32)[:63]
        probe = blue["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
        assert probe == "/v2/health/ready"
        routes = next(o for o in got["items"] if o["metadata"]["name"] == "scoring-k8s-routes")["data"]
        assert sum(1 for r in routes if r.endswith("u_blue_A") and not r.startswith("pin")) == 900
        keys = next(o for o in got["items"] if o["metadata"]["name"] == "scoring-k8s-keys")["data"]
        assert len(keys) == 2  # key names only; the values are in Pulumi state as secrets

        # The autoscaler owns blue's replicas: the Deployment was created without a count (1), the HPA controller
        # raises it to min_replicas=2 …
        import time

        def blue_replicas() -> str:
            return kube_cluster.kubectl(
                "get", "deploy/scoring-k8s-blue-a", "-n", "ep-k8s", "-o", "jsonpath={.spec.replicas}"
            ).stdout

        deadline = time.monotonic() + 90
        while blue_replicas() != "2" and time.monotonic() < deadline:
            time.sleep(1)
        assert blue_replicas() == "2", "the HorizontalPodAutoscaler did not act"
        assert set(st.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}
        assert blue_replicas() == "2"
        # … and a later decision (here made by hand, within min..max) survives the next `up` too.
        kube_cluster.kubectl("scale", "deploy/scoring-k8s-blue-a", "-n", "ep-k8s", "--replicas=4")
        res = st.up(on_output=lambda _l: None)
        assert set(res.summary.resource_changes) == {"same"}, res.summary.resource_changes
        replicas = kube_cluster.kubectl(
            "get", "deploy/scoring-k8s-blue-a", "-n", "ep-k8s", "-o", "jsonpath={.spec.replicas}"
        ).stdout
        assert replicas == "4"

        st.set_config("green_image", auto.ConfigValue(K8S_IMAGE.replace("ab", "cd")))
        res = st.up(on_output=lambda _l: None)
        changes = res.summary.resource_changes
        # the rollout (green's new revision, in slot b), green's Service and PDB labels (image digest), and the
        # component's inputs
        assert changes.get("update") == 4, changes
        green = kube_cluster.kubectl(
            "get", "deploy", "-n", "ep-k8s", "-l", "mlinfra.io/deployment=green", "-o", "name"
        ).stdout.split()
        assert green == ["deployment.apps/scoring-k8s-green-b"], green
    finally:
        st.destroy(on_output=lambda _l: None)
    left = kube_cluster.kubectl("get", "deploy", "-n", "ep-k8s", "-o", "name", check=False).stdout
    assert left.strip() == ""


def test_kubernetes_render_yaml_is_accepted_by_the_api_server(
    program, backend, kube_cluster, tmp_path
) -> None:
    out = tmp_path / "manifests"
    st = local_stack(
        program("cloud-endpoint-k8s"),
        "render",
        backend,
        {"render_to": str(out), "namespace": "ep-render", "image": K8S_IMAGE},
    )
    said: list[str] = []
    st.up(on_output=said.append)
    files = sorted(p.name for p in out.rglob("*.yaml"))
    assert len(files) >= 12, files
    kube_cluster.kubectl("create", "namespace", "ep-render")
    r = kube_cluster.kubectl("apply", "--dry-run=server", "-R", "-f", str(out), check=False)
    assert r.returncode == 0, r.stderr
    assert "horizontalpodautoscaler.autoscaling/scoring-render-blue created (server dry run)" in r.stdout, (
        r.stdout
    )
    # No Secret is rendered by default (its values would be plain YAML): the output names the ones to create.
    primary = st.outputs()["primary_key"].value
    rendered = "".join(p.read_text() for p in out.rglob("*.yaml"))
    assert primary and primary not in rendered and "kind: Secret" not in rendered
    assert "Create them in namespace ep-render with your secret manager: scoring-render-keys" in "".join(said)
    assert primary not in "".join(p.read_text() for p in backend.rglob("*.json"))
    # Asked for explicitly, they are written, with a warning that says so.
    st.set_config("render_secrets", auto.ConfigValue("true"))
    said.clear()
    st.up(on_output=said.append)
    assert "written with their values in plain YAML" in "".join(said)
    r = kube_cluster.kubectl("apply", "--dry-run=server", "-R", "-f", str(out), check=False)
    assert "secret/scoring-render-keys created (server dry run)" in r.stdout, r.stdout
    assert primary not in "".join(p.read_text() for p in backend.rglob("*.json"))
    st.destroy(on_output=lambda _l: None)


def test_kubeconfig_that_does_not_connect_fails_preview(program, backend, tmp_path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        "clusters: [{name: lab-cluster, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: lab, context: {cluster: lab-cluster, user: me}}]\nusers: [{name: me, user: {}}]\n"
    )
    st = local_stack(
        program("cloud-endpoint-k8s"),
        "noconnect",
        backend,
        {"kubeconfig": str(kubeconfig), "namespace": "x", "image": K8S_IMAGE},
    )
    with pytest.raises(auto.CommandError) as err:
        st.preview(on_output=lambda _l: None)
    assert "Kubernetes cluster 'lab-cluster' at https://127.0.0.1:1 does not answer" in str(err.value)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _tls_material(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a self-signed impostor."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=mlinfra test CA", cwd=d)  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
             "-days", "2", "-subj", "/CN=client", cwd=d)  # fmt: skip


def test_tls_client_certificates(images, program, backend, tmp_path) -> None:
    import http.client
    import ssl

    _tls_material(tmp_path)
    st = local_stack(
        program("cloud-endpoint"),
        "tls",
        backend,
        {"deployments": _deps(blue=images["v1"]), "auth": "tls", "tls_dir": str(tmp_path)},
    )
    try:
        out = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        uri = out["scoring_uri"]
        assert uri.startswith("https://127.0.0.1:") and out.get("primary_key") is None
        port = int(uri.rsplit(":", 1)[1].split("/")[0])

        def post(cert: str | None) -> int:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            if cert:
                ctx.load_cert_chain(str(tmp_path / f"{cert}.pem"), str(tmp_path / f"{cert}.key"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            try:
                conn.request(
                    "POST",
                    "/score",
                    body=json.dumps({"data": [ROW]}),
                    headers={"Content-Type": "application/json"},
                )
                return conn.getresponse().status
            finally:
                conn.close()

        assert post("client") == 200
        assert post(None) == 403
        assert post("rogue") in (400, 403)  # nginx refuses a certificate the endpoint CA did not sign
    finally:
        st.destroy(on_output=lambda _l: None)


def test_grpc_through_the_router(images, program, backend) -> None:
    """The Open Inference Protocol over gRPC through a Local Docker endpoint's router: keys checked, the traffic
    split and x-mlinfra-deployment pins applied as for REST, each answer naming its deployment."""
    import grpc
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    st = _stack(
        program, backend, "grpc",
        {"deployments": _deps(blue=images["v1"], green=images["v2"]), "traffic": json.dumps({"blue": 50, "green": 50})},
    )  # fmt: skip
    try:
        out = {k: v.value for k, v in st.up(on_output=lambda _l: None).outputs.items()}
        target, key = out["grpc_uri"], out["primary_key"]
        assert target.startswith("127.0.0.1:") and target != out["scoring_uri"].split("//")[1].split("/")[0]
        auth = (("authorization", f"Bearer {key}"),)
        request = service_pb2.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(np.array([ROW], dtype=np.float32).tobytes())
        expected = {"blue": _expected(images["v1_model"]), "green": _expected(images["v2_model"])}
        seen: dict[str, int] = {}
        with grpc.insecure_channel(target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(40):
                resp, call = stub.ModelInfer.with_call(request, metadata=auth)
                deployment = dict(call.initial_metadata())["x-mlinfra-deployment"]
                seen[deployment] = seen.get(deployment, 0) + 1
                got = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").tolist()
                assert _close(got, expected[deployment]), deployment
            assert set(seen) == {"blue", "green"} and min(seen.values()) >= 5, seen  # 50/50 over 40 calls
            for _ in range(10):  # a pin, as REST's header
                _, call = stub.ModelInfer.with_call(
                    request, metadata=(*auth, ("x-mlinfra-deployment", "green"))
                )
                assert dict(call.initial_metadata())["x-mlinfra-deployment"] == "green"
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request, metadata=(("authorization", "Bearer " + "x" * 32),))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
        # Triton's client as written, through the router.
        client = triton.InferenceServerClient(url=target)
        x = triton.InferInput("input", [1, 64], "FP32")
        x.set_data_from_numpy(np.array([ROW], dtype=np.float32))
        got = client.infer(
            "mlp", [x], headers={"authorization": f"Bearer {key}", "x-mlinfra-deployment": "blue"}
        )
        assert _close(got.as_numpy("probabilities")[0].tolist(), expected["blue"])
        client.close()
        assert set(st.up(on_output=lambda _l: None).summary.resource_changes) == {"same"}
    finally:
        st.destroy(on_output=lambda _l: None)
