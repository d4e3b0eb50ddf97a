"""CloudEndpoint's shape under pulumi.runtime.set_mocks (no engine): which resources each target makes, with
what; and that bad arguments fail before anything is registered. (Named to run after test_foundation_mocks: a
process has one mock runtime.)"""

from __future__ import annotations

import asyncio
import json

import pulumi
import pytest

import mlinfra
from mlinfra.endpoints.plan import EndpointError

IMAGE = "127.0.0.1:5000/m/s@sha256:" + "a" * 64


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: list[tuple[str, str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):  # type: ignore[override]
        self.created.append((args.typ, args.name, dict(args.inputs)))
        return [f"{args.name}-id", dict(args.inputs)]

    def call(self, args: pulumi.runtime.MockCallArgs):  # type: ignore[override]
        return {}


def _run(build):
    """Build a CloudEndpoint under the mocks; returns its scoring_uri once every registration has settled."""
    got = {}

    @pulumi.runtime.test
    def program():
        return build().scoring_uri.apply(lambda u: got.setdefault("uri", u))

    program()
    return got["uri"]


@pytest.fixture
def mocks() -> Mocks:
    # A fresh event loop, as tests.unit.mocks.install() makes: a test file run earlier on this worker (asyncio.run
    # leaves none) must not decide whether these pass (a CI run had all 18 error at setup after another file).
    asyncio.set_event_loop(asyncio.new_event_loop())
    m = Mocks()
    pulumi.runtime.set_mocks(m, project="endpoint-check", stack="unit")
    return m


def _two_deployments(target: mlinfra.Kubernetes) -> mlinfra.CloudEndpoint:
    return mlinfra.CloudEndpoint(
        "shop",
        mlinfra.CloudEndpointArgs(
            deployments={
                "blue": mlinfra.Deployment(
                    image=IMAGE, autoscale=mlinfra.Autoscale(min_replicas=2, max_replicas=6)
                ),
                "green": mlinfra.Deployment(image=IMAGE, replicas=3),
            },
            traffic={"blue": 80, "green": 20},
            target=target,
        ),
    )


def test_kubernetes_target_hands_the_scoring_pods_to_the_rollout(mocks: Mocks) -> None:
    """Applying to a cluster: the router and the per-deployment Services and PDBs are declared; the scoring pods'
    Deployments, HPAs and routes are the rollout engine's (one dynamic resource), which gets the pod templates."""
    uri = _run(lambda: _two_deployments(mlinfra.Kubernetes(provider=None, kubeconfig=None, namespace="ml")))
    kinds = sorted(t.split(":")[-1] for t, _n, _i in mocks.created if t.startswith("kubernetes:"))
    assert kinds.count("Deployment") == 1 and "HorizontalPodAutoscaler" not in kinds, kinds  # the router only
    assert kinds.count("PodDisruptionBudget") == 2 and "Namespace" in kinds and "Secret" in kinds, kinds
    roll = next(i for _t, n, i in mocks.created if n == "shop-rollout")
    assert roll["traffic"] == {"blue": 80, "green": 20} and roll["namespace"] == "ml"
    assert roll["autoscale"]["blue"]["max_replicas"] == 6 and roll["autoscale"].get("green") is None
    assert roll["replicas"]["green"] == 3
    pod = roll["templates"]["blue"]["spec"]["containers"][0]
    assert pod["image"] == IMAGE and pod["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert roll["rollout"]["steps"] == [10.0, 50.0, 100.0]
    assert not any(n == "shop-routes" for _t, n, _i in mocks.created), "the rollout writes the routes"
    conf = next(i for _t, n, i in mocks.created if n == "shop-router" and "data" in i)["data"]["nginx.conf"]
    assert "/_mlinfra/routes/" in conf, "router pods confirm each traffic step"
    assert uri == "http://shop-unit.ml.svc.cluster.local/score"


def test_rendered_yaml_declares_deployments_and_hpa_owned_replicas(mocks: Mocks, tmp_path) -> None:
    """Rendering for GitOps (no cluster): one Deployment per deployment, the HPA owning blue's replicas, the
    traffic map as route files."""
    _run(lambda: _two_deployments(mlinfra.Kubernetes(render_yaml_to=str(tmp_path), namespace="ml")))
    kinds = sorted(t.split(":")[-1] for t, _n, _i in mocks.created if t.startswith("kubernetes:"))
    assert kinds.count("Deployment") == 3 and kinds.count("HorizontalPodAutoscaler") == 1, kinds
    deps = {n: i for t, n, i in mocks.created if t == "kubernetes:apps/v1:Deployment"}
    assert "replicas" not in deps["shop-unit-blue"]["spec"], "the HPA owns blue's replicas"
    assert deps["shop-unit-green"]["spec"]["replicas"] == 3
    routes = next(i for t, n, i in mocks.created if n == "shop-routes")["data"]
    assert sum(1 for r in routes if r.endswith("u_green_svc") and r[0].isdigit()) == 200


@pytest.mark.parametrize("render_secrets", [False, True])
def test_rendered_yaml_holds_no_secret_unless_asked(mocks: Mocks, tmp_path, render_secrets: bool) -> None:
    _run(
        lambda: mlinfra.CloudEndpoint(
            "shop",
            mlinfra.CloudEndpointArgs(
                deployments={"blue": mlinfra.Deployment(image=IMAGE)},
                target=mlinfra.Kubernetes(render_yaml_to=str(tmp_path), render_secrets=render_secrets),
            ),
        )
    )
    secrets = [n for t, n, _i in mocks.created if t == "kubernetes:core/v1:Secret"]
    assert secrets == (["shop-internal", "shop-keys"] if render_secrets else []), secrets


def test_kubernetes_pods_take_the_internal_key_from_a_secret(mocks: Mocks, tmp_path) -> None:
    _run(
        lambda: mlinfra.CloudEndpoint(
            "shop",
            mlinfra.CloudEndpointArgs(
                deployments={"blue": mlinfra.Deployment(image=IMAGE)},
                target=mlinfra.Kubernetes(render_yaml_to=str(tmp_path)),
            ),
        )
    )
    dep = next(
        i for t, n, i in mocks.created if t == "kubernetes:apps/v1:Deployment" and n == "shop-unit-blue"
    )
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLINFRA_SERVE_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-unit-internal",
        "key": "key",
    }
    conf = next(i for t, n, i in mocks.created if t == "kubernetes:core/v1:ConfigMap" and n == "shop-router")
    text = conf["data"]["nginx.conf"]
    assert (
        "include /etc/mlinfra/internal/auth.conf;" in text
        and "Bearer" not in text.split("map $http_authorization")[0]
    )
    assert any(t == "kubernetes:networking.k8s.io/v1:NetworkPolicy" for t, _n, _i in mocks.created)


def test_local_target_passes_keys_as_secrets(mocks: Mocks) -> None:
    _run(
        lambda: mlinfra.CloudEndpoint(
            "api", mlinfra.CloudEndpointArgs(deployments={"blue": mlinfra.Deployment(image=IMAGE)})
        )
    )
    local = next(i for t, n, i in mocks.created if n == "api-local")
    assert local["traffic"] == {"blue": 100} and local["endpoint_name"] == "api-unit"
    assert local["rollout"]["steps"] == [10.0, 50.0, 100.0]
    assert any(n == "api-keys" for _t, n, _i in mocks.created)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            {"deployments": {"blue": mlinfra.Deployment(image=IMAGE, autoscale=mlinfra.Autoscale(4, 2))}},
            "min_replicas=4 > max_replicas=2",
        ),
        (
            {"deployments": {"blue": mlinfra.Deployment(image="r/s:latest")}, "require_digest": True},
            "has no digest",
        ),
        ({"deployments": {"Blue!": mlinfra.Deployment(image=IMAGE)}}, "deployment name 'Blue!'"),
        ({"deployments": {"blue": mlinfra.Deployment(image=IMAGE, replicas=0)}}, "replicas = 0"),
        ({"deployments": {"blue": mlinfra.Deployment(image=IMAGE)}, "auth": "basic"}, "auth = 'basic'"),
        ({"deployments": {"blue": mlinfra.Deployment(image=IMAGE)}, "key_version": 0}, "key_version = 0"),
        (
            {
                "deployments": {"blue": mlinfra.Deployment(image=IMAGE)},
                "target": mlinfra.LocalDocker(port=70000),
            },
            "port=70000",
        ),
        ({"deployments": {}}, "deployments is empty"),
        (
            {
                "deployments": {
                    "blue": mlinfra.Deployment(image=IMAGE),
                    "blue-b": mlinfra.Deployment(image=IMAGE),
                },
                "traffic": {"blue": 100, "blue-b": 0},
                "target": mlinfra.Kubernetes(render_yaml_to="/nonexistent"),
            },
            "deployment 'blue-b' would share its Kubernetes Service name with slot 'b' of deployment 'blue'",
        ),
        (
            {
                "deployments": {"blue": mlinfra.Deployment(image=IMAGE)},
                "target": mlinfra.Kubernetes(render_yaml_to="/nonexistent", namespace="Fraud_Prod"),
            },
            "namespace 'Fraud_Prod' is not a DNS label",
        ),
        (
            {
                "deployments": {"blue": mlinfra.Deployment(image=IMAGE)},
                "data_collection": "file",
                "target": mlinfra.Kubernetes(render_yaml_to="/nonexistent"),
            },
            "cannot work on Kubernetes",
        ),
    ],
)
def test_bad_arguments_fail_with_the_value_and_the_fix(mocks: Mocks, args, needle, tmp_path) -> None:
    if args.get("data_collection") == "file":
        args = {
            **args,
            "data_collection": mlinfra.DataCollection(
                "dc", mlinfra.DataCollectionArgs(storage=f"file://{tmp_path}")
            ),
        }
    with pytest.raises(EndpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        mlinfra.CloudEndpoint("bad", mlinfra.CloudEndpointArgs(**args))


def test_data_collection_wires_collector_and_otlp_into_every_deployment(mocks: Mocks) -> None:
    def build():
        dc = mlinfra.DataCollection(
            "cap",
            mlinfra.DataCollectionArgs(
                storage="file:///tmp/mlinfra-unit-collected", otlp_endpoint="http://127.0.0.1:4318"
            ),
        )
        return mlinfra.CloudEndpoint(
            "api",
            mlinfra.CloudEndpointArgs(
                deployments={"blue": mlinfra.Deployment(image=IMAGE)}, data_collection=dc
            ),
        )

    _run(build)
    env = next(i for t, n, i in mocks.created if n == "api-local")["deployments"]["blue"]["env"]
    assert json.loads(env["MLINFRA_SERVE_COLLECT"])["deployment"] == "blue"
    assert env["MLINFRA_SERVE_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["MLINFRA_SERVE_OTLP_RESOURCE"] == "endpoint=api-unit,deployment=blue"
    assert env["MLINFRA_SERVE_TRACE_SAMPLE"] == "0.05"
    with pytest.raises(
        mlinfra.monitoring.data_collection.CollectionError, match=r"sample_rate = 1.5 must be in \[0, 1\]"
    ):
        mlinfra.DataCollection("bad", mlinfra.DataCollectionArgs(sample_rate=1.5))
