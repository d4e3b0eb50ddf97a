"""A small Kubernetes API client for the rollout engine's Kubernetes target: JSON over HTTPS with a kubeconfig's
credentials (client certificate, bearer token), nothing else. pulumi-kubernetes applies what is declarative; this
client does what happens *during* an `up` — scale a slot, read pods, rewrite the routes, read pods' `/metrics`
through the API server's pod proxy — where a provider call per step would be far too slow.

Only the standard library and PyYAML: the runtime of the rollout is the Pulumi engine's Python process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mlinfra.errors import EndpointError


class ApiError(EndpointError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _material(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    """A kubeconfig value given inline (``<key>-data``, base64) or as a file (``<key>``, relative to the file)."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / entry[key]).read_bytes()
    return None


class KubeClient:
    """One cluster, from a kubeconfig file and context (default: the file's current context)."""

    def __init__(self, kubeconfig: str | None, context: str | None = None, timeout_s: float = 15.0):
        path = Path(
            kubeconfig or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config"
        ).expanduser()
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise EndpointError(f"kubeconfig {path}: cannot be read ({e})") from None
        name = context or cfg.get("current-context")
        ctx = next((c["context"] for c in cfg.get("contexts") or [] if c.get("name") == name), None)
        if ctx is None:
            raise EndpointError(f"kubeconfig {path}: no context {name!r}")
        cluster: dict[str, Any] = next(
            (c["cluster"] for c in cfg.get("clusters") or [] if c.get("name") == ctx.get("cluster")), {}
        )
        user: dict[str, Any] = (
            next((u["user"] for u in cfg.get("users") or [] if u.get("name") == ctx.get("user")), {}) or {}
        )
        self.cluster_name = ctx.get("cluster", "")
        self.server = str(cluster.get("server", "")).rstrip("/")
        if not self.server:
            raise EndpointError(f"kubeconfig {path}: cluster {self.cluster_name!r} has no server")
        self.timeout_s = timeout_s
        self.token = user.get("token")
        ssl_ctx = ssl.create_default_context()
        ca = _material(cluster, "certificate-authority", path.parent)
        if cluster.get("insecure-skip-tls-verify"):
            ssl_ctx = ssl._create_unverified_context()
        elif ca:
            ssl_ctx.load_verify_locations(cadata=ca.decode())
        cert, key = (
            _material(user, "client-certificate", path.parent),
            _material(user, "client-key", path.parent),
        )
        if cert and key:
            # ssl loads a key pair only from files: a private folder, removed as soon as it is loaded.
            with tempfile.TemporaryDirectory(prefix="mlinfra-kube-") as d:
                pem = Path(d) / "client.pem"
                fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(cert + b"\n" + key)
                ssl_ctx.load_cert_chain(str(pem))
        self.ssl = ssl_ctx

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s, context=self.ssl) as r:
                payload = r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                text = json.loads(text).get("message", text)
            raise ApiError(e.code, f"{method} {path}: {e.code} {text[:400]}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ApiError(
                0,
                f"cluster {self.cluster_name!r} at {self.server} does not answer: {getattr(e, 'reason', e)}",
            ) from None
        if raw:
            return payload.decode(errors="replace")
        return json.loads(payload) if payload else {}

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at PATH, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def apply(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create OBJ in COLLECTION (e.g. ``/apis/apps/v1/namespaces/ns/deployments``), or merge-patch it when it
        exists."""
        name = obj["metadata"]["name"]
        if self.get(f"{collection}/{name}") is None:
            try:
                return self.request("POST", collection, obj)
            except ApiError as e:
                if e.status != 409:
                    raise
        return self.patch(f"{collection}/{name}", obj)

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str) -> bool:
        """Delete the object at PATH (its pods in the background); False when it was already gone."""
        try:
            self.request("DELETE", path, {"propagationPolicy": "Background"})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def list(self, collection: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode(
            {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        )
        return list((self.request("GET", f"{collection}?{q}") or {}).get("items") or [])
