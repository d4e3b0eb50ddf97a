"""The router's gRPC listener as rendered (the real router runs it: tests/integration/test_cloud_endpoint.py and
test_kubernetes.py): the REST rules — keys, route files, pins, mirror, the replicas' own credential — for gRPC."""

from __future__ import annotations

from mlinfra.endpoints import nginx


def config(**extra) -> nginx.RouterConfig:
    args = {
        "listen": "127.0.0.1:8000",
        "generation": "1",
        "upstreams": {"u_blue_A": ("blue", ["127.0.0.1:9001"]), "u_green_A": ("green", ["127.0.0.1:9002"])},
        "state_dir": "/etc/mlinfra",
        "mirror": {"u_green_A": 50.0},
        "upstream_key": "k" * 32,
        "grpc_listen": "127.0.0.1:8001",
        "grpc_upstreams": {"u_blue_A": ["127.0.0.1:9101"], "u_green_A": ["127.0.0.1:9102 backup"]},
    }
    return nginx.RouterConfig(**{**args, **extra})


def grpc_block(text: str) -> str:
    return text[text.index("listen 127.0.0.1:8001") :]


def test_grpc_calls_follow_the_rest_rules() -> None:
    text = nginx.render(config())
    assert "upstream u_blue_A_grpc {\n    server 127.0.0.1:9101 max_fails=0;" in text
    assert "server 127.0.0.1:9102 backup max_fails=0;" in text
    assert "    u_green_A_grpc green;" in text  # the answering deployment is named for gRPC too
    block = grpc_block(text)
    assert block.startswith("listen 127.0.0.1:8001 http2;")
    assert "if (!-f /etc/mlinfra/keys/k.$mlinfra_bearer)" in block and "return 401;" in block
    # the same route files (and so the same split and pins) choose among the gRPC upstreams
    assert (
        "if (-f /etc/mlinfra/routes/$mlinfra_bucket.u_blue_A) { set $mlinfra_target u_blue_A_grpc; }" in block
    )
    assert "grpc_pass grpc://$mlinfra_target;" in block
    # the client's key never reaches a replica: the router presents its own
    assert f'grpc_set_header authorization "Bearer {"k" * 32}";' in block
    assert "mirror /_mlinfra_mirror_grpc;" in block and "grpc_pass grpc://${mlinfra_mirror}_grpc;" in block
    assert "rewrite ^ $request_uri break;" in block


def test_tls_and_kubernetes_variants() -> None:
    text = nginx.render(
        config(
            tls_cert="/c.pem",
            tls_key="/k.pem",
            tls_client_ca="/ca.pem",
            upstream_auth_file="/etc/mlinfra/internal/auth.conf",
            upstream_grpc_auth_file="/etc/mlinfra/internal/grpc-auth.conf",
        )
    )
    block = grpc_block(text)
    assert block.startswith("listen 127.0.0.1:8001 ssl http2;") and "ssl_client_certificate /ca.pem;" in block
    assert "return 403;" in block
    assert "include /etc/mlinfra/internal/grpc-auth.conf;" in block and "Bearer kkk" not in block
    assert "listen 127.0.0.1:8001" not in nginx.render(config(grpc_listen=None))
