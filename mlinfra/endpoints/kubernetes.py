"""CloudEndpoint's Kubernetes target, through pulumi-kubernetes: a Namespace; per deployment a Deployment (probes
on the OIP health routes, non-root, read-only root), a Service, a PodDisruptionBudget and — with autoscaling — a
HorizontalPodAutoscaler that owns the replica count (the Deployment leaves ``spec.replicas`` out and ignores it, so
an `up` never resets what the autoscaler chose); the router (the same nginx configuration as on Local Docker, kept
in a Secret because it holds the keys) as a Deployment + Service; the keys in a Secret. Everything carries
``mlinfra.io/endpoint``, ``mlinfra.io/model``, ``mlinfra.io/model-version`` and ``mlinfra.io/image-digest``.

With ``render_yaml_to`` the provider writes the same objects as manifests (for Argo CD / Flux) instead of applying
them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlinfra import defaults
from mlinfra.endpoints import nginx
from mlinfra.endpoints.local import container_sink, container_url, model_labels
from mlinfra.endpoints.plan import revision
from mlinfra.images.scoring_image import ScoringImage

ROUTER_PORT = 8080
ROUTER_GRPC_PORT = 8081
"""The router pods' gRPC listener (the Service's port 81), and the scoring pods' gRPC port (MLINFRA_SERVE_GRPC_PORT)."""
GRPC_SERVICE_PORT = 81
SERVICE_PORTS = [
    {"name": "http", "port": 80, "targetPort": 8080},
    {"name": "grpc", "port": GRPC_SERVICE_PORT, "targetPort": ROUTER_GRPC_PORT, "appProtocol": "grpc"},
]
"""A deployment's (and a slot's) Service: REST on 80, the OIP gRPC service on 81."""
TLS_FILES = {"cert.pem": "cert", "key.pem": "key", "client_ca.pem": "client_ca"}
"""The TLS Secret's entries and the TlsAuth fields they come from."""
PRESTOP_S = 5
"""A stopping scoring pod keeps serving this long, while its Service's endpoints and kube-proxy forget it."""
DRAIN_LINGER_S = 12
"""Then it answers with Connection: close for up to this long: past the router's upstream keep-alive (10 s)."""


def _labels(base: dict[str, str], a: list[Any]) -> dict[str, str]:
    image, models = a[0], a[1] or []
    return {**base, **model_labels(models, image.split("@", 1)[1] if "@sha256:" in image else None)}


def _deployment_out(spec: dict[str, Any], a: list[Any]) -> dict[str, Any]:
    image, models = a[0], a[1] or []
    return {
        "image": image,
        "digest": ("sha256:" + image.split("@sha256:", 1)[1]) if "@sha256:" in image else None,
        "models": [{k: m[k] for k in ("name", "version", "sha256")} for m in models],
        "revision": revision({**spec, "image": image}),
        "replicas": None if spec["autoscale"] else spec["replicas"],
    }


NODE_IP_VAR = "MLINFRA_NODE_IP"


def _pod_env(env: dict[str, Any]) -> list[dict[str, Any]]:
    """A deployment's env as a pod's. A data-collection sink or an OTLP endpoint on loopback (Azurite or a collector
    on the machine that runs the node) is addressed at the pod's node (its status.hostIP, expanded by Kubernetes
    from the variable before it): a pod's own loopback is not the machine's."""
    out: list[dict[str, Any]] = []
    node = f"$({NODE_IP_VAR})"
    if "MLINFRA_SERVE_COLLECT" in env or "MLINFRA_SERVE_OTLP_ENDPOINT" in env:
        out.append({"name": NODE_IP_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})
    for k, v in env.items():
        if k == "MLINFRA_SERVE_COLLECT":
            v = pulumi.Output.from_input(v).apply(
                lambda text: json.dumps(
                    {**json.loads(text), "sink": container_sink(json.loads(text)["sink"], node)}
                )
            )
        elif k == "MLINFRA_SERVE_OTLP_ENDPOINT":
            v = pulumi.Output.from_input(v).apply(lambda url: container_url(url, node))
        out.append({"name": k, "value": v})
    return out


def build_kubernetes(
    parent: pulumi.ComponentResource,
    name: str,
    endpoint: str,
    target: Any,
    specs: dict[str, dict[str, Any]],
    traffic: dict[str, int],
    mirror: dict[str, int],
    args: Any,
    keys: list[Any],
    deployments: dict[str, Any],
    internal_key: Any,
    rollout: Any,
) -> dict[str, Any]:
    from mlinfra.endpoints.cloud_endpoint import check_kubeconfig

    ns_name = target.namespace or endpoint
    # Rendered YAML holds values in plain text: Secrets are written only when asked for, and it says so either way.
    write_secrets = not target.render_yaml_to or target.render_secrets
    if target.render_yaml_to:
        needed = [
            f"{endpoint}-keys (one empty entry per key, named k.<KEY>)",
            *(
                [f"{endpoint}-tls (entries cert.pem, key.pem, client_ca.pem: the router's TLS material)"]
                if args.auth == "tls"
                else []
            ),
            f"{endpoint}-internal (entries 'key': a random 43-character URL-safe key, 'auth.conf': "
            "proxy_set_header Authorization \"Bearer <that key>\"; and 'grpc-auth.conf': grpc_set_header "
            'authorization "Bearer <that key>";)',
        ] + (
            [f"{endpoint}-collect (entry 'sas': the collection SAS)"]
            if args.data_collection is not None
            else []
        )
        if target.render_secrets:
            pulumi.log.warn(
                f"render_yaml_to={target.render_yaml_to}: the Secrets {', '.join(n.split(' ')[0] for n in needed)} "
                "are written with their values in plain YAML (render_secrets=True): seal or encrypt them before "
                "they reach a repository",
                resource=parent,
            )
        else:
            pulumi.log.info(
                f"render_yaml_to={target.render_yaml_to}: no Secret is written (their values would be plain "
                f"YAML). Create them in namespace {ns_name} with your secret manager: {'; '.join(needed)}. Or set "
                "render_secrets=True to write them in plain YAML",
                resource=parent,
            )
    if target.render_yaml_to:
        provider = k8s.Provider(
            f"{name}-render",
            render_yaml_to_directory=target.render_yaml_to,
            opts=pulumi.ResourceOptions(parent=parent),
        )
    elif target.provider is not None:
        provider = target.provider
    else:
        if target.kubeconfig:
            check_kubeconfig(target.kubeconfig, target.context, f"CloudEndpoint {name}")
        provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=target.kubeconfig,
            context=target.context,
            opts=pulumi.ResourceOptions(parent=parent),
        )
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    base = {
        "app.kubernetes.io/managed-by": "mlinfra",
        "app.kubernetes.io/part-of": endpoint,
        "mlinfra.io/endpoint": endpoint,
    }
    depends: list[pulumi.Resource] = []
    if target.create_namespace:
        ns = k8s.core.v1.Namespace(f"{name}-ns", metadata={"name": ns_name, "labels": base}, opts=opts)
        depends.append(ns)
    nsopts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=depends))
    collect_env: list[dict[str, Any]] = []
    dc = args.data_collection
    if dc is not None:
        # The write-only SAS reaches the pods through a Secret, never as a plain env value in the manifest.
        if write_secrets:
            collect_secret = k8s.core.v1.Secret(
                f"{name}-collect",
                metadata={"name": f"{endpoint}-collect", "namespace": ns_name, "labels": base},
                string_data={"sas": dc.sas.apply(lambda v: v or "")},
                opts=nsopts,
            )
            depends.append(collect_secret)
        collect_env = [
            {
                "name": "MLINFRA_SERVE_COLLECT_CREDENTIAL",
                "valueFrom": {"secretKeyRef": {"name": f"{endpoint}-collect", "key": "sas"}},
            }
        ]
    # The router's credential towards the scoring pods (they accept no other): the pods read it from the Secret as
    # MLINFRA_SERVE_KEYS, the router includes the header line from the same Secret (its ConfigMap holds no secret).
    internal_secret = None
    if write_secrets:
        internal_secret = k8s.core.v1.Secret(
            f"{name}-internal",
            metadata={"name": f"{endpoint}-internal", "namespace": ns_name, "labels": base},
            string_data=pulumi.Output.from_input(internal_key).apply(
                lambda k: {
                    "key": k,
                    "auth.conf": f'proxy_set_header Authorization "Bearer {k}";\n',
                    "grpc-auth.conf": f'grpc_set_header authorization "Bearer {k}";\n',
                }
            ),
            opts=nsopts,
        )
    internal_env = [
        {
            "name": "MLINFRA_SERVE_KEYS",
            "valueFrom": {"secretKeyRef": {"name": f"{endpoint}-internal", "key": "key"}},
        }
    ]
    # auth="tls": the router terminates TLS and verifies client certificates against the endpoint's CA, from a Secret.
    tls = args.auth == "tls" and args.tls is not None
    tls_secret = None
    tls_digest = ""
    if tls:
        files = {n: Path(getattr(args.tls, f)).read_text() for n, f in TLS_FILES.items()}
        tls_digest = hashlib.sha256("".join(files[n] for n in sorted(files)).encode()).hexdigest()[:16]
        if write_secrets:
            tls_secret = k8s.core.v1.Secret(
                f"{name}-tls",
                metadata={"name": f"{endpoint}-tls", "namespace": ns_name, "labels": base},
                string_data=pulumi.Output.secret(files),
                opts=nsopts,
            )
    if internal_secret is not None:
        depends.append(internal_secret)
        nsopts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=list(depends)))
    # Defence in depth where the network enforces NetworkPolicy: only the endpoint's router pods reach its scoring
    # pods (kubelet probes come from the node, which policies do not filter).
    k8s.networking.v1.NetworkPolicy(
        f"{name}-scorers",
        metadata={"name": f"{endpoint}-scorers", "namespace": ns_name, "labels": base},
        spec={
            "podSelector": {
                "matchLabels": {"mlinfra.io/endpoint": endpoint},
                "matchExpressions": [{"key": "mlinfra.io/deployment", "operator": "Exists"}],
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {"mlinfra.io/endpoint": endpoint, "mlinfra.io/role": "router"}
                            }
                        }
                    ],
                    "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 8081, "protocol": "TCP"}],
                }
            ],
        },
        opts=nsopts,
    )
    # Applying to a cluster, the rollout engine moves traffic between two slot Deployments per deployment, gated
    # (mlinfra.endpoints.kube_rollout); rendering YAML for GitOps, each deployment is one Deployment that the
    # GitOps tool rolls.
    live = not target.render_yaml_to
    templates: dict[str, Any] = {}
    replicas_in: dict[str, Any] = {}
    autoscale_in: dict[str, Any] = {}
    slot_ips: dict[str, Any] = {}
    services_out: dict[str, str] = {}
    service_objs: dict[str, k8s.core.v1.Service] = {}
    deployments_out: dict[str, Any] = {}
    for d, spec in specs.items():
        dep = deployments[d]
        models = dep.image.models if isinstance(dep.image, ScoringImage) else None
        labels = pulumi.Output.all(pulumi.Output.from_input(spec["image"]), models).apply(
            functools.partial(_labels, {**base, "mlinfra.io/deployment": d})
        )
        selector = {"mlinfra.io/endpoint": endpoint, "mlinfra.io/deployment": d}
        obj = f"{endpoint}-{d}"
        devices = {k: str(v) for k, v in (spec.get("accelerators") or {}).items()}
        resources = {
            "requests": {"cpu": f"{spec['cpu']:g}", "memory": f"{spec['memory_mb']}Mi", **devices},
            "limits": {"cpu": f"{spec['cpu']:g}", "memory": f"{spec['memory_mb']}Mi", **devices},
        }
        probe = {  # every 2 s: a new pod takes traffic (and a rollout moves on) soon after it is ready
            "httpGet": {"path": "/v2/health/ready", "port": 8080},
            "periodSeconds": 2,
            "failureThreshold": 3,
        }
        deployment_spec: dict[str, Any] = {
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [*target.tolerations, *(spec.get("tolerations") or [])],
                    **({"nodeSelector": spec["node_selector"]} if spec.get("node_selector") else {}),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    # preStop 5 s: the endpoints controller and kube-proxy drop the pod from its Service first; then
                    # the server lingers (answering with Connection: close) past the router's 10 s upstream keep-alive,
                    # so nginx never sends on a connection the pod is closing; then it drains in-flight requests.
                    "terminationGracePeriodSeconds": 45,
                    "containers": [
                        {
                            "name": "scorer",
                            "image": spec["image"],
                            "ports": [
                                {"name": "http", "containerPort": 8080},
                                {"name": "grpc", "containerPort": ROUTER_GRPC_PORT},
                            ],
                            "env": [
                                *_pod_env(spec["env"]),
                                {"name": "MLINFRA_SERVE_GRPC_PORT", "value": str(ROUTER_GRPC_PORT)},
                                {"name": "MLINFRA_SERVE_DRAIN_LINGER_S", "value": str(DRAIN_LINGER_S)},
                                # A Guaranteed pod with whole CPUs gets cores of its own under the static CPU manager,
                                # where the server busy-polls by default; an autoscaler on CPU would count the spinning.
                                *(
                                    [{"name": "MLINFRA_SERVE_BUSY_POLL_US", "value": "0"}]
                                    if spec["autoscale"] and "MLINFRA_SERVE_BUSY_POLL_US" not in spec["env"]
                                    else []
                                ),
                                *internal_env,
                                *collect_env,
                            ],
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
                            "resources": resources,
                            "readinessProbe": probe,
                            "livenessProbe": {
                                **probe,
                                "httpGet": {"path": "/v2/health/live", "port": 8080},
                                "initialDelaySeconds": 10,
                                # slower than readiness: a pod busy at its CPU limit is not restarted for it
                                "periodSeconds": 10,
                                "timeoutSeconds": 3,
                            },
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                # data collection's spool: survives container restarts (kill -9) within the pod
                                {"name": "spool", "mountPath": "/var/lib/mlinfra/spool"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "spool", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        }
        autoscale = spec["autoscale"]
        templates[d] = deployment_spec["template"]
        replicas_in[d] = spec["replicas"]
        autoscale_in[d] = autoscale
        deployments_out[d] = pulumi.Output.all(spec["image"], models).apply(
            functools.partial(_deployment_out, spec)
        )
        svc = k8s.core.v1.Service(  # both slots' pods: what mirroring and users address as the deployment
            obj,
            # Applying, its pods come later (from the rollout, which needs this Service's address first).
            metadata={
                "name": obj,
                "namespace": ns_name,
                "labels": labels,
                **({"annotations": {"pulumi.com/skipAwait": "true"}} if live else {}),
            },
            spec={"selector": selector, "ports": SERVICE_PORTS},
            opts=nsopts,
        )
        depends.append(svc)
        service_objs[d] = svc
        services_out[d] = f"{obj}.{ns_name}.svc.cluster.local:80"
        k8s.policy.v1.PodDisruptionBudget(
            obj,
            metadata={"name": obj, "namespace": ns_name, "labels": labels},
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            opts=nsopts,
        )
        if live:
            # The rollout's two slots: their Services are declared here, once (known addresses at preview, so the
            # router's configuration never looks changed); their Deployments and HPAs are the rollout's
            # (mlinfra.endpoints.kube_rollout).
            for slot in ("a", "b"):
                slot_svc = k8s.core.v1.Service(
                    f"{obj}-{slot}",
                    metadata={
                        "name": f"{obj}-{slot}",
                        "namespace": ns_name,
                        "labels": {**base, "mlinfra.io/deployment": d},
                        "annotations": {"pulumi.com/skipAwait": "true"},
                    },
                    spec={
                        "selector": {**selector, "mlinfra.io/slot": slot},
                        "ports": SERVICE_PORTS,
                    },
                    opts=nsopts,
                )
                slot_ips[nginx.upstream_name(d, slot.upper())] = slot_svc.spec.cluster_ip
            continue
        dopts = nsopts
        if autoscale is None:
            deployment_spec["replicas"] = spec["replicas"]
        else:
            # The HPA owns spec.replicas: leave it out and ignore it, so `up` never resets the autoscaler's choice.
            dopts = pulumi.ResourceOptions.merge(
                nsopts, pulumi.ResourceOptions(ignore_changes=["spec.replicas"])
            )
        kd = k8s.apps.v1.Deployment(
            obj,
            metadata={"name": obj, "namespace": ns_name, "labels": labels},
            spec=deployment_spec,
            opts=dopts,
        )
        if autoscale is not None:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                obj,
                metadata={"name": obj, "namespace": ns_name, "labels": labels},
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj},
                    "minReplicas": autoscale["min_replicas"],
                    "maxReplicas": autoscale["max_replicas"],
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {
                                    "type": "Utilization",
                                    "averageUtilization": autoscale["cpu_target_percent"],
                                },
                            },
                        }
                    ],
                },
                opts=pulumi.ResourceOptions.merge(nsopts, pulumi.ResourceOptions(depends_on=[kd])),
            )
    # The router: nginx.conf in a ConfigMap (it holds no secret), the traffic map as route files in a ConfigMap and
    # the keys as file names in a Secret. The kubelet refreshes mounted ConfigMaps and Secrets in place, and nginx
    # checks the files on every request: traffic changes and key rotations reach running routers without a restart.
    # Upstreams are the Services' ClusterIPs when applying (a cluster needs no DNS for it, and an IP is fixed for a
    # Service's life), their DNS names when rendering YAML (no ClusterIP is known before the cluster assigns it).
    unames = {d: nginx.upstream_name(d, "svc") for d in services_out}
    rollout_res = None
    if live:
        from mlinfra.endpoints.kube_rollout import KubernetesRollout

        rollout_res = KubernetesRollout(
            f"{name}-rollout",
            {
                "endpoint": endpoint,
                "namespace": ns_name,
                "kubeconfig": target.kubeconfig,
                "context": target.context,
                "labels": base,
                "tls": bool(tls),
                "templates": templates,
                "replicas": replicas_in,
                "autoscale": autoscale_in,
                "traffic": {d: int(w) for d, w in traffic.items()},
                "rollout": rollout.model_dump(),
            },
            pulumi.ResourceOptions(parent=parent, depends_on=list(depends)),
        )

    def _render(ips: dict[str, Any], slot_ips: dict[str, str] | None = None) -> str:
        addresses = {d: f"{ips[d]}:80" if ips.get(d) else a for d, a in services_out.items()}
        upstreams = {unames[d]: (d, [a]) for d, a in addresses.items()}
        for (
            d
        ) in services_out:  # the rollout's slots (applying to a cluster): what the route files choose from
            for slot in ("A", "B"):
                u = nginx.upstream_name(d, slot)
                if (slot_ips or {}).get(u):
                    # backup: the deployment's Service over both slots, tried only when a connection to the slot's
                    # fails (kube-proxy not yet programming a new slot's pods, a pod that just left): never a 502
                    upstreams[u] = (d, [f"{slot_ips[u]}:80", f"{addresses[d]} backup"])  # type: ignore[index]
        grpc_upstreams = {
            u: [_grpc_address(a) for a in addrs] for u, (_d, addrs) in upstreams.items()
        }  # the same Services' gRPC port (a backup stays a backup)
        return nginx.render(
            nginx.RouterConfig(
                listen=f"0.0.0.0:{ROUTER_PORT}",
                grpc_listen=f"0.0.0.0:{ROUTER_GRPC_PORT}",
                grpc_upstreams=grpc_upstreams,
                upstream_grpc_auth_file="/etc/mlinfra/internal/grpc-auth.conf",
                generation="k8s",
                upstreams=upstreams,
                state_dir="/etc/mlinfra",
                mirror={unames[d]: float(p) for d, p in mirror.items() if p},
                key_auth=args.auth == "key",
                max_body_mb=args.max_body_mb,
                upstream_auth_file="/etc/mlinfra/internal/auth.conf",
                tls_cert="/etc/mlinfra/tls/cert.pem" if tls else None,
                tls_key="/etc/mlinfra/tls/key.pem" if tls else None,
                tls_client_ca="/etc/mlinfra/tls/client_ca.pem" if tls else None,
                route_probe=slot_ips is not None,
            )
        ).replace("pid /tmp/nginx.pid;", "pid /tmp/nginx.pid;  # conf: /etc/mlinfra/conf/nginx.conf")

    if rollout_res is not None:
        conf = pulumi.Output.all(
            pulumi.Output.all(**{d: svc.spec.cluster_ip for d, svc in service_objs.items()}),
            pulumi.Output.all(**slot_ips),
        ).apply(lambda a: _render(a[0], a[1] or {}))
    else:
        conf = pulumi.Output.from_input(_render({}))
    conf_map = k8s.core.v1.ConfigMap(
        f"{name}-router",
        metadata={"name": f"{endpoint}-router", "namespace": ns_name, "labels": base},
        data={"nginx.conf": conf},
        opts=pulumi.ResourceOptions.merge(nsopts, pulumi.ResourceOptions(depends_on=depends)),
    )
    routes_map = None
    if rollout_res is None:  # applying, the rollout writes the route files step by step
        routes = nginx.bucket_routes({unames[d]: float(w) for d, w in traffic.items() if w}, unames)
        routes_map = k8s.core.v1.ConfigMap(
            f"{name}-routes",
            metadata={"name": f"{endpoint}-routes", "namespace": ns_name, "labels": base},
            data=dict.fromkeys(sorted(routes), ""),
            opts=nsopts,
        )
    keys_secret = (
        k8s.core.v1.Secret(
            f"{name}-keys",
            metadata={"name": f"{endpoint}-keys", "namespace": ns_name, "labels": base},
            string_data=pulumi.Output.all(*keys).apply(lambda ks: {f"k.{k}": "" for k in ks})
            if keys
            else {"none": ""},
            opts=nsopts,
        )
        if write_secrets
        else None
    )
    # A new configuration or new TLS material rolls the router pods (nginx reads both at start).
    checksum = conf.apply(lambda c: hashlib.sha256((c + tls_digest).encode()).hexdigest()[:16])
    router_labels = {**base, "mlinfra.io/role": "router"}
    router_selector = {"mlinfra.io/endpoint": endpoint, "mlinfra.io/role": "router"}
    router = k8s.apps.v1.Deployment(
        f"{name}-router",
        metadata={"name": f"{endpoint}-router", "namespace": ns_name, "labels": router_labels},
        spec={
            "replicas": 2,
            "selector": {"matchLabels": router_selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": router_labels,
                    # A new configuration rolls the router pods (nginx reads it at start).
                    "annotations": {"mlinfra.io/config-checksum": checksum},
                },
                "spec": {
                    "tolerations": target.tolerations,
                    "containers": [
                        {
                            "name": "router",
                            "image": target.router_image or defaults.router_image_ref(),
                            "command": ["nginx", "-c", "/etc/mlinfra/conf/nginx.conf", "-g", "daemon off;"],
                            "ports": [
                                {"name": "http", "containerPort": ROUTER_PORT},
                                {"name": "grpc", "containerPort": ROUTER_GRPC_PORT},
                            ],
                            "readinessProbe": {
                                "httpGet": {
                                    "path": "/_mlinfra/generation",
                                    "port": ROUTER_PORT,
                                    "scheme": "HTTPS" if tls else "HTTP",
                                },
                                "periodSeconds": 2,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                            "volumeMounts": [
                                {"name": "conf", "mountPath": "/etc/mlinfra/conf", "readOnly": True},
                                {"name": "routes", "mountPath": "/etc/mlinfra/routes", "readOnly": True},
                                {"name": "keys", "mountPath": "/etc/mlinfra/keys", "readOnly": True},
                                {"name": "internal", "mountPath": "/etc/mlinfra/internal", "readOnly": True},
                                *(
                                    [{"name": "tls", "mountPath": "/etc/mlinfra/tls", "readOnly": True}]
                                    if tls
                                    else []
                                ),
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "varlib", "mountPath": "/var/lib/nginx"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "conf", "configMap": {"name": f"{endpoint}-router"}},
                        {"name": "routes", "configMap": {"name": f"{endpoint}-routes"}},
                        {"name": "keys", "secret": {"secretName": f"{endpoint}-keys", "defaultMode": 0o444}},
                        {
                            "name": "internal",
                            "secret": {"secretName": f"{endpoint}-internal", "defaultMode": 0o400},
                        },
                        *(
                            [
                                {
                                    "name": "tls",
                                    "secret": {"secretName": f"{endpoint}-tls", "defaultMode": 0o400},
                                }
                            ]
                            if tls
                            else []
                        ),
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "varlib", "emptyDir": {}},
                    ],
                },
            },
        },
        opts=pulumi.ResourceOptions.merge(
            nsopts,
            pulumi.ResourceOptions(
                depends_on=[
                    r
                    for r in (conf_map, routes_map, rollout_res, keys_secret, internal_secret, tls_secret)
                    if r is not None
                ]
            ),
        ),
    )
    k8s.core.v1.Service(
        f"{name}-router",
        metadata={"name": endpoint, "namespace": ns_name, "labels": router_labels},
        spec={
            "type": target.service_type,
            "selector": router_selector,
            "ports": [
                {"name": "https", "port": 443, "targetPort": ROUTER_PORT}
                if tls
                else {"name": "http", "port": 80, "targetPort": ROUTER_PORT},
                {
                    "name": "grpc",
                    "port": GRPC_SERVICE_PORT,
                    "targetPort": ROUTER_GRPC_PORT,
                    "appProtocol": "grpc",
                },
            ],
        },
        opts=pulumi.ResourceOptions.merge(nsopts, pulumi.ResourceOptions(depends_on=[router])),
    )
    uri = f"{'https' if tls else 'http'}://{endpoint}.{ns_name}.svc.cluster.local"
    return {
        "scoring_uri": pulumi.Output.from_input(f"{uri}/score"),
        "grpc_uri": pulumi.Output.from_input(f"{endpoint}.{ns_name}.svc.cluster.local:{GRPC_SERVICE_PORT}"),
        "openapi_uri": pulumi.Output.from_input(f"{uri}/openapi.json"),
        "deployments": pulumi.Output.all(**deployments_out)
        if deployments_out
        else pulumi.Output.from_input({}),
        "rollout_plan": rollout_res.rollout_plan
        if rollout_res is not None
        else pulumi.Output.from_input(
            [
                f"traffic {', '.join(f'{d} {w}%' for d, w in traffic.items() if w)} (rendered for GitOps: the map "
                "is applied at once; each Deployment rolls its pods with maxUnavailable 0)"
            ]
        ),
        "last_rollout": rollout_res.last_rollout if rollout_res is not None else pulumi.Output.from_input([]),
    }


def _grpc_address(address: str) -> str:
    """An nginx upstream server line for a Service's REST port (``host:80[ backup]``) → the same for its gRPC port."""
    host_port, _, flags = address.partition(" ")
    host = host_port.rsplit(":", 1)[0]
    return f"{host}:{GRPC_SERVICE_PORT}" + (f" {flags}" if flags else "")
