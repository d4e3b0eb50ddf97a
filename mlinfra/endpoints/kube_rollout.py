"""The rollout engine's Kubernetes target: the same gated, progressive rollout as on Local Docker, on a cluster.

Each deployment (``blue``) has two *slots*, ``a`` and ``b``: a Deployment ``<endpoint>-<d>-<slot>`` behind its own
Service of the same name, both Services declared once by the component (so the router's upstreams — their
ClusterIPs — never change while traffic moves). A new revision starts in the slot the serving one does not use; its pods must be Ready before
any traffic moves (an image the node cannot pull, a pod that crash-loops or does not fit fails at once, naming the
image and the pull error, the last log lines or the scheduler's message). Traffic moves by rewriting the route files
(ConfigMap ``<endpoint>-routes``, mounted in the router pods, read by nginx on every request) and annotating the
router pods, which makes the kubelet re-sync the volume at once instead of on its own period (up to a minute); each
step waits until every router pod answers ``/_mlinfra/routes/gen-<n>`` (a marker among the route files, asked
through the API server's pod proxy) before it bakes. The gates read each serving pod's ``/metrics`` through the
same proxy. A failed gate puts the last good map back and deletes the new slot. With autoscaling, the slot's
HorizontalPodAutoscaler owns its replica count: an `up` never resets it.

Declarative pieces stay pulumi-kubernetes resources (mlinfra.endpoints.kubernetes): the namespace, Secrets, the
router, the per-deployment Service and PodDisruptionBudget (both slots), the NetworkPolicy. This dynamic resource
owns what moves during an `up`: the slot Deployments and HPAs, and the routes ConfigMap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.endpoints import gates, nginx, rollout
from mlinfra.endpoints.kube_api import ApiError, KubeClient
from mlinfra.endpoints.local import to_router
from mlinfra.endpoints.plan import describe_plan, plan, upstream_weights
from mlinfra.endpoints.spec import RolloutSpec
from mlinfra.errors import EndpointError
from mlinfra.observed import drift_phrases, observed_drift, say_drift

SLOTS = ("A", "B")
KUBE_PROXY_SYNC_S = 1.0
"""After a new slot's endpoints are listed, kube-proxy's next sync (its minimum period is 1 s) programs them."""
ROUTE_WAIT_S = 20.0
"""How long a traffic step waits for every router pod to see the new route files."""
CONTENT_KEYS = ("templates", "replicas", "autoscale", "traffic", "rollout")


def ints(value: Any) -> Any:
    """VALUE with integral floats as ints: the engine hands numbers back as float64, and the API server refuses
    ``8080.0`` where it wants an int32."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [ints(v) for v in value]
    return value


def revision_of(template: dict[str, Any]) -> str:
    """What the pods run (the pod template); replicas and autoscaling scale in place."""
    return hashlib.sha256(json.dumps(ints(template), sort_keys=True).encode()).hexdigest()[:8]


def slot_name(endpoint: str, deployment: str, slot: str) -> str:
    return f"{endpoint}-{deployment}-{slot.lower()}"


class KubernetesTarget:
    """The rollout engine's :class:`~mlinfra.endpoints.rollout.Target` on a cluster (see the module docstring).
    A replica record is ``{"name": "<slot object>/<i>", "port": 0}``: Kubernetes owns the pods, the engine counts."""

    def __init__(self, props: dict[str, Any], kube: KubeClient, log: rollout.Log):
        self.p = props
        self.kube = kube
        self.log = log
        self.ns = props["namespace"]
        self.endpoint = props["endpoint"]
        self.apps = f"/apis/apps/v1/namespaces/{self.ns}/deployments"
        self.core = f"/api/v1/namespaces/{self.ns}"
        self.hpas = f"/apis/autoscaling/v2/namespaces/{self.ns}/horizontalpodautoscalers"
        self.labels = dict(props.get("labels") or {})
        self._nodes: dict[str, bool] = {}

    # -- objects ----------------------------------------------------------------------------------------------

    def _selector(self, d: str, slot: str) -> dict[str, str]:
        return {
            "mlinfra.io/endpoint": self.endpoint,
            "mlinfra.io/deployment": d,
            "mlinfra.io/slot": slot.lower(),
        }

    def _pods(self, rev: rollout.Revision) -> list[dict[str, Any]]:
        return [
            p
            for p in self.kube.list(f"{self.core}/pods", self._selector(rev.deployment, rev.slot))
            if not p["metadata"].get("deletionTimestamp")
            and p["metadata"].get("labels", {}).get("mlinfra.io/revision") == rev.revision
        ]

    @staticmethod
    def _ready(pod: dict[str, Any]) -> bool:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )

    # -- the Target interface -----------------------------------------------------------------------------------

    def new_revision(
        self, deployment: str, desired: rollout.Desired, current: list[rollout.Revision]
    ) -> rollout.Revision:
        slot = "B" if current and current[0].slot == "A" else "A"
        return rollout.Revision(deployment, desired.revision, dict(desired.spec), slot)

    def scale(self, rev: rollout.Revision, replicas: int) -> list[dict[str, Any]]:
        name = slot_name(self.endpoint, rev.deployment, rev.slot)
        autoscale = (self.p.get("autoscale") or {}).get(rev.deployment)
        template = ints(json.loads(json.dumps(rev.spec["template"])))
        template.setdefault("metadata", {}).setdefault("labels", {}).update(
            {**self._selector(rev.deployment, rev.slot), "mlinfra.io/revision": rev.revision}
        )
        existing = self.kube.get(f"{self.apps}/{name}")
        same = existing is not None and (
            existing["spec"]["template"]["metadata"].get("labels", {}).get("mlinfra.io/revision")
            == rev.revision
        )
        spec: dict[str, Any] = {
            "selector": {"matchLabels": self._selector(rev.deployment, rev.slot)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        }
        if not (autoscale and same):  # the HPA owns the count of a running slot
            spec["replicas"] = replicas
        if existing is not None and not same:  # a slot reused by a new revision: replace, never mix
            self.kube.delete(f"{self.apps}/{name}")
            self._wait_gone(name)
            existing = None
        self.kube.apply(
            self.apps,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": name,
                    "namespace": self.ns,
                    # the pods' labels: model, version and image digest, as `kubectl get deploy -l` users expect
                    "labels": {**self.labels, **template["metadata"]["labels"]},
                    "annotations": {"mlinfra.io/revision": rev.revision},
                },
                "spec": spec,
            },
        )
        if autoscale:
            self.kube.apply(
                self.hpas,
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": self.ns, "labels": self.labels},
                    "spec": {
                        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "minReplicas": int(autoscale["min_replicas"]),
                        "maxReplicas": int(autoscale["max_replicas"]),
                        "metrics": [
                            {
                                "type": "Resource",
                                "resource": {
                                    "name": "cpu",
                                    "target": {
                                        "type": "Utilization",
                                        "averageUtilization": int(autoscale["cpu_target_percent"]),
                                    },
                                },
                            }
                        ],
                    },
                },
            )
        have = {r["name"] for r in rev.replicas}
        started = [{"name": f"{name}/{i}", "port": 0} for i in range(replicas) if f"{name}/{i}" not in have]
        rev.replicas = [r for r in rev.replicas if int(r["name"].rsplit("/", 1)[1]) < replicas] + started
        if started or not same:
            self.log(f"{rev.key}: Deployment {name} at {replicas} replica(s) ({rev.spec['image']})")
        return started

    def _wait_gone(self, name: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.kube.get(f"{self.apps}/{name}") is not None:
            time.sleep(0.5)

    def wait_ready(self, rev: rollout.Revision, replicas: list[dict[str, Any]], timeout_s: float) -> None:
        """REV's Deployment has as many Ready pods of its revision as it wants; fails at once on a pull error, a
        crash loop or an unschedulable pod, naming what Kubernetes says (and the container's last log lines)."""
        if not replicas:
            return
        name = slot_name(self.endpoint, rev.deployment, rev.slot)
        deadline = time.monotonic() + timeout_s
        want = len(rev.replicas)
        last = ""
        while True:
            pods = self._pods(rev)
            ready = sum(1 for p in pods if self._ready(p))
            if ready >= want and self._served(
                rev, {p["status"].get("podIP") for p in pods if self._ready(p)}
            ):
                self.log(f"{rev.key}: {ready} pod(s) ready in {name}")
                time.sleep(KUBE_PROXY_SYNC_S)
                return
            for p in pods:
                why = self._failing(p, rev)
                if why:
                    raise EndpointError(f"gate readiness failed for {rev.key}: {why}")
            last = f"{ready} of {want} pods ready"
            if time.monotonic() > deadline:
                raise EndpointError(
                    f"gate readiness failed for {rev.key}: {last} after {timeout_s:g} s (Deployment {self.ns}/{name})"
                )
            time.sleep(1.0)

    def _served(self, rev: rollout.Revision, ips: set[str | None]) -> bool:
        """The slot's Service lists IPS as ready endpoints (what kube-proxy programs next)."""
        slices = self.kube.list(
            f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices",
            {"kubernetes.io/service-name": slot_name(self.endpoint, rev.deployment, rev.slot)},
        )
        listed = {
            a
            for sl in slices
            for e in sl.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for a in e.get("addresses") or []
        }
        return ips <= listed

    def _failing(self, pod: dict[str, Any], rev: rollout.Revision) -> str:
        """Why POD will not become ready without a change of the stack, or "" while it still may."""
        pname = pod["metadata"]["name"]
        for c in pod.get("status", {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return f"pod {pname} cannot be scheduled: {c.get('message', '')}"
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return (
                    f"pod {pname} cannot pull image {cs.get('image') or rev.spec['image']}: {reason}: "
                    f"{waiting.get('message', '')[-400:]}"
                )
            if reason == "CrashLoopBackOff" or (cs.get("restartCount", 0) >= 2 and not cs.get("ready")):
                logs = ""
                with contextlib.suppress(ApiError):
                    logs = self.kube.request(
                        "GET", f"{self.core}/pods/{pname}/log?tailLines=8&previous=true", raw=True
                    )
                term = (cs.get("lastState") or {}).get("terminated") or {}
                return (
                    f"pod {pname} crash-loops (restarted {cs.get('restartCount', 0)} times, last exit "
                    f"{term.get('exitCode', '?')} {term.get('reason', '')}); its last log lines:\n{logs.strip()[-1500:]}"
                )
        return ""

    def connect(self, everything: dict[str, rollout.Revision], desired: dict[str, rollout.Revision]) -> None:
        """The router knows both slots of every deployment from the start (their Services never change)."""

    def route(self, weights: dict[str, float], everything: dict[str, rollout.Revision]) -> None:
        gen = f"gen-{time.time_ns() // 1_000_000}"
        files = nginx.bucket_routes(*to_router(everything, weights)) | {gen}
        self.kube.apply(
            f"{self.core}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{self.endpoint}-routes", "namespace": self.ns, "labels": self.labels},
                "data": dict.fromkeys(sorted(files), ""),
            },
        )
        self._reach_routers(gen)

    def _reach_routers(self, gen: str) -> None:
        """Make every Ready router pod see the new route files now (annotating a pod makes its kubelet re-sync
        the pod's volumes), and wait until each one answers the generation marker."""
        routers = [p for p in self._routers() if not self._simulated(p.get("spec", {}).get("nodeName", ""))]
        scheme = "https:" if self.p.get("tls") else ""
        for p in routers:
            self.kube.patch(
                f"{self.core}/pods/{p['metadata']['name']}",
                {"metadata": {"annotations": {"mlinfra.io/routes-generation": gen}}},
            )
        deadline = time.monotonic() + ROUTE_WAIT_S
        pending = [p["metadata"]["name"] for p in routers]
        while pending:
            name = pending[0]
            try:
                self.kube.request(
                    "GET",
                    f"{self.core}/pods/{scheme}{name}:8080/proxy/_mlinfra/routes/{gen}",
                    raw=True,
                    timeout_s=3,
                )
                pending.pop(0)
                continue
            except ApiError as e:
                if e.status == 404 and self.kube.get(f"{self.core}/pods/{name}") is None:
                    pending.pop(0)  # the pod went away (a router roll): the new ones mount the new map
                    continue
            if time.monotonic() > deadline:
                raise EndpointError(
                    f"router pod {self.ns}/{name} did not see the new traffic map within {ROUTE_WAIT_S:g} s"
                )
            time.sleep(0.2)

    def _routers(self) -> list[dict[str, Any]]:
        """The endpoint's Ready router pods (not those being deleted)."""
        return [
            p
            for p in self.kube.list(
                f"{self.core}/pods", {"mlinfra.io/endpoint": self.endpoint, "mlinfra.io/role": "router"}
            )
            if self._ready(p) and not p["metadata"].get("deletionTimestamp")
        ]

    def _simulated(self, node: str) -> bool:
        """Whether NODE is one of kwok's simulated nodes (tests with many nodes): its pods run nothing, so there
        is no router to confirm a step with."""
        if node not in self._nodes:
            obj = None
            with contextlib.suppress(
                ApiError
            ):  # a namespace-scoped user may not read nodes: a real node then
                obj = self.kube.get(f"/api/v1/nodes/{node}") if node else None
            self._nodes[node] = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(
                "kwok.x-k8s.io/node"
            ) == "fake"
        return self._nodes[node]

    def scrape(self, rev: rollout.Revision) -> gates.Sample:
        total = gates.Sample()
        for p in self._pods(rev):
            if not self._ready(p):
                continue
            try:
                text = self.kube.request(
                    "GET",
                    f"{self.core}/pods/{p['metadata']['name']}:8080/proxy/metrics",
                    raw=True,
                    timeout_s=3,
                )
            except ApiError:
                continue
            total = total + gates.parse(text)
        return total

    def ready_count(self, rev: rollout.Revision) -> int:
        return sum(1 for p in self._pods(rev) if self._ready(p))

    def retire(self, replicas: list[dict[str, Any]], grace_s: int) -> None:
        """A slot goes when its first replica does (the whole revision leaves); fewer replicas of a slot that
        stays were already scaled down by :meth:`scale`."""
        for r in replicas:
            name, i = r["name"].rsplit("/", 1)
            if i != "0":
                continue
            self.kube.delete(f"{self.hpas}/{name}")
            if self.kube.delete(f"{self.apps}/{name}"):
                self.log(f"Deployment {self.ns}/{name} removed (its pods drain for up to 45 s)")

    def lost(self, rev: rollout.Revision) -> list[dict[str, Any]]:
        """Kubernetes replaces lost pods itself; a slot Deployment deleted behind Pulumi's back is recreated."""
        name = slot_name(self.endpoint, rev.deployment, rev.slot)
        return list(rev.replicas) if self.kube.get(f"{self.apps}/{name}") is None else []

    def settle(self, desired: dict[str, rollout.Revision], weights: dict[str, float]) -> None:
        self.route(weights, desired)
        time.sleep(1.0)  # requests already on their way to what leaves finish first


# ----------------------------------------------------------------------------------------------------------------
# Drift: what `pulumi refresh` finds on the cluster


def healthy_observation(props: dict[str, Any]) -> dict[str, Any]:
    """What :func:`observe` reports for an endpoint running as PROPS declare."""
    return {"routes": "present", "deployments": {d: "running" for d in sorted(props.get("templates") or {})}}


def observe(props: dict[str, Any], kube: KubeClient) -> dict[str, Any]:
    """The endpoint's moving parts as the cluster has them: per deployment, its serving slot Deployment (present,
    with the recorded revision's image, not scaled to zero), and the routes ConfigMap. Pods come and go on their
    own (Kubernetes replaces them); an object deleted or edited behind Pulumi's back is drift, which `up` repairs
    by applying the recorded revision again."""
    t = KubernetesTarget(props, kube, lambda _m: None)
    live = [rollout.Revision.from_json(v) for v in (props.get("live") or {}).values()]
    deployments: dict[str, str] = {}
    for d in sorted(props.get("templates") or {}):
        found = []
        for rev in (r for r in live if r.deployment == d):
            name = slot_name(t.endpoint, d, rev.slot)
            obj = kube.get(f"{t.apps}/{name}")
            if obj is None:
                found.append(f"Deployment {name} missing")
                continue
            image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
            if image != rev.spec["image"]:
                found.append(f"Deployment {name} runs {image}")
            elif not (props.get("autoscale") or {}).get(d) and not obj["spec"].get("replicas"):
                found.append(f"Deployment {name} scaled to 0")
        deployments[d] = "; ".join(found) or "running"
    routes = kube.get(f"{t.core}/configmaps/{t.endpoint}-routes")
    return {"routes": "present" if routes is not None else "missing", "deployments": deployments}


# ----------------------------------------------------------------------------------------------------------------
# The dynamic provider


def _policy(props: dict[str, Any]) -> rollout.Policy:
    return rollout.Policy.from_spec(RolloutSpec.model_validate(props["rollout"]))


def _targets(props: dict[str, Any]) -> tuple[dict[str, rollout.Desired], dict[str, float]]:
    revs = {d: revision_of(t) for d, t in props["templates"].items()}
    desired = {}
    for d, t in props["templates"].items():
        auto = (props.get("autoscale") or {}).get(d)
        n = int(auto["min_replicas"]) if auto else int((props.get("replicas") or {}).get(d) or 1)
        image = t["spec"]["containers"][0]["image"]
        desired[d] = rollout.Desired(revs[d], {"image": image, "template": t}, n)
    return desired, upstream_weights(revs, {d: int(w) for d, w in props["traffic"].items()})


def _unknown(v: Any) -> bool:
    from mlinfra.endpoints.provider import _has_unknown

    return _has_unknown(v)


def _client(props: dict[str, Any]) -> KubeClient:
    return KubeClient(props.get("kubeconfig") or None, props.get("context") or None)


def _outputs(props: dict[str, Any], result: rollout.Result, weights: dict[str, float]) -> dict[str, Any]:
    return {
        **props,
        "live": {k: u.to_json() for k, u in result.live.items()},
        "weights": weights,
        "revisions": {u.deployment: u.revision for u in result.live.values()},
        "last_rollout": result.record,
    }


class KubernetesRolloutProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        if _unknown(news.get("templates")):
            return CheckResult({**news, "rollout_plan": ["(planned at up: an image is built first)"]}, [])
        _desired, new_w = _targets(news)
        # OLDS are the previous inputs (the weights are an output): the old map from the old templates.
        old_w = _targets(olds)[1] if olds.get("templates") and not _unknown(olds.get("templates")) else {}
        steps = plan(old_w, new_w, list(news["rollout"]["steps"]))
        return CheckResult(
            {
                **news,
                "rollout_plan": describe_plan(old_w, steps, float(news["rollout"]["bake_s"])),
                # What `up` brings the endpoint to; after a refresh found drift, preview shows observed → this.
                "observed": healthy_observation(news),
            },
            [],
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in CONTENT_KEYS if olds.get(k) != news.get(k)]
        moved = [k for k in ("endpoint", "namespace") if olds.get(k) != news.get(k)]
        return DiffResult(
            changes=bool(changed or moved) or observed_drift(olds, news),
            replaces=moved,
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        kube = _client(props)
        log = rollout.progress_log(props["endpoint"])
        target = KubernetesTarget(props, kube, log)
        desired, weights = _targets(props)
        result = rollout.converge(target, {}, desired, {}, weights, _policy(props), log)
        return CreateResult(
            id_=f"{props['namespace']}/{props['endpoint']}", outs=_outputs(props, result, weights)
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        kube = _client(news)
        log = rollout.progress_log(news["endpoint"])
        target = KubernetesTarget(news, kube, log)
        live = {k: rollout.Revision.from_json(v) for k, v in (olds.get("live") or {}).items()}
        old_w = {k: float(v) for k, v in (olds.get("weights") or {}).items()}
        desired, weights = _targets(news)
        # Deployments the stack no longer declares leave with the rollout (their traffic moves first).
        result = rollout.converge(target, live, desired, old_w, weights, _policy(news), log)
        return UpdateResult(outs=_outputs(news, result, weights))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the slot Deployments and routes as the cluster has them, as ``observed``."""
        try:
            observed = observe(props, _client(props))
        except (EndpointError, ApiError) as e:
            print(
                f"{props.get('endpoint')}: cannot read the cluster ({e}): state kept as it was",
                file=sys.stderr,
            )
            return ReadResult(id_, props)
        drift = drift_phrases(observed, healthy_observation(props))
        if drift:
            say_drift(props["endpoint"], "; ".join(drift), "`pulumi up` repairs it")
        return ReadResult(id_, {**props, "observed": observed})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        try:
            kube = _client(props)
        except EndpointError as e:
            print(f"{props.get('endpoint')}: {e}: nothing to delete", file=sys.stderr)
            return
        t = KubernetesTarget(props, kube, rollout.progress_log(props["endpoint"]))
        paths = [
            f"{collection}/{slot_name(props['endpoint'], d, slot)}"
            for d in props.get("templates") or {}
            for slot in SLOTS
            for collection in (t.hpas, t.apps)
        ]
        for path in [*paths, f"{t.core}/configmaps/{props['endpoint']}-routes"]:
            try:
                kube.delete(path)
            except ApiError as e:
                if e.status != 0:  # 0: the cluster does not answer (gone with its objects): nothing to delete
                    raise


class KubernetesRollout(Resource):
    """The slot Deployments, their Services and HPAs and the routes of one endpoint on a cluster (see the module
    docstring). Outputs: ``revisions``, ``rollout_plan``, ``last_rollout``."""

    revisions: Any
    rollout_plan: Any
    last_rollout: Any

    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(
            KubernetesRolloutProvider(),
            name,
            {
                **props,
                "live": None,
                "weights": None,
                "revisions": None,
                "rollout_plan": None,
                "last_rollout": None,
            },
            opts,
        )
