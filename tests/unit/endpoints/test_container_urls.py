"""Loopback addresses as a container or pod reaches them: the bridge gateway or the node, port and path kept."""

from __future__ import annotations

import urllib.parse

from mlinfra.endpoints.local import container_sink, container_url


def test_loopback_urls_get_the_gateway_and_others_stay() -> None:
    assert container_url("http://127.0.0.1:4318", "172.17.0.1") == "http://172.17.0.1:4318"
    assert container_url("http://localhost:4318/otlp", "172.17.0.1") == "http://172.17.0.1:4318/otlp"
    assert container_url("https://127.0.0.2", "10.0.0.5") == "https://10.0.0.5"
    assert container_url("https://otel.example.com:4318", "172.17.0.1") == "https://otel.example.com:4318"
    assert container_url("http://127.0.0.1:4318", "$(MLINFRA_NODE_IP)") == "http://$(MLINFRA_NODE_IP):4318"


def test_a_blob_sink_on_loopback_gets_the_gateway_in_its_endpoint() -> None:
    sink = "azblob://devstoreaccount1/c?endpoint=http://127.0.0.1:10000/devstoreaccount1&x=1"
    out = urllib.parse.urlsplit(container_sink(sink, "$(MLINFRA_NODE_IP)"))
    q = dict(urllib.parse.parse_qsl(out.query))
    assert q == {"endpoint": "http://$(MLINFRA_NODE_IP):10000/devstoreaccount1", "x": "1"}
    assert "$(MLINFRA_NODE_IP)" in out.query  # Kubernetes expands it: kept unescaped
    assert container_sink("file:///data/c", "10.0.0.5") == "file:///data/c"


def test_a_pods_env_addresses_loopback_services_at_its_node() -> None:
    import json

    from mlinfra.endpoints.kubernetes import NODE_IP_VAR, _pod_env
    from tests.unit.mocks import install, resolve

    install()
    sink = "azblob://devstoreaccount1/c?endpoint=http://127.0.0.1:10000/devstoreaccount1"
    env = {
        "MLINFRA_SERVE_COLLECT": json.dumps({"sink": sink}),
        "MLINFRA_SERVE_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTHER": "http://127.0.0.1:1",
    }
    got = resolve(lambda: {e["name"]: e.get("value", e.get("valueFrom")) for e in _pod_env(env)})
    assert got[NODE_IP_VAR] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert got["MLINFRA_SERVE_OTLP_ENDPOINT"] == f"http://$({NODE_IP_VAR}):4318"
    assert f"$({NODE_IP_VAR}):10000" in json.loads(got["MLINFRA_SERVE_COLLECT"])["sink"]
    assert got["OTHER"] == "http://127.0.0.1:1"  # only the services mlinfra forwards are rewritten
    # Declared before the values that use it (Kubernetes expands in order).
    assert next(iter(got)) == NODE_IP_VAR
