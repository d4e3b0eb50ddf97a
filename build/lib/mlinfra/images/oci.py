"""A small OCI distribution client: push and inspect images over a registry's HTTP API, no Docker daemon.

Enough of the distribution spec for mlinfra's images: blob existence (HEAD), monolithic blob upload (POST then
PUT ?digest=), manifests by tag or digest. Basic auth is supported; bearer-token auth is not needed by the local
registry and is left for later.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlinfra.errors import OciRegistryError
from mlinfra.files import sha256_file

MANIFEST_V2 = "application/vnd.oci.image.manifest.v1+json"
CONFIG_V1 = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ",".join(
    [
        MANIFEST_V2,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@dataclass
class RegistryClient:
    url: str
    username: str | None = None
    password: str | None = None
    timeout: float = 60.0

    def _conn(self) -> http.client.HTTPConnection:
        u = urllib.parse.urlsplit(self.url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        return cls(u.hostname or "127.0.0.1", u.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            h["Authorization"] = f"Basic {token}"
        return h

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers=self._headers(headers))
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except OSError as e:
            raise OciRegistryError(f"registry {self.url} is unreachable: {e}") from e
        finally:
            conn.close()

    def _check(self, status: int, data: bytes, what: str, ok: Iterable[int]) -> None:
        if status in (401, 403):
            raise OciRegistryError(
                f"registry {self.url} refused {what}: authentication failed (HTTP {status})"
            )
        if status not in ok:
            raise OciRegistryError(f"registry {self.url} refused {what}: HTTP {status} {data[:300]!r}")

    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, data = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 404:
            return False
        self._check(status, data, f"HEAD blob {digest}", [200])
        return True

    def push_blob(self, repo: str, digest: str, source: Path | bytes) -> bool:
        """Upload a blob unless the registry has it; returns True when bytes were sent."""
        if self.blob_exists(repo, digest):
            return False
        status, headers, data = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        self._check(status, data, f"starting an upload to {repo}", [202])
        location = headers.get("location", "")
        u = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(u.query)
        query.append(("digest", digest))
        path = f"{u.path}?{urllib.parse.urlencode(query)}"
        conn = self._conn()
        try:
            if isinstance(source, bytes):
                conn.request(
                    "PUT",
                    path,
                    body=source,
                    headers=self._headers({"Content-Type": "application/octet-stream"}),
                )
            else:
                size = os.path.getsize(source)
                conn.putrequest("PUT", path)
                for k, v in self._headers(
                    {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
                ).items():
                    conn.putheader(k, v)
                conn.endheaders()
                with open(source, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        conn.send(chunk)
            resp = conn.getresponse()
            body = resp.read()
            self._check(resp.status, body, f"blob {digest} in {repo}", [201])
        except OSError as e:
            raise OciRegistryError(f"registry {self.url} is unreachable: {e}") from e
        finally:
            conn.close()
        return True

    def get_blob(self, repo: str, digest: str) -> bytes:
        status, _, data = self.request("GET", f"/v2/{repo}/blobs/{digest}")
        self._check(status, data, f"GET blob {digest}", [200])
        return data

    def put_manifest(self, repo: str, reference: str, manifest: bytes, media_type: str = MANIFEST_V2) -> str:
        status, headers, data = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body=manifest, headers={"Content-Type": media_type}
        )
        self._check(status, data, f"manifest {repo}:{reference}", [201])
        return headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(manifest).hexdigest()

    def get_manifest(self, repo: str, reference: str) -> tuple[str, dict] | None:
        status, headers, data = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}
        )
        if status == 404:
            return None
        self._check(status, data, f"manifest {repo}:{reference}", [200])
        digest = headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(data).hexdigest()
        return digest, json.loads(data)

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        status, headers, data = self.request(
            "HEAD", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}
        )
        if status == 404:
            return None
        self._check(status, data, f"manifest {repo}:{reference}", [200])
        return headers.get("docker-content-digest")


def image_config(
    diff_ids: list[str],
    env: list[str] | None = None,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    labels: dict[str, str] | None = None,
    exposed_ports: list[int] | None = None,
    healthcheck: list[str] | None = None,
) -> bytes:
    """A reproducible OCI image config: no timestamps, keys sorted."""
    cfg: dict = {"Env": env or []}
    if cmd:
        cfg["Cmd"] = cmd
    if entrypoint:
        cfg["Entrypoint"] = entrypoint
    if user:
        cfg["User"] = user
    if workdir:
        cfg["WorkingDir"] = workdir
    if labels:
        cfg["Labels"] = dict(sorted(labels.items()))
    if exposed_ports:
        cfg["ExposedPorts"] = {f"{p}/tcp": {} for p in exposed_ports}
    if healthcheck:
        cfg["Healthcheck"] = {
            "Test": healthcheck,
            "Interval": 10_000_000_000,
            "Timeout": 3_000_000_000,
            "Retries": 3,
        }
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def push_image(client: RegistryClient, repo: str, tag: str | None, layers: list[Path], config: bytes) -> str:
    """Push layers (gzip tars), the config and an OCI manifest; returns the manifest digest."""
    descriptors = []
    for layer in layers:
        digest = "sha256:" + sha256_file(layer)
        client.push_blob(repo, digest, layer)
        descriptors.append({"mediaType": LAYER_GZIP, "digest": digest, "size": os.path.getsize(layer)})
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.push_blob(repo, config_digest, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    client.put_manifest(repo, digest, manifest)
    if tag:
        client.put_manifest(repo, tag, manifest)
    return digest
