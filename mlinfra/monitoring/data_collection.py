"""DataCollection: step 4 of the lifecycle — capture the inputs and outputs an endpoint scores into blob storage
(Azure Blob, or a local folder), sampled, partitioned, never lost or duplicated when storage is down; the scoring
server's collector does the writing (mlinfra_scoring.collector). See docs/data-collection.md.

This module provisions the storage side: the container (created if absent) and a scoped, expiring credential — a
container SAS allowing create/write only — handed to the scoring servers as a Pulumi secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlinfra.errors import CollectionError
from mlinfra.monitoring.provider import (  # noqa: F401
    CollectionStorage,
    container_sas,
    parse_storage,
    provision,
)

PATH_TEMPLATE = "{endpoint}/{deployment}/{model}/{version}/{yyyy}/{MM}/{dd}/{HH}/{time}-{id}.jsonl"


@dataclass
class DataCollectionArgs:
    storage: str | None = None
    """azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL (created if absent), or file:///folder. Default: the stack's
    `mlinfra:collectionStorage` config, else a folder in <project>/.mlinfra/collected."""
    storage_credential: pulumi.Input[str] | None = None
    """The storage account key (a secret), used here only to create the container and issue the SAS. Default: the
    stack's secret `mlinfra:collectionCredential`."""
    sample_rate: float = 1.0
    """Share of scored requests captured, in [0, 1] (decided by request id)."""
    capture: list[str] = field(default_factory=lambda: ["inputs", "outputs"])
    headers: list[str] = field(default_factory=list)
    """Request headers to record with each record (e.g. x-client-id). Authorization is never recorded."""
    sas_ttl_hours: float = 24 * 30
    """Lifetime of the scoring servers' write-only SAS; bump `rotation` to issue a new one before it ends."""
    rotation: int = 1
    retention_days: int | None = None
    """How long collected data should be kept: output as `retention_days` for the storage account's lifecycle
    policy (mlinfra itself deletes nothing). Default: kept."""
    spool_max_mb: float = 256.0
    otlp_endpoint: str | None = None
    """Also export the servers' metrics (requests, latency, batch sizes, drops; by model and version) and a trace
    span per request (linked to the caller's W3C `traceparent`) over OTLP/HTTP to this OpenTelemetry endpoint, e.g.
    http://127.0.0.1:4318 (on this machine's loopback: containers and pods reach it at their gateway or node, port
    4318 forwarded by `mlinfra services`). Default: off (Prometheus /metrics only)."""
    otlp_interval_s: float = 15.0
    otlp_trace_sample: float = 0.05
    """Share of requests traced when the caller sends no sampling decision (a caller's `traceparent` flag is always
    followed): 1 traces every request, 0 only those whose caller asks. A traced request costs the server ≈ 110 µs
    of CPU (benchmarks/serving/LIBRARIES.md), so the default keeps tracing near 2 % of throughput."""


class DataCollection(pulumi.ComponentResource):
    """Pass it to CloudEndpointArgs(data_collection=...). Outputs: ``container_uri``, ``path_template``,
    ``sas_expires``; ``sas`` (secret)."""

    def __init__(self, name: str, args: DataCollectionArgs, opts: pulumi.ResourceOptions | None = None):
        where = f"DataCollection {name}"
        if isinstance(args.sample_rate, bool) or not 0 <= args.sample_rate <= 1:
            raise CollectionError(
                f"{where}: sample_rate = {args.sample_rate!r} must be in [0, 1] (e.g. 0.1 for 10 %)"
            )
        bad = sorted(set(args.capture) - {"inputs", "outputs"}) or ([] if args.capture else ["(nothing)"])
        if bad:
            raise CollectionError(f"{where}: capture = {args.capture!r}: choose 'inputs', 'outputs' or both")
        if any(h.lower() == "authorization" for h in args.headers):
            raise CollectionError(
                f"{where}: headers must not include Authorization (it carries the endpoint key)"
            )
        if not 0 < args.sas_ttl_hours <= 24 * 365:
            raise CollectionError(f"{where}: sas_ttl_hours = {args.sas_ttl_hours} must be in (0, 8760]")
        if args.otlp_endpoint is not None and not args.otlp_endpoint.startswith(("http://", "https://")):
            raise CollectionError(f"{where}: otlp_endpoint = {args.otlp_endpoint!r} must be an http(s) URL")
        if not 0.1 <= args.otlp_interval_s <= 3600:
            raise CollectionError(f"{where}: otlp_interval_s = {args.otlp_interval_s} must be in 0.1..3600")
        if isinstance(args.otlp_trace_sample, bool) or not 0 <= args.otlp_trace_sample <= 1:
            raise CollectionError(
                f"{where}: otlp_trace_sample = {args.otlp_trace_sample!r} must be in [0, 1] (e.g. 0.05 for 5 %)"
            )
        self.otlp = (args.otlp_endpoint, args.otlp_interval_s, args.otlp_trace_sample)
        super().__init__(
            "mlinfra:monitoring:DataCollection",
            name,
            {"sample_rate": float(args.sample_rate), "capture": list(args.capture)},
            opts,
        )
        cfg = pulumi.Config("mlinfra")
        storage = (
            args.storage
            or cfg.get("collectionStorage")
            or f"file://{Path.cwd().resolve() / '.mlinfra' / 'collected'}"
        )
        parse_storage(storage)
        cred = (
            args.storage_credential
            if args.storage_credential is not None
            else cfg.get_secret("collectionCredential")
        )
        self.storage: Any = CollectionStorage(
            f"{name}-storage",
            {
                "storage": storage,
                "storage_credential": pulumi.Output.secret(cred) if cred is not None else None,
                "ttl_hours": args.sas_ttl_hours,
                "rotation": args.rotation,
                "container_uri": None,
                "sas": None,  # only stacks applied before the SAS moved into the program hold one (kept until rotated)
                "expires": None,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["storage_credential", "sas"]),
        )
        self.settings = {
            "sink": storage,
            "sample_rate": float(args.sample_rate),
            "capture": list(args.capture),
            "headers": [h.lower() for h in args.headers],
            "spool_max_mb": float(args.spool_max_mb),
        }
        st: Any = self.storage
        self.container_uri: pulumi.Output[str] = st.container_uri
        # The SAS is computed here, in the program, as a secret: it is never a provider output (see provider.py).
        self.sas: pulumi.Output[str | None] = pulumi.Output.secret(
            pulumi.Output.all(cred, st.expires, st.sas).apply(
                lambda a: a[2] or container_sas(storage, a[0], a[1])
            )
        )
        self.sas_expires: pulumi.Output[str | None] = st.expires
        self.storage_uri = storage
        self._credential = cred
        self.path_template = PATH_TEMPLATE
        self.register_outputs(
            {
                "container_uri": self.container_uri,
                "path_template": self.path_template,
                "sas_expires": self.sas_expires,
            }
        )

    def sas_for(self, permissions: str, uri: str | None = None) -> pulumi.Output[str]:
        """A container SAS with PERMISSIONS (e.g. "rl": read + list, what a ModelMonitor reads the records with) on
        the storage's container, or on URI's (a container of the same account), valid as long as the servers' one,
        as a secret; "" for a folder."""
        st: Any = self.storage
        return pulumi.Output.secret(
            pulumi.Output.all(self._credential, st.expires).apply(
                lambda a: container_sas(uri or self.storage_uri, a[0], a[1], permissions)
            )
        )

    def server_env(self, endpoint: str, deployment: str, spool_dir: str) -> dict[str, str]:
        """The scoring servers' environment for one deployment: the collector and, if set, OTLP export."""
        env = {
            "MLINFRA_SERVE_COLLECT": json.dumps(
                {**self.settings, "endpoint": endpoint, "deployment": deployment, "spool_dir": spool_dir}
            )
        }
        if self.otlp[0]:
            env["MLINFRA_SERVE_OTLP_ENDPOINT"] = self.otlp[0]
            env["MLINFRA_SERVE_OTLP_INTERVAL_S"] = f"{self.otlp[1]:g}"
            env["MLINFRA_SERVE_OTLP_RESOURCE"] = f"endpoint={endpoint},deployment={deployment}"
            env["MLINFRA_SERVE_TRACE_SAMPLE"] = f"{self.otlp[2]:g}"
        return env
