"""Shared fixtures: the real local services and an isolated Pulumi backend per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.images import grpcfront
from mlinfra.lab import services

# Tests never reach a package index: image builds install from the wheelhouse `make setup` filled.
os.environ["MLINFRA_PIP_OFFLINE"] = "1"

# Scoring servers the tests start serve gRPC through the native front end, as images do (`make setup` built it;
# tests/unit/mlinfra_scoring/test_grpc.py runs the in-process grpcio service too).
GRPC_FRONTEND = grpcfront.binary()
if GRPC_FRONTEND is not None:
    os.environ.setdefault("MLINFRA_SERVE_GRPC_FRONTEND", str(GRPC_FRONTEND))


# `make test` runs the files on two workers, each file on one (pytest -n 2 --dist loadfile: a file's module
# fixtures are shared by its tests). Files are handed out in collection order, so the longest go first and the
# short ones fill in around them (the figures: README.md).
SLOW_FIRST = [
    "integration/test_cloud_endpoint.py",
    "integration/test_gitops.py",
    "integration/test_kubernetes.py",
    "integration/test_examples.py",
    "integration/test_data_collection.py",
    "integration/test_edge.py",
    "integration/test_scoring_image.py",
    "integration/test_drift.py",
    "integration/test_model_monitor.py",
    "integration/test_fpga_endpoint.py",
    "integration/test_edge_broker.py",
    "integration/test_registered_model.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    here = Path(__file__).parent

    def key(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(here).as_posix(), len(rank))
        except ValueError:
            return len(rank)

    items.sort(key=key)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def local_services() -> Callable[..., None]:
    """Call with service names; starts what is not running, fails the test with the reason when one cannot."""

    def ensure(*names: str) -> None:
        try:
            services.ensure(list(names), progress=lambda _msg: None)
        except services.ServiceError as e:
            pytest.fail(f"local service could not start: {e}", pytrace=False)

    return ensure


@pytest.fixture
def backend(tmp_path: Path) -> Path:
    """A fresh file:// state backend for one test."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def program(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a test program (tests/integration/programs/NAME) to a fresh folder, so stack config files written by
    one test never leak into another."""
    import shutil

    def copy(name: str) -> Path:
        dest = tmp_path / "programs" / name
        shutil.copytree(Path(__file__).parent / "integration" / "programs" / name, dest)
        return dest

    return copy


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A Mosquitto of the module's own (fresh retained state), started by the same code as `make services`.
    While it runs, MLINFRA_CACHE and MLINFRA_MQTT_PORT point at it (programs inherit them)."""
    from mlinfra.edge.fleet import Broker
    from tests.scoring_helpers import free_port

    cache = tmp_path_factory.mktemp("broker-cache")
    saved = {k: os.environ.get(k) for k in ("MLINFRA_CACHE", "MLINFRA_MQTT_PORT")}
    os.environ["MLINFRA_CACHE"] = str(cache)
    os.environ["MLINFRA_MQTT_PORT"] = str(free_port())
    try:
        services.ensure(["mosquitto"], progress=lambda _m: None)
        yield Broker.local()
    finally:
        services.down(["mosquitto"], progress=lambda _m: None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    """A local Kubernetes control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok nodes) on
    loopback, built by `make kube`; fails the test with the reason when it cannot start."""
    from mlinfra.lab.cluster import KubeError, LocalCluster

    try:
        cluster = LocalCluster.start(f"test-{os.getpid()}", tmp_path_factory.mktemp("kwok"))
    except KubeError as e:
        pytest.fail(f"local Kubernetes could not start: {e}", pytrace=False)
    yield cluster
    cluster.stop()
