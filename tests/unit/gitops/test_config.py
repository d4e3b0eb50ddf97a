"""The platform project's typed config, the policy rules and promotion's YAML edit — no engine needed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from mlinfra.gitops.config import (
    KubernetesConfig,
    StackConfigError,
    kubeconfig_path,
    load,
    policy_pack_config,
)

STACKS = Path(__file__).parents[3] / "stacks"
sys.path.insert(0, str(Path(__file__).parents[3] / "mlinfra" / "policy"))
import rules  # noqa: E402  (the pack's rules: stdlib only, as in the pack's own virtualenv)


def raw(env: str) -> dict:
    return yaml.safe_load((STACKS / f"Pulumi.{env}.yaml").read_text())["config"]["mlinfra-platform:platform"]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_every_environment_is_valid(env: str) -> None:
    cfg = load(raw(env))
    assert cfg.models and cfg.endpoints and cfg.edge


def test_environments_differ_only_in_config() -> None:
    program = (STACKS / "__main__.py").read_text()
    for env in ("dev", "staging", "prod"):
        assert f'"{env}"' not in program and f"'{env}'" not in program


def test_misspelt_keys_name_the_nearest_valid_one() -> None:
    with pytest.raises(
        StackConfigError, match=r"platform\.models\.0\.tgas: unknown key; did you mean 'tags'\?"
    ):
        load({"models": [{"name": "m", "path": "m.onnx", "tgas": {}}]})
    with pytest.raises(StackConfigError, match=r"platform\.registy: unknown key; did you mean 'registry'\?"):
        load({"registy": "file:///x", "models": []})
    bad = raw("prod")
    bad["endpoints"][0]["rollout"]["bake"] = 3
    bad["endpoints"][0]["deployments"]["blue"]["replica"] = 3
    bad["policy"]["max_canary_pct"] = 5
    with pytest.raises(StackConfigError) as e:
        load(bad)
    msg = str(e.value)
    assert "platform.endpoints.0.rollout.bake: unknown key; did you mean 'bake_s'?" in msg
    assert "platform.endpoints.0.deployments.blue.replica: unknown key; did you mean 'replicas'?" in msg
    assert "platform.policy.max_canary_pct: unknown key; did you mean 'max_canary_percent'?" in msg
    with pytest.raises(StackConfigError, match=r"platform\.models: Field required"):
        load({})
    with pytest.raises(StackConfigError, match=r"uses model 'ghost', which is not in platform\.models"):
        load({"models": [{"name": "m", "path": "m.onnx"}], "images": [{"name": "i", "models": ["ghost"]}]})
    ep = raw("dev")
    ep["endpoints"][0]["deployments"]["blue"]["image"] = "churn-scorr"
    with pytest.raises(
        StackConfigError, match=r"'churn-scorr' is neither an image.*did you mean 'churn-scorer'\?"
    ):
        load(ep)


def test_targets_are_typed() -> None:
    """dev runs on Local Docker, staging and prod on Kubernetes; a wrong target names the key and the fix."""
    assert load(raw("dev")).endpoints[0].target.kind == "local-docker"
    for env in ("staging", "prod"):
        t = load(raw(env)).endpoints[0].target
        assert isinstance(t, KubernetesConfig) and t.kubeconfig == "local"
        assert kubeconfig_path(t, STACKS, Path("/lab/kubeconfig.yaml")) == "/lab/kubeconfig.yaml"
    t = KubernetesConfig(kind="kubernetes", kubeconfig="clusters/prod.yaml")
    assert kubeconfig_path(t, Path("/proj"), Path("/lab")) == "/proj/clusters/prod.yaml"
    assert kubeconfig_path(KubernetesConfig(kind="kubernetes"), Path("/proj"), Path("/lab")) is None

    def with_target(target: dict, **more: object) -> str:
        cfg = raw("staging")
        cfg["endpoints"][0].update(target=target, **more)
        with pytest.raises(StackConfigError) as e:
            load(cfg)
        return str(e.value)

    assert "platform.endpoints.0.target: kind 'k8s' is not a target kind; use kind: local-docker or kind: " \
        "kubernetes" in with_target({"kind": "k8s"})  # fmt: skip
    assert "platform.endpoints.0.target: the target needs a kind" in with_target({"kubeconfig": "local"})
    assert "platform.endpoints.0.target.namspace: unknown key; did you mean 'namespace'?" in with_target(
        {"kind": "kubernetes", "namspace": "x"}
    )
    assert "platform.endpoints.0.target.prot: unknown key; did you mean 'port'?" in with_target(
        {"kind": "local-docker", "prot": 80}
    )
    assert "namespace 'Churn_Staging' is not a DNS label" in with_target(
        {"kind": "kubernetes", "namespace": "Churn_Staging"}
    )
    assert "port is for a local-docker target" in with_target({"kind": "kubernetes"}, port=8080)
    # The old top-level port still works, as the local-docker target's port.
    cfg = raw("dev")
    cfg["endpoints"][0]["port"] = 8123
    assert load(cfg).endpoints[0].target.port == 8123


def test_a_missing_policy_threshold_names_the_key() -> None:
    cfg = raw("prod")
    del cfg["policy"]["model_metric"]["threshold"]
    with pytest.raises(StackConfigError, match=r"platform\.policy\.model_metric\.threshold: Field required"):
        load(cfg)


def test_pins_are_whole() -> None:
    with pytest.raises(StackConfigError, match=r"either path .* or version and sha256"):
        load({"models": [{"name": "m", "path": "m.onnx", "version": 2}]})
    with pytest.raises(StackConfigError, match="a pin needs both version and sha256"):
        load({"models": [{"name": "m", "version": 2}]})
    with pytest.raises(StackConfigError, match="keeps the tags and properties"):
        load({"models": [{"name": "m", "version": 2, "sha256": "a" * 64, "properties": {"accuracy": "1"}}]})


def test_policy_pack_config_follows_the_stack() -> None:
    prod = policy_pack_config(load(raw("prod")).policy)
    assert prod["mlinfra-model-metric"] == {
        "enforcementLevel": "mandatory",
        "metric": "accuracy",
        "threshold": 0.9,
    }
    assert prod["mlinfra-canary-step"]["maxPercent"] == 10 and prod["mlinfra-endpoint-auth"] == "mandatory"
    staging = policy_pack_config(load(raw("staging")).policy)
    assert (
        staging["mlinfra-model-metric"] == "disabled"
        and staging["mlinfra-endpoint-data-collection"] == "disabled"
    )


def test_policy_rules() -> None:
    ep = {"auth": "none", "data_collection": None, "rollout": {"steps": [50, 100]},
          "deployments": {"blue": {"image": "127.0.0.1:5000/x:latest"}, "green": {"image": None}}}  # fmt: skip
    assert "auth 'none'" in rules.endpoint_auth(rules.ENDPOINT, "e", ep, {})[0]
    assert "no data collection" in rules.endpoint_data_collection(rules.ENDPOINT, "e", ep, {})[0]
    assert (
        "50 % of traffic in its first rollout step (limit 10 %)"
        in rules.canary_step(rules.ENDPOINT, "e", ep, {"maxPercent": 10})[0]
    )
    assert rules.canary_step(rules.ENDPOINT, "e", ep, {"maxPercent": 50}) == []
    (tag,) = rules.image_digest(rules.ENDPOINT, "e", ep, {})  # green's image is unknown at preview: skipped
    assert "blue runs image '127.0.0.1:5000/x:latest' by tag" in tag
    ok = {**ep, "auth": "key", "data_collection": {"sample_rate": 1.0}}
    assert rules.endpoint_auth(rules.ENDPOINT, "e", ok, {}) == []
    assert rules.endpoint_data_collection(rules.ENDPOINT, "e", ok, {}) == []
    metric = {"metric": "accuracy", "threshold": 0.9}
    model = {"model_name": "churn", "version": 2.0, "properties": {}}
    assert "churn:2 has no property 'accuracy'" in rules.model_metric(rules.MODEL, "churn", model, metric)[0]
    low = {**model, "properties": {"accuracy": "0.85"}}
    assert (
        "accuracy = 0.85, below the threshold 0.9" in rules.model_metric(rules.MODEL, "churn", low, metric)[0]
    )
    nan = {**model, "properties": {"accuracy": "high"}}
    assert "is not a number" in rules.model_metric(rules.MODEL, "churn", nan, metric)[0]
    assert rules.model_metric(rules.MODEL, "c", {**model, "properties": {"accuracy": "0.95"}}, metric) == []
    assert "needs config 'metric'" in rules.model_metric(rules.MODEL, "c", model, {})[0]
    assert "no failure gate" in rules.edge_gate(rules.EDGE, "d", {"gate": {"min_success_fraction": 0}}, {})[0]
    assert rules.edge_gate(rules.EDGE, "d", {"gate": {"min_success_fraction": 0.9}}, {}) == []
    assert rules.endpoint_auth(rules.MODEL, "m", ep, {}) == []  # rules look at their own types only


def test_the_ci_example_previews_pull_requests_and_applies_on_merge() -> None:
    wf = yaml.safe_load(
        (Path(__file__).parents[3] / "examples" / "gitops" / "github-actions.yml").read_text()
    )
    jobs = wf["jobs"]
    preview = " ".join(str(step.get("run", "")) for step in jobs["preview"]["steps"])
    apply = " ".join(str(step.get("run", "")) for step in jobs["apply"]["steps"])
    assert (
        '"$MLINFRA" preview --dir "$MLINFRA_PROJECT" --stack ${{ matrix.stack }} --markdown preview.md'
        in preview
    )
    assert wf["env"]["MLINFRA_PROJECT"] == "stacks"  # as written: the platform project
    assert jobs["preview"]["strategy"]["matrix"]["stack"] == ["dev", "staging", "prod"]
    # untrusted pull-request code never meets deployment secrets or a write token
    triggers = wf[True]
    assert "pull_request_target" not in triggers and "pull_request" in triggers
    assert "github.event.pull_request.head.repo.full_name == github.repository" in jobs["preview"]["if"]
    assert wf["permissions"] == {"contents": "read"}
    assert not any("secrets." in str(v) for v in wf.get("env", {}).values()), "secrets at the workflow level"
    assert jobs["preview"]["environment"] != jobs["apply"]["environment"] == "production"
    for job in jobs.values():
        checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout"))
        assert checkout.get("with", {}).get("persist-credentials") is False
    assert any("comment" in str(step.get("uses", "")) for step in jobs["preview"]["steps"])
    assert (
        '"$MLINFRA" up --dir "$MLINFRA_PROJECT" --stack' in apply
        and jobs["apply"]["if"] == "github.event_name == 'push'"
    )
    # the scheduled drift alarm: a refreshed preview per stack, failing the run when drift is found
    drift = " ".join(str(step.get("run", "")) for step in jobs["drift"]["steps"])
    assert wf[True]["schedule"] and jobs["drift"]["if"] == "github.event_name == 'schedule'"
    assert "--refresh" in drift and "exit ${{ steps.drift.outputs.code }}" in drift


def test_the_signed_model_rule() -> None:
    """platform.policy.trusted_signers → mlinfra-model-signed: unsigned and untrusted versions are named."""
    a, b = "a" * 64, "b" * 64
    cfg = {"trustedKeyIds": [a]}
    model = {"model_name": "churn", "version": 3.0}
    assert "churn:3 is not signed" in rules.model_signed(rules.MODEL, "churn", model, cfg)[0]
    (untrusted,) = rules.model_signed(rules.MODEL, "churn", {**model, "signers": [b]}, cfg)
    assert "signed by bbbbbbbbbbbbbbbb…, none of the stack's trusted keys (aaaaaaaaaaaaaaaa…)" in untrusted
    assert rules.model_signed(rules.MODEL, "churn", {**model, "signers": [b, a]}, cfg) == []
    assert "needs config 'trustedKeyIds'" in rules.model_signed(rules.MODEL, "churn", model, {})[0]
    policy = load({"models": [{"name": "m", "path": "m.onnx"}], "policy": {"trusted_signers": [a]}}).policy
    assert policy_pack_config(policy)["mlinfra-model-signed"] == {
        "enforcementLevel": "mandatory",
        "trustedKeyIds": [a],
    }
    with pytest.raises(StackConfigError, match="trusted_signers"):
        load({"models": [{"name": "m", "path": "m.onnx"}], "policy": {"trusted_signers": ["not-a-key-id"]}})


def test_the_signed_model_rule_wants_images_attested_by_a_trusted_key() -> None:
    a, b = "a" * 64, "b" * 64
    cfg = {"trustedKeyIds": [a]}
    image = {"repository": "127.0.0.1:5000/churn"}
    (missing,) = rules.model_signed(rules.IMAGE, "scorer", image, cfg)
    assert "image scorer has no signed provenance attestation" in missing
    (untrusted,) = rules.model_signed(rules.IMAGE, "scorer", {**image, "attested_by": b}, cfg)
    assert "provenance is signed by bbbbbbbbbbbbbbbb…, none of the stack's trusted keys" in untrusted
    assert rules.model_signed(rules.IMAGE, "scorer", {**image, "attested_by": a}, cfg) == []
    pinned = {**image, "pinned": "127.0.0.1:5000/churn@sha256:" + "c" * 64}
    assert rules.model_signed(rules.IMAGE, "scorer", pinned, cfg) == [], (
        "a promoted image was attested upstream"
    )
