"""A small OCI distribution client: push and inspect images over a registry's HTTP API, no Docker daemon.

Enough of the distribution spec for mlinfra's images: blob existence (HEAD), monolithic blob upload (POST then
PUT ?digest=), manifests by tag or digest. HTTPS unless the registry is on loopback or ``insecure`` is asked for
(:func:`registry_url`). Credentials are sent only when the registry asks (a 401 with ``WWW-Authenticate``): Basic,
or Bearer tokens from the registry's token service (Docker Hub, ACR, GHCR, Harbor), never in plain text off
loopback. Every manifest and blob fetched is hashed: content that does not match its digest is refused.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
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


def is_loopback(host: str) -> bool:
    """Whether HOST (``name[:port]``, ``[v6]:port``) is this machine: 127.0.0.0/8, ::1 or localhost."""
    name = (
        host[1 : host.index("]")]
        if host.startswith("[")
        else host.rsplit(":", 1)[0]
        if host.count(":") == 1
        else host
    )
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_url(host: str, insecure: bool | None = None) -> str:
    """The registry's base URL: HTTPS, or plain HTTP for a loopback registry (or when INSECURE says so)."""
    plain = is_loopback(host) if insecure is None else insecure
    return f"{'http' if plain else 'https'}://{host}"


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}


def _sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class RegistryClient:
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    _auth: str | None = field(default=None, repr=False)
    """The Authorization header the registry's last challenge called for (Basic, or a Bearer token)."""

    def __post_init__(self) -> None:
        try:
            u = urllib.parse.urlsplit(self.url)
            u.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as e:
            raise OciRegistryError(
                f"registry URL {self.url[:200]!r} does not parse ({e}): give http(s)://host[:port]"
            ) from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise OciRegistryError(f"registry URL {self.url[:200]!r}: give http(s)://host[:port]")

    def _conn(self, url: str | None = None) -> http.client.HTTPConnection:
        u = urllib.parse.urlsplit(url or self.url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        return cls(u.hostname or "127.0.0.1", u.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self._auth:
            h["Authorization"] = self._auth
        return h

    def _plain_text(self, url: str) -> bool:
        u = urllib.parse.urlsplit(url)
        return u.scheme != "https" and not is_loopback(u.netloc)

    def _authenticate(self, header: str) -> bool:
        """Answer a 401's challenge: Basic with our credentials, or a Bearer token from the challenge's realm.
        Returns whether a retry can succeed."""
        scheme, params = _challenge(header)
        basic = (
            "Basic " + base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            if self.username is not None
            else None
        )
        if scheme == "basic":
            if basic is None or self._auth == basic:
                return False
            if self._plain_text(self.url):
                raise OciRegistryError(
                    f"registry {self.url} asks for a password over plain HTTP: refusing to send it in clear text "
                    "(use https)"
                )
            self._auth = basic
            return True
        if scheme != "bearer" or not params.get("realm"):
            return False
        realm = params["realm"]
        if urllib.parse.urlsplit(realm).scheme not in ("https", "http") or self._plain_text(realm):
            raise OciRegistryError(
                f"registry {self.url} sends its token service as {realm!r}: refusing a token service that is not "
                "https (or on loopback)"
            )
        query = urllib.parse.urlencode({k: params[k] for k in ("service", "scope") if params.get(k)})
        token_url = f"{realm}{'&' if '?' in realm else '?'}{query}" if query else realm
        u = urllib.parse.urlsplit(token_url)
        conn = self._conn(token_url)
        try:
            conn.request(
                "GET",
                f"{u.path or '/'}{'?' + u.query if u.query else ''}",
                headers={"Authorization": basic} if basic else {},
            )
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            raise OciRegistryError(f"token service {realm} of registry {self.url} is unreachable: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise OciRegistryError(
                f"token service {realm} of registry {self.url} refused "
                f"{'user ' + repr(self.username) if self.username else 'anonymous access'}: HTTP {resp.status}"
            )
        try:
            body = json.loads(data)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise OciRegistryError(f"token service {realm} of registry {self.url} answered without a token")
        if self._auth == f"Bearer {token}":
            return False
        self._auth = f"Bearer {token}"
        return True

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        for _attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=self._headers(headers))
                resp = conn.getresponse()
                data = resp.read()
                got = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except OSError as e:
                raise OciRegistryError(f"registry {self.url} is unreachable: {e}") from e
            finally:
                conn.close()
            challenge = got[1].get("www-authenticate")
            if got[0] != 401 or not challenge or not self._authenticate(challenge):
                return got
        return got

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
        if digest.startswith("sha256:") and _sha256_digest(data) != digest:
            raise OciRegistryError(
                f"registry {self.url} sent blob {repo}@{digest[:19]}… with other content (sha256 "
                f"{_sha256_digest(data)[7:19]}…): refused"
            )
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
        digest = _sha256_digest(data)  # what the bytes are, whatever the headers say
        claimed = reference if reference.startswith("sha256:") else headers.get("docker-content-digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise OciRegistryError(
                f"registry {self.url} sent manifest {repo}:{reference[:26]} whose content has digest "
                f"{digest[:19]}…, not {claimed[:19]}…: refused (a tampered or broken registry)"
            )
        try:
            return digest, json.loads(data)
        except ValueError:
            raise OciRegistryError(
                f"registry {self.url} sent manifest {repo}:{reference[:26]} that is not JSON"
            ) from None

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
    digest = put_oci_manifest(client, repo, None, config, descriptors)
    if tag:
        put_oci_manifest(client, repo, tag, config, descriptors)
    return digest


def put_oci_manifest(
    client: RegistryClient, repo: str, reference: str | None, config: bytes, layers: list[dict]
) -> str:
    """Push CONFIG and an OCI image manifest of LAYERS (descriptors of blobs already pushed) under REFERENCE (a tag;
    None: its digest). Returns the manifest's digest."""
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.push_blob(repo, config_digest, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "digest": config_digest, "size": len(config)},
            "layers": layers,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    client.put_manifest(repo, reference or digest, manifest)
    return digest
