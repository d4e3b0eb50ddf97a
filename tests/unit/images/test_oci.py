"""The OCI client against a scripted registry on loopback (issue 17): HTTPS by default off loopback, credentials only
after the registry's challenge (Basic, Bearer tokens from its token service), content checked against its digest."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlinfra.errors import OciRegistryError
from mlinfra.images.builder import ImageSpec, _client
from mlinfra.images.oci import RegistryClient, is_loopback, registry_url

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BASIC = "Basic " + base64.b64encode(b"ci:s3cret").decode()


class Registry:
    """Answers /v2/... as SCHEME says: "bearer" (token from /token), "basic", or "open"; TAMPER serves other bytes."""

    def __init__(self, scheme: str, tamper: bool = False, realm: str | None = None) -> None:
        self.scheme, self.tamper, self.seen, self.realm = scheme, tamper, [], realm
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("Authorization")))
                auth = self.headers.get("Authorization")
                if self.path.startswith("/token"):
                    ok = auth == BASIC
                    return self._send(
                        200 if ok else 401, json.dumps({"token": "tok-1"}).encode() if ok else b""
                    )
                if outer.scheme == "bearer" and auth != "Bearer tok-1":
                    realm = outer.realm or f"http://127.0.0.1:{self.server.server_port}/token"
                    return self._send(
                        401,
                        b"",
                        {
                            "WWW-Authenticate": f'Bearer realm="{realm}",service="reg",scope="repository:m:pull"'
                        },
                    )
                if outer.scheme == "basic" and auth != BASIC:
                    return self._send(401, b"", {"WWW-Authenticate": 'Basic realm="reg"'})
                body = MANIFEST + (b" " if outer.tamper else b"")
                self._send(200, body, {"Docker-Content-Digest": DIGEST})

            do_HEAD = do_GET

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def registry(request) -> Iterator[Registry]:
    r = Registry(*request.param)
    yield r
    r.httpd.shutdown()


def test_https_unless_loopback_or_asked() -> None:
    assert registry_url("registry.example.com") == "https://registry.example.com"
    assert registry_url("myregistry.azurecr.io:443") == "https://myregistry.azurecr.io:443"
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("localhost:5000") == "http://localhost:5000" and is_loopback("[::1]:5000")
    assert registry_url("registry.lan:5000", insecure=True) == "http://registry.lan:5000"
    spec = ImageSpec(repository="ghcr.io/acme/churn", models=[], base="b", username="u", password="p")
    assert _client("ghcr.io", spec).url == "https://ghcr.io"
    assert _client("ghcr.io", spec).password == "p" and _client("docker.io").password is None
    assert "p'" not in repr(_client("ghcr.io", spec)), "the password shows in repr"


@pytest.mark.parametrize("registry", [("bearer",)], indirect=True)
def test_bearer_token_only_after_the_challenge(registry: Registry) -> None:
    c = RegistryClient(registry.url, "ci", "s3cret")
    assert c.get_manifest("m", "latest") == (DIGEST, json.loads(MANIFEST))
    assert c.get_manifest("m", DIGEST) is not None
    first, token, retried, reused = registry.seen
    assert first == ("/v2/m/manifests/latest", None), "credentials sent before the registry asked"
    assert token[0].startswith("/token?") and "scope=repository%3Am%3Apull" in token[0] and token[1] == BASIC
    assert retried == ("/v2/m/manifests/latest", "Bearer tok-1")
    assert reused == (f"/v2/m/manifests/{DIGEST}", "Bearer tok-1"), "the token was not reused"


@pytest.mark.parametrize("registry", [("bearer",)], indirect=True)
def test_a_refused_token_names_the_user(registry: Registry) -> None:
    with pytest.raises(OciRegistryError, match="refused user 'ci': HTTP 401"):
        RegistryClient(registry.url, "ci", "wrong").get_manifest("m", "latest")


@pytest.mark.parametrize("registry", [("bearer", False, "http://203.0.113.9/token")], indirect=True)
def test_a_plain_http_token_service_off_loopback_is_refused(registry: Registry) -> None:
    with pytest.raises(OciRegistryError, match="refusing a token service that is not https"):
        RegistryClient(registry.url, "ci", "s3cret").get_manifest("m", "latest")
    assert all(auth is None for _p, auth in registry.seen)


@pytest.mark.parametrize("registry", [("basic",)], indirect=True)
def test_basic_only_after_the_challenge(registry: Registry) -> None:
    c = RegistryClient(registry.url, "ci", "s3cret")
    assert c.manifest_digest("m", "latest") == DIGEST
    assert [a for _p, a in registry.seen] == [None, BASIC]
    with pytest.raises(OciRegistryError, match="authentication failed"):
        RegistryClient(registry.url).get_manifest("m", "latest")


@pytest.mark.parametrize("registry", [("open", True)], indirect=True)
def test_content_that_does_not_match_its_digest_is_refused(registry: Registry) -> None:
    c = RegistryClient(registry.url)
    with pytest.raises(OciRegistryError, match="whose content has digest"):
        c.get_manifest("m", DIGEST)
    with pytest.raises(OciRegistryError, match="whose content has digest"):
        c.get_manifest(
            "m", "latest"
        )  # the registry's own Docker-Content-Digest header disagrees with the bytes
    with pytest.raises(OciRegistryError, match="with other content"):
        c.get_blob("m", DIGEST)


@pytest.mark.parametrize(
    "url", ["http://[::1", "127.0.0.1:5000", "ftp://host", "http://host:port", "http://"]
)
def test_a_registry_url_that_does_not_parse_names_itself_and_the_form(url: str) -> None:
    with pytest.raises(OciRegistryError, match=r"give http\(s\)://host\[:port\]") as e:
        RegistryClient(url)
    assert repr(url)[:40] in str(e.value), e.value
