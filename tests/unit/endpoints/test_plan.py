"""CloudEndpoint's pure parts: validation, rollout plans, the router's configuration and route files, gates."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlinfra.endpoints import gates, nginx
from mlinfra.endpoints.plan import (
    EndpointError,
    interpolate,
    plan,
    revision,
    upstream_weights,
    validate_steps,
    validate_traffic,
)
from mlinfra.endpoints.provider import EndpointKeysProvider


def test_traffic_validation_names_the_value_and_the_fix() -> None:
    assert validate_traffic(["blue"], None, None, "E") == ({"blue": 100}, {})
    cases = [
        ((["blue", "green"], None, None), "traffic is not set and there are 2 deployments"),
        ((["blue", "green"], {"blue": 60, "green": 30}, None), "sum to 90, not 100"),
        ((["blue"], {"blue": 100, "red": 0}, None), "names deployment 'red'"),
        ((["blue"], {"blue": 100.5}, None), "whole percentage"),
        ((["blue"], {"blue": True}, None), "whole percentage"),
        ((["blue", "green"], {"blue": 50, "green": 50}, {"green": 10}), "takes 50 % of live traffic"),
        ((["blue", "g", "h"], {"blue": 100}, {"g": 10, "h": 5}), "one deployment at a time"),
        ((["blue"], {"blue": 100}, {"blue": 101}), "mirror['blue'] = 101"),
    ]
    for (deps, traffic, mirror), needle in cases:
        with pytest.raises(EndpointError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            validate_traffic(deps, traffic, mirror, "E")


def test_steps_increase_and_end_at_100() -> None:
    assert validate_steps([10, 50], "E") == [10.0, 50.0, 100.0]
    for bad in ([50, 10], [0], [150], ["x"]):
        with pytest.raises(EndpointError):
            validate_steps(bad, "E")


def test_revision_ignores_replicas_and_float64_round_trips() -> None:
    a = {"image": "r@sha256:1", "cpu": 1, "memory_mb": 512, "env": {}, "replicas": 1}
    b = {"image": "r@sha256:1", "cpu": 1.0, "memory_mb": 512.0, "env": {}, "replicas": 3.0}
    assert revision(a) == revision(b)
    assert revision(a) != revision({**a, "image": "r@sha256:2"})


def test_plan_walks_from_old_to_new_in_steps() -> None:
    old = upstream_weights({"blue": "r1"}, {"blue": 100})
    new = upstream_weights({"blue": "r2"}, {"blue": 100})
    maps = plan(old, new, [10, 50, 100])
    assert maps == [
        {"blue@r1": 90.0, "blue@r2": 10.0},
        {"blue@r1": 50.0, "blue@r2": 50.0},
        {"blue@r2": 100.0},
    ]
    assert plan(old, old, [10, 50, 100]) == [old]  # nothing moves: one map, no bake
    third = interpolate({"a": 100.0}, {"b": 100.0}, 33.333)
    assert round(sum(third.values()), 6) == 100.0


def test_route_files_cover_every_bucket_once_and_move_one_boundary() -> None:
    r1 = nginx.bucket_routes({"u_blue_A": 90.0, "u_blue_B": 10.0}, {"blue": "u_blue_A"})
    buckets = [f.split(".")[0] for f in r1 if not f.startswith("pin-")]
    assert sorted(buckets, key=int) == [str(b) for b in range(nginx.BUCKETS)]
    assert sum(1 for f in r1 if f.endswith("u_blue_B")) == 100
    r2 = nginx.bucket_routes({"u_blue_A": 50.0, "u_blue_B": 50.0}, {"blue": "u_blue_A"})
    assert len(r1 ^ r2) == 2 * 400  # only the 400 buckets that moved change
    with pytest.raises(ValueError):
        nginx.bucket_routes({"u_blue_A": 90.0}, {})


def test_write_routes_adds_before_it_removes(tmp_path: Path) -> None:
    d = tmp_path / "routes"
    nginx.write_routes(d, {"0.u_a", "1.u_a"})
    nginx.write_routes(d, {"0.u_b", "1.u_a"})
    assert sorted(p.name for p in d.iterdir()) == ["0.u_b", "1.u_a"]
    with pytest.raises(ValueError):
        nginx.write_keys(tmp_path / "keys", ["../../etc/passwd-is-not-a-key"])


def test_router_config_has_no_keys_and_pins_by_name() -> None:
    text = nginx.render(
        nginx.RouterConfig(
            listen="127.0.0.1:8000",
            generation="1",
            upstreams={"u_blue_A": ("blue", ["127.0.0.1:1"]), "u_green_A": ("green", ["127.0.0.1:2"])},
            state_dir="/etc/mlinfra",
            mirror={"u_green_A": 25.0},
        )
    )
    assert "Bearer" in text and "keys/k.$mlinfra_bearer" in text
    assert "    blue pin-blue;" in text and "25.00% u_green_A" in text
    assert "reuseport" not in text  # a reload with reuseport drops queued connections
    # Without an internal key the client's Authorization never reaches a replica.
    assert text.count('proxy_set_header Authorization "";') == 2


def test_router_presents_the_internal_key_to_replicas_and_mirrors() -> None:
    import pytest

    cfg = dict(
        listen="127.0.0.1:8000",
        generation="1",
        upstreams={"u_blue_A": ("blue", ["127.0.0.1:1"]), "u_green_A": ("green", ["127.0.0.1:2"])},
        state_dir="/etc/mlinfra",
        mirror={"u_green_A": 25.0},
    )
    text = nginx.render(nginx.RouterConfig(**cfg, upstream_key="k" * 43))
    assert text.count(f'proxy_set_header Authorization "Bearer {"k" * 43}";') == 2  # proxied and mirrored
    assert 'proxy_set_header Authorization "";' not in text
    with pytest.raises(ValueError, match="upstream key"):
        nginx.render(nginx.RouterConfig(**cfg, upstream_key='x"; return 200; #' + "a" * 20))
    text = nginx.render(nginx.RouterConfig(**cfg, upstream_auth_file="/etc/mlinfra/internal/auth.conf"))
    assert text.count("include /etc/mlinfra/internal/auth.conf;") == 2 and "Bearer k" not in text


def test_gates_from_metrics_deltas() -> None:
    def scrape(ok: int, bad: int, fast: int, slow: int) -> gates.Sample:
        return gates.parse(
            f'mlinfra_requests_total{{route="score",model="m",version="1",code="200"}} {ok}\n'
            f'mlinfra_requests_total{{route="score",model="m",version="1",code="500"}} {bad}\n'
            f'mlinfra_requests_total{{route="metrics",model="",version="",code="200"}} 999\n'
            f'mlinfra_request_duration_seconds_bucket{{route="score",model="m",version="1",le="0.01"}} {fast}\n'
            f'mlinfra_request_duration_seconds_bucket{{route="score",model="m",version="1",le="0.5"}} {fast + slow}\n'
            f'mlinfra_request_duration_seconds_bucket{{route="score",model="m",version="1",le="+Inf"}} {fast + slow}\n'
        )

    delta = scrape(190, 10, 150, 50) - scrape(100, 0, 100, 0)
    assert delta.requests == 100 and delta.errors == 10
    results = {g.gate: g for g in gates.evaluate(delta, 0.01, 100, 50)}
    assert not results["max_error_rate"].ok and results["max_error_rate"].measured == pytest.approx(0.1)
    assert not results["max_p99_ms"].ok and results["max_p99_ms"].measured > 100
    assert results["min_requests"].ok
    assert "limit 0.01" in results["max_error_rate"].describe()


def test_key_rotation_regenerates_one_key_per_bump() -> None:
    p = EndpointKeysProvider()
    v1 = p.create({"key_version": 1}).outs
    v2 = p.update("x", v1, {"key_version": 2}).outs
    assert v2["primary_key"] == v1["primary_key"] and v2["secondary_key"] != v1["secondary_key"]
    v3 = p.update("x", v2, {"key_version": 3}).outs
    assert v3["secondary_key"] == v2["secondary_key"] and v3["primary_key"] != v2["primary_key"]
