"""The rollout engine: one progressive rollout for every target.

An endpoint runs named *deployments* (``blue``); each runs one *revision* at a time (a hash of what its replicas
run, :func:`mlinfra.endpoints.plan.revision`). :func:`converge` takes the endpoint from the revisions that serve now
(``live``) to the ones the stack declares (``desired``):

1. **start** — a deployment whose revision is unchanged scales in place; a new revision starts beside the old one
   and every one of its replicas must pass readiness (``/v2/health/ready``) before any traffic moves;
2. **connect** — the router learns the new revisions (no traffic yet);
3. **shift** — traffic moves from the old map to the new one in the policy's steps; after each step the engine
   bakes, then reads the gates (readiness, error rate, p99, minimum requests) from the serving replicas' own
   ``/metrics``;
4. **roll back** — a failed gate puts the last good map back, stops the new revision and raises
   :class:`RolloutFailed` naming the gate, the measured value and the limit;
5. **clean up** — the router forgets what left, then the replicas nobody routes to stop (after in-flight requests).

The engine never touches a container or a pod itself: it talks to a :class:`Target` (``local.LocalDockerTarget``
today; Kubernetes plugs in the same way). Targets hold what is specific to them — ports, slots, the router's
configuration, how a replica is started and probed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlinfra.endpoints import gates
from mlinfra.endpoints.plan import describe, gaining, plan
from mlinfra.endpoints.spec import RolloutSpec
from mlinfra.errors import RolloutFailed

Log = Callable[[str], None]


def progress_log(endpoint: str, also_to: Path | None = None) -> Log:
    """Progress lines, time-stamped and named by ENDPOINT, to the engine's diagnostics (a provider's stderr, which
    `pulumi up` shows) and, when given, appended to the file ALSO_TO."""

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {endpoint}: {msg}"
        print(line, file=sys.stderr, flush=True)
        if also_to is not None:
            with open(also_to, "a") as f:
                f.write(line + "\n")

    return log


@dataclass
class Revision:
    """One deployment revision and its replicas (target-specific records, e.g. {"name", "port"})."""

    deployment: str
    revision: str
    spec: dict[str, Any]
    slot: str = "A"
    """Which of the deployment's two places (A/B: port sets, object names) it runs in, so old and new can overlap."""
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.deployment}@{self.revision}"

    def to_json(self) -> dict[str, Any]:
        # "containers": the name stacks created by earlier versions stored.
        return {
            "deployment": self.deployment,
            "revision": self.revision,
            "spec": self.spec,
            "slot": self.slot,
            "containers": self.replicas,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Revision:
        replicas = [{"name": c["name"], "port": int(c["port"])} for c in d["containers"]]  # float64 → int
        return Revision(d["deployment"], d["revision"], d["spec"], d.get("slot") or "A", replicas)


@dataclass
class Desired:
    """What a deployment should run after the rollout."""

    revision: str
    spec: dict[str, Any]
    replicas: int


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
    def from_spec(r: RolloutSpec) -> Policy:
        g = r.gates
        return Policy(
            steps=list(r.steps),
            bake_s=r.bake_s,
            max_error_rate=g.max_error_rate,
            max_p99_ms=g.max_p99_ms,
            min_requests=g.min_requests,
            readiness_timeout_s=g.readiness_timeout_s or 120.0,
            auto_rollback=r.auto_rollback,
        )


class Target(Protocol):
    """Where an endpoint's replicas run and how its router is told where traffic goes."""

    def new_revision(self, deployment: str, desired: Desired, current: list[Revision]) -> Revision:
        """A revision with no replicas yet, placed beside CURRENT (the deployment's revisions serving now)."""
        ...

    def scale(self, rev: Revision, replicas: int) -> list[dict[str, Any]]:
        """Start replicas until REV has REPLICAS of them; returns the ones started."""
        ...

    def wait_ready(self, rev: Revision, replicas: list[dict[str, Any]], timeout_s: float) -> None:
        """Every one of REPLICAS is ready within TIMEOUT_S, else EndpointError naming the readiness gate (with the
        replica's state and last log lines)."""
        ...

    def connect(self, everything: dict[str, Revision], desired: dict[str, Revision]) -> None:
        """The router knows EVERYTHING (old and new revisions) before any traffic moves; the keys and the mirror
        follow DESIRED."""
        ...

    def route(self, weights: dict[str, float], everything: dict[str, Revision]) -> None:
        """Send traffic by WEIGHTS (percent by revision key); takes effect at once and drops no request."""
        ...

    def scrape(self, rev: Revision) -> gates.Sample:
        """REV's replicas' metrics (counts and latency histogram) as of now."""
        ...

    def ready_count(self, rev: Revision) -> int:
        """How many of REV's replicas are ready now."""
        ...

    def retire(self, replicas: list[dict[str, Any]], grace_s: int) -> None:
        """Stop and remove REPLICAS, letting in-flight requests finish within GRACE_S."""
        ...

    def lost(self, rev: Revision) -> list[dict[str, Any]]:
        """REV's replicas that no longer serve (removed, stopped or unhealthy behind Pulumi's back): drift that
        converging the same revision repairs by replacing them."""
        ...

    def settle(self, desired: dict[str, Revision], weights: dict[str, float]) -> None:
        """After the last step: the router keeps only DESIRED, routed by WEIGHTS; in-flight requests to what left
        finish."""
        ...


@dataclass
class Result:
    live: dict[str, Revision]
    """The revisions serving after the rollout, by key."""
    record: list[str]
    """What each step did and measured (the endpoint's ``last_rollout`` output)."""


def converge(
    target: Target,
    live: dict[str, Revision],
    desired: dict[str, Desired],
    old_weights: dict[str, float],
    new_weights: dict[str, float],
    policy: Policy,
    log: Log,
) -> Result:
    """Take the endpoint from LIVE (serving with OLD_WEIGHTS) to DESIRED (to serve with NEW_WEIGHTS, by
    ``deployment@revision``), progressively when anything moves. See the module docstring for the steps."""
    out: dict[str, Revision] = {}
    new_only: list[Revision] = []
    started: list[dict[str, Any]] = []
    leaving: list[dict[str, Any]] = []
    try:
        for d, want in desired.items():
            key = f"{d}@{want.revision}"
            if key in live:  # same revision: repair what was lost, scale in place
                rev = Revision.from_json(live[key].to_json())
                lost = target.lost(rev)
                if lost:
                    log(
                        f"{rev.key}: {len(rev.replicas) - len(lost)} of {len(rev.replicas)} replicas running; "
                        f"replacing {', '.join(r['name'] for r in lost)} (traffic goes to the running ones)"
                    )
                    target.retire(lost, grace_s=0)
                    lost_names = {r["name"] for r in lost}
                    rev.replicas = [r for r in rev.replicas if r["name"] not in lost_names]
                leaving += rev.replicas[want.replicas :]
                rev.replicas = rev.replicas[: want.replicas]
                more = target.scale(rev, want.replicas)
                started += more
                target.wait_ready(rev, more, policy.readiness_timeout_s)
            else:  # a new revision, beside the one serving now
                rev = target.new_revision(d, want, [u for u in live.values() if u.deployment == d])
                new_only.append(rev)
                if live:
                    log(f"{rev.key}: new revision of {d} ({want.spec['image']})")
                started += target.scale(rev, want.replicas)
                target.wait_ready(rev, rev.replicas, policy.readiness_timeout_s)
            out[rev.key] = rev
    except Exception:  # nothing routes to what started yet: remove it
        target.retire(started, grace_s=2)
        raise
    everything = {**live, **out}
    if not live:  # the first apply: nothing serves yet, nothing to move from
        try:
            target.route(new_weights, everything)
            target.connect(everything, out)
        except Exception:  # the router never took traffic: the replicas go with it
            target.retire(started, grace_s=2)
            raise
        return Result(out, [])
    try:
        target.connect(everything, out)
        record = _shift(target, everything, old_weights, new_weights, new_only, policy, log)
    except RolloutFailed:
        raise
    except Exception:
        # Anything else mid-rollout (the engine, the router): put the last good map back before failing.
        with contextlib.suppress(Exception):
            target.route(old_weights, everything)
        raise
    target.settle(out, new_weights)
    keep = {r["name"] for u in out.values() for r in u.replicas}
    leaving += [r for u in live.values() for r in u.replicas]
    gone = {r["name"]: r for r in leaving if r["name"] not in keep}  # each replica once
    target.retire(list(gone.values()), grace_s=30)
    return Result(out, record)


def _shift(
    target: Target,
    everything: dict[str, Revision],
    old_weights: dict[str, float],
    new_weights: dict[str, float],
    new_only: list[Revision],
    policy: Policy,
    log: Log,
) -> list[str]:
    """Move traffic in the policy's steps, baking and reading the gates after each; roll back on a failed gate."""
    maps = plan(old_weights, new_weights, policy.steps)
    record: list[str] = []
    t0 = time.monotonic()
    for i, weights in enumerate(maps):
        watched = [everything[k] for k in gaining(old_weights, weights) if k in everything]
        before = {u.key: target.scrape(u) for u in watched}
        target.route(weights, everything)
        line = f"step {i + 1}/{len(maps)}: {describe(weights)}"
        if len(maps) == 1:
            record.append(line)
            break
        log(line + f"; baking {policy.bake_s:g} s")
        time.sleep(policy.bake_s)
        failures: list[str] = []
        results: list[str] = []
        for u in watched:
            ready = target.ready_count(u)
            if ready < len(u.replicas):
                failures.append(
                    f"gate readiness failed for {u.key}: {ready} of {len(u.replicas)} replicas ready"
                )
            delta = target.scrape(u) - before[u.key]
            for g in gates.evaluate(delta, policy.max_error_rate, policy.max_p99_ms, policy.min_requests):
                results.append(f"{u.key} {g.describe()}")
                if not g.ok:
                    failures.append(f"gate {g.gate} failed for {u.key}: measured {g.describe()}")
        record.append(line + (f" — {'; '.join(results)}" if results else " — no scoring requests"))
        log(record[-1])
        if not failures:
            continue
        if not policy.auto_rollback:
            log("auto_rollback is off: continuing despite " + "; ".join(failures))
            record.append("gates failed (auto_rollback off): " + "; ".join(failures))
            continue
        target.route(old_weights, everything)
        time.sleep(1.0)  # requests already sent to the new revision finish
        for u in new_only:
            target.retire(u.replicas, grace_s=10)
        raise RolloutFailed(
            f"rollout stopped at step {i + 1}/{len(maps)} ({describe(weights)}) and rolled back to "
            f"{describe(old_weights)}: " + "; ".join(failures)
        )
    log(f"rollout done in {time.monotonic() - t0:.1f} s")
    return record
