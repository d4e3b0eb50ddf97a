"""Drift on Kubernetes: what `pulumi refresh` finds of an endpoint's slot Deployments and routes, against a fake
API server (the real cluster's test is tests/integration/test_gitops.py)."""

from __future__ import annotations

from typing import Any

from mlinfra.endpoints.kube_rollout import KubernetesRolloutProvider, healthy_observation, observe

IMAGE = "127.0.0.1:5000/churn@sha256:" + "a" * 64
APPS = "/apis/apps/v1/namespaces/ns/deployments"


class FakeKube:
    def __init__(self, objects: dict[str, Any]):
        self.objects = objects

    def get(self, path: str) -> Any:
        return self.objects.get(path)


def props(autoscale: bool = False) -> dict[str, Any]:
    return {
        "endpoint": "churn-staging",
        "namespace": "ns",
        "templates": {"blue": {"spec": {"containers": [{"image": IMAGE}]}}},
        "autoscale": {"blue": {"min_replicas": 1}} if autoscale else {},
        "live": {
            "blue@1234abcd": {
                "deployment": "blue",
                "revision": "1234abcd",
                "slot": "B",
                "spec": {"image": IMAGE},
                "containers": [{"name": "churn-staging-blue-b/0", "port": 0}],
            }
        },
    }


def deployment(image: str = IMAGE, replicas: int = 1) -> dict[str, Any]:
    return {"spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": image}]}}}}


def world(**slot: Any) -> dict[str, Any]:
    return {
        f"{APPS}/churn-staging-blue-b": deployment(**slot),
        "/api/v1/namespaces/ns/configmaps/churn-staging-routes": {},
    }


def test_a_healthy_endpoint_is_what_check_declares() -> None:
    assert observe(props(), FakeKube(world())) == healthy_observation(props())


def test_deleted_edited_and_scaled_down_objects_are_named() -> None:
    gone = world()
    del gone[f"{APPS}/churn-staging-blue-b"]
    assert observe(props(), FakeKube(gone))["deployments"] == {
        "blue": "Deployment churn-staging-blue-b missing"
    }
    edited = observe(props(), FakeKube(world(image="nginx:latest")))
    assert edited["deployments"] == {"blue": "Deployment churn-staging-blue-b runs nginx:latest"}
    assert observe(props(), FakeKube(world(replicas=0)))["deployments"] == {
        "blue": "Deployment churn-staging-blue-b scaled to 0"
    }
    # With autoscaling the HPA owns the count: whatever it is, it is not drift.
    assert observe(props(autoscale=True), FakeKube(world(replicas=0)))["deployments"] == {"blue": "running"}
    no_routes = world()
    del no_routes["/api/v1/namespaces/ns/configmaps/churn-staging-routes"]
    assert observe(props(), FakeKube(no_routes))["routes"] == "missing"


def test_drift_found_by_a_refresh_is_a_change_for_up() -> None:
    p = KubernetesRolloutProvider()
    declared = {**props(), "observed": healthy_observation(props())}
    assert not p.diff("id", declared, declared).changes
    drifted = {**declared, "observed": {"routes": "present", "deployments": {"blue": "Deployment x missing"}}}
    assert p.diff("id", drifted, declared).changes
