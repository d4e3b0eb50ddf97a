"""The rollout engine against a fake target: the order of its steps, the gates, rollback and clean-up — what every
target (Local Docker today, Kubernetes next) relies on. The real engine with real containers is
tests/integration/test_cloud_endpoint.py."""

from __future__ import annotations

from typing import Any

import pytest

from mlinfra.endpoints import gates
from mlinfra.endpoints.rollout import Desired, Policy, Revision, converge
from mlinfra.errors import EndpointError, RolloutFailed


class FakeTarget:
    """Records every call; a revision's replicas answer with the errors/readiness the test sets."""

    def __init__(
        self,
        errors: dict[str, int] | None = None,
        never_ready: set[str] | None = None,
        router_fails: bool = False,
    ) -> None:
        self.router_fails = router_fails
        self.calls: list[tuple[Any, ...]] = []
        self.errors = errors or {}  # revision key -> 5xx per scrape
        self.never_ready = never_ready or set()
        self.scrapes: dict[str, int] = {}
        self.routed: list[dict[str, float]] = []
        self.retired: list[str] = []
        self.gone: set[str] = set()  # replicas removed behind the engine's back

    def new_revision(self, deployment: str, desired: Desired, current: list[Revision]) -> Revision:
        slot = "B" if current and current[0].slot == "A" else "A"
        self.calls.append(("new_revision", deployment, desired.revision, slot))
        return Revision(deployment, desired.revision, dict(desired.spec), slot)

    def scale(self, rev: Revision, replicas: int) -> list[dict[str, Any]]:
        started = []
        used = {r["port"] for r in rev.replicas}
        for i in range(replicas):
            if 9000 + i in used:
                continue
            r = {"name": f"{rev.key}-{i}", "port": 9000 + i}
            rev.replicas.append(r)
            started.append(r)
            self.gone.discard(r["name"])
        self.calls.append(("scale", rev.key, replicas))
        return started

    def wait_ready(self, rev: Revision, replicas: list[dict[str, Any]], timeout_s: float) -> None:
        self.calls.append(("wait_ready", rev.key))
        if rev.key in self.never_ready and replicas:
            raise EndpointError(f"gate readiness failed for {rev.key}: not ready within {timeout_s:g} s")

    def connect(self, everything: dict[str, Revision], desired: dict[str, Revision]) -> None:
        self.calls.append(("connect", sorted(everything), sorted(desired)))
        if self.router_fails:
            raise EndpointError("the router rejected its generated configuration")

    def route(self, weights: dict[str, float], everything: dict[str, Revision]) -> None:
        assert set(weights) <= set(everything), "traffic only to revisions the router knows"
        self.routed.append(dict(weights))
        self.calls.append(("route", dict(weights)))

    def scrape(self, rev: Revision) -> gates.Sample:
        n = self.scrapes[rev.key] = self.scrapes.get(rev.key, 0) + 1
        bad = self.errors.get(rev.key, 0) * n
        return gates.Sample(
            requests=100.0 * n, errors=float(bad), buckets={0.01: 100.0 * n, float("inf"): 100.0 * n}
        )

    def ready_count(self, rev: Revision) -> int:
        return len(rev.replicas)

    def retire(self, replicas: list[dict[str, Any]], grace_s: int) -> None:
        self.retired += [r["name"] for r in replicas]
        self.calls.append(("retire", sorted(r["name"] for r in replicas)))

    def settle(self, desired: dict[str, Revision], weights: dict[str, float]) -> None:
        self.calls.append(("settle", sorted(desired), dict(weights)))

    def lost(self, rev: Revision) -> list[dict[str, Any]]:
        return [r for r in rev.replicas if r["name"] in self.gone]


POLICY = Policy(
    steps=[10.0, 50.0, 100.0],
    bake_s=0.0,
    max_error_rate=0.01,
    max_p99_ms=None,
    min_requests=0,
    readiness_timeout_s=5.0,
    auto_rollback=True,
)


def _live(target: FakeTarget) -> dict[str, Revision]:
    result = converge(
        target, {}, {"blue": Desired("r1", {"image": "v1"}, 2)}, {}, {"blue@r1": 100.0}, POLICY, print
    )
    return result.live


def test_first_apply_routes_then_connects_with_no_steps() -> None:
    t = FakeTarget()
    live = _live(t)
    assert list(live) == ["blue@r1"] and len(live["blue@r1"].replicas) == 2
    kinds = [c[0] for c in t.calls]
    assert kinds == ["new_revision", "scale", "wait_ready", "route", "connect"], kinds
    assert t.retired == []


def test_a_new_revision_is_ready_before_traffic_moves_then_shifts_in_steps_and_cleans_up() -> None:
    t = FakeTarget()
    live = _live(t)
    t.calls.clear()
    t.routed.clear()
    result = converge(
        t,
        live,
        {"blue": Desired("r2", {"image": "v2"}, 2)},
        {"blue@r1": 100.0},
        {"blue@r2": 100.0},
        POLICY,
        print,
    )
    kinds = [c[0] for c in t.calls]
    assert kinds.index("wait_ready") < kinds.index("connect") < kinds.index("route"), kinds
    assert ("new_revision", "blue", "r2", "B") in t.calls, "the new revision goes to the other slot"
    assert [w.get("blue@r2", 0.0) for w in t.routed] == [10.0, 50.0, 100.0]
    assert list(result.live) == ["blue@r2"] and len(result.record) == 3
    assert sorted(t.retired) == ["blue@r1-0", "blue@r1-1"], "the old revision stops after the traffic left it"
    assert kinds.index("settle") < kinds.index("retire")


def test_a_failed_gate_restores_the_last_good_map_and_stops_the_new_revision() -> None:
    t = FakeTarget(errors={"blue@r3": 50})
    live = _live(t)
    with pytest.raises(RolloutFailed) as e:
        converge(
            t,
            live,
            {"blue": Desired("r3", {"image": "bad"}, 2)},
            {"blue@r1": 100.0},
            {"blue@r3": 100.0},
            POLICY,
            print,
        )
    msg = str(e.value)
    assert "step 1/3" in msg and "gate max_error_rate failed for blue@r3" in msg and "0.01" in msg, msg
    assert t.routed[-1] == {"blue@r1": 100.0}, "traffic is back on the last good revision"
    assert sorted(t.retired) == ["blue@r3-0", "blue@r3-1"], "only the new revision's replicas stop"


def test_a_revision_that_never_gets_ready_moves_no_traffic() -> None:
    t = FakeTarget(never_ready={"blue@r4"})
    live = _live(t)
    routed_before = list(t.routed)
    with pytest.raises(EndpointError, match="gate readiness failed for blue@r4"):
        converge(
            t,
            live,
            {"blue": Desired("r4", {"image": "x"}, 2)},
            {"blue@r1": 100.0},
            {"blue@r4": 100.0},
            POLICY,
            print,
        )
    assert t.routed == routed_before, "no traffic moved"
    assert sorted(t.retired) == ["blue@r4-0", "blue@r4-1"], "what was started is removed"


def test_same_revision_scales_in_place_without_a_rollout() -> None:
    t = FakeTarget()
    live = _live(t)
    t.calls.clear()
    result = converge(
        t,
        live,
        {"blue": Desired("r1", {"image": "v1"}, 1)},
        {"blue@r1": 100.0},
        {"blue@r1": 100.0},
        POLICY,
        print,
    )
    assert not any(c[0] == "new_revision" for c in t.calls)
    assert t.retired == ["blue@r1-1"] and len(result.live["blue@r1"].replicas) == 1
    assert len(t.routed) == 2 and t.routed[-1] == {"blue@r1": 100.0}, "one map: nothing to shift"


def test_auto_rollback_off_reports_and_goes_on() -> None:
    t = FakeTarget(errors={"blue@r5": 50})
    live = _live(t)
    policy = Policy(**{**POLICY.__dict__, "auto_rollback": False})
    result = converge(
        t,
        live,
        {"blue": Desired("r5", {"image": "x"}, 2)},
        {"blue@r1": 100.0},
        {"blue@r5": 100.0},
        policy,
        print,
    )
    assert list(result.live) == ["blue@r5"]
    assert any("gates failed (auto_rollback off)" in line for line in result.record)


def test_a_first_apply_whose_router_fails_removes_the_replicas_it_started() -> None:
    t = FakeTarget(router_fails=True)
    with pytest.raises(EndpointError, match="router rejected"):
        converge(t, {}, {"blue": Desired("r1", {"image": "v1"}, 2)}, {}, {"blue@r1": 100.0}, POLICY, print)
    assert sorted(t.retired) == ["blue@r1-0", "blue@r1-1"], "nothing may keep running after a failed create"


def test_drift_a_lost_replica_is_replaced_in_place_and_the_rest_keep_serving() -> None:
    """The same revision converged again after a replica vanished (`pulumi refresh` saw 1 of 2 running): the lost
    one is removed and started again on its own port, ready before the router is touched; no new revision, no
    traffic step, the surviving replica is never retired."""
    t = FakeTarget()
    live = _live(t)
    t.gone = {"blue@r1-0"}
    t.calls.clear()
    t.routed.clear()
    result = converge(
        t,
        live,
        {"blue": Desired("r1", {"image": "v1"}, 2)},
        {"blue@r1": 100.0},
        {"blue@r1": 100.0},
        POLICY,
        print,
    )
    assert sorted(r["name"] for r in result.live["blue@r1"].replicas) == ["blue@r1-0", "blue@r1-1"]
    assert t.retired == ["blue@r1-0"], t.retired
    kinds = [c[0] for c in t.calls]
    assert "new_revision" not in kinds
    assert kinds.index("retire") < kinds.index("scale") < kinds.index("wait_ready") < kinds.index("connect")
    assert t.routed == [{"blue@r1": 100.0}]
    assert t.gone == set()


def test_no_drift_converges_without_touching_a_replica() -> None:
    t = FakeTarget()
    live = _live(t)
    t.calls.clear()
    converge(
        t,
        live,
        {"blue": Desired("r1", {"image": "v1"}, 2)},
        {"blue@r1": 100.0},
        {"blue@r1": 100.0},
        POLICY,
        print,
    )
    assert t.retired == [] and not [c for c in t.calls if c[0] == "scale" and c[2] != 2]
