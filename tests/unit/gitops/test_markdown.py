"""Golden tests of `mlinfra preview`'s markdown, rendered from engine events recorded on the real engine.

The recordings (tests/golden/gitops/*.jsonl) come from tests/integration/test_gitops.py: re-record them with
`MLINFRA_RECORD_GOLDEN=$PWD/tests/golden/gitops pytest tests/integration/test_gitops.py`, then refresh the
markdown with `MLINFRA_UPDATE_GOLDEN=1 pytest tests/unit/test_gitops_markdown.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlinfra.gitops import plan
from mlinfra.gitops.stacks import load_records

GOLDEN = Path(__file__).parents[2] / "golden" / "gitops"
CASES = sorted(p.stem for p in GOLDEN.glob("*.jsonl"))


def render(case: str) -> plan.Summary:
    return plan.summarize(load_records(GOLDEN / f"{case}.jsonl"), case, "mlinfra-platform")


@pytest.mark.parametrize("case", CASES)
def test_markdown_matches_golden(case: str) -> None:
    md = plan.render_markdown(render(case))
    golden = GOLDEN / f"{case}.md"
    if os.environ.get("MLINFRA_UPDATE_GOLDEN"):
        golden.write_text(md)
    assert golden.exists(), f"no golden file {golden.name}: run with MLINFRA_UPDATE_GOLDEN=1 and review it"
    assert md == golden.read_text()


def test_every_kind_of_change_is_recorded() -> None:
    assert set(CASES) >= {
        "create",
        "no-changes",
        "promotion",
        "policy-violation",
        "breaking-traffic-edge",
        "drift",
    }


def test_drift_found_by_a_refreshed_preview() -> None:
    """The recording: staging's scoring replica removed by hand, `mlinfra preview --refresh`. The endpoint's
    refreshed state says 0 of 1 replicas run: reported as drift, exit code 1; nothing else changes."""
    s = render("drift")
    assert [d.resource for d in s.drift] == ["CloudEndpoint churn-local"], s.drift
    assert s.drift[0].found == [
        "deployments.blue: 0 of 1 replicas running (declared: 1 of 1 replicas running)"
    ]
    assert s.exit_code() == 1 and not s.breaking and not s.violations
    assert plan.summarize(load_records(GOLDEN / "no-changes.jsonl"), "x", "p").drift == []


def test_no_changes() -> None:
    s = render("no-changes")
    assert not s.changed and s.exit_code() == 0 and s.counts == {"same": s.counts["same"]}
    assert "**No changes**" in plan.render_markdown(s)


def test_promotion_is_version_digest_and_rollout() -> None:
    s = render("promotion")
    (m,) = s.models
    assert (m.version_before, m.version_after, m.pinned, m.breaking) == (1, 2, True, False)
    (i,) = s.images
    assert i.digest_before != i.digest_after and i.digest_after.startswith("sha256:")
    assert (i.models_before, i.models_after) == (["churn:1"], ["churn:2"])
    (e,) = s.endpoints
    assert e.traffic_before == e.traffic_after == {"blue": 100.0}
    assert e.images_before["blue"] != e.images_after["blue"]
    assert [r.split(":")[0] for r in e.rollout] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "20%" in e.rollout[0]
    assert s.exit_code() == 0


def test_policy_violation_blocks() -> None:
    s = render("policy-violation")
    assert [(v.policy, v.level, v.resource) for v in s.violations] == [
        ("mlinfra-model-metric", "mandatory", "churn")
    ]
    assert s.errors == []  # the engine's "preview failed" is the violation, not a second error
    assert s.exit_code() == 1
    assert "⛔ blocked by policy" in plan.render_markdown(s)


def test_breaking_signature_traffic_and_edge() -> None:
    s = render("breaking-traffic-edge")
    (m,) = s.models
    assert (
        m.breaking and m.signature == ["input `input` FP32[?,64] → FP32[?,32]"] and m.version_after == "new"
    )
    (e,) = s.endpoints
    assert (e.traffic_before, e.traffic_after) == ({"blue": 100.0}, {"blue": 90.0, "green": 10.0})
    (g,) = s.edge
    assert g.condition_before == "tags.ring = 'canary'"
    assert g.condition_after == "tags.team = 'gitops-test' AND tags.ring IN ('canary', 'ga')"
    assert (g.devices_matched, g.devices_known) == (2, 3)  # counted on the live broker at preview
    assert s.exit_code() == 1


def test_signature_changes_are_classified() -> None:
    sig = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    out_added = {**sig, "outputs": [{"name": "p", "datatype": "FP32", "shape": [-1, 2]}]}
    assert plan.signature_changes(sig, sig) == []
    assert plan.signature_changes(sig, out_added) == ["output `p` added (FP32[?,2])"]
    retyped = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4]}], "outputs": []}
    assert plan.signature_changes(sig, retyped) == ["input `x` FP32[?,4] → FP64[?,4]"]
    assert plan.signature_changes(sig, {"inputs": [], "outputs": []}) == ["input `x` removed"]

    def step(before, after):
        return {
            "kind": "step",
            "op": "update",
            "urn": "urn:pulumi:s::p::mlinfra:registry:RegisteredModel::m",
            "type": plan.MODEL,
            "old": {"inputs": {"signature": before, "sha256": "a" * 64}, "outputs": {"version": 1}},
            "new": {"inputs": {"signature": after, "sha256": "b" * 64}, "outputs": {}},
        }

    assert not plan.summarize([step(sig, out_added)], "s", "p").models[0].breaking  # an added output is fine
    assert plan.summarize([step(sig, retyped)], "s", "p").models[0].breaking


def test_markdown_escapes_table_breaking_text() -> None:
    rec = {
        "kind": "policy",
        "urn": "urn:pulumi:s::p::t::r",
        "policy": "x",
        "pack": "mlinfra",
        "level": "advisory",
    }
    s = plan.summarize([{**rec, "message": "the policy's description\nimage a|b by tag"}], "s", "p")
    md = plan.render_markdown(s)
    assert "| x | advisory | r | image a\\|b by tag |" in md, md  # the description is dropped, | escaped
    assert s.exit_code() == 0  # advisory violations do not block


def test_a_big_plan_still_fits_a_pull_request_comment() -> None:
    def model(i: int, breaking: bool) -> dict:
        sig = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
        new = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8 if breaking else 4]}],
            "outputs": [],
        }
        return {
            "kind": "step",
            "op": "update",
            "urn": f"urn:pulumi:s::p::{plan.MODEL}::model-{i:04d}",
            "type": plan.MODEL,
            "old": {"inputs": {"signature": sig, "sha256": f"{i:064x}"}, "outputs": {"version": 1}},
            "new": {"inputs": {"signature": new, "sha256": f"{i + 1:064x}"}, "outputs": {}},
        }

    records = [model(i, breaking=i == 1999) for i in range(2000)]
    s = plan.summarize(records, "s", "p")
    full = plan.render_markdown(s)
    assert len(full) > plan.COMMENT_LIMIT
    md = plan.render_for_comment(s)
    assert len(md) <= plan.COMMENT_LIMIT
    assert "model-1999" in md  # the breaking one is listed first, so a cut never hides it
    assert "more models: see the JSON summary" in md
    assert md.rstrip().endswith("merge deliberately_")


def test_a_program_error_is_shown_short_and_fails_the_check() -> None:
    tb = (
        'Program failed with an unhandled exception:\nTraceback (most recent call last):\n  File "__main__.py", '
        "line 20, in <module>\nmlinfra.registry.registry.ModelError: RegisteredModel churn: pinned churn:9 is not in "
        "the registry file:///r"
    )
    s = plan.summarize([{"kind": "error", "urn": "", "message": tb}], "dev", "p")
    assert s.errors == [tb.splitlines()[-1]]
    assert s.exit_code() == 2
    assert "pinned churn:9 is not in the registry" in plan.render_markdown(s)


def test_a_models_signers_are_shown() -> None:
    """RegisteredModel(signing_key=): the preview names the signing key next to the model."""
    model = {
        "kind": "step",
        "op": "update",
        "urn": "urn:pulumi:s::p::mlinfra:registry:RegisteredModel::m",
        "type": plan.MODEL,
        "old": {"inputs": {"sha256": "a" * 64}, "outputs": {"version": 1}},
        "new": {"inputs": {"sha256": "b" * 64}, "outputs": {}},
    }
    signer = {
        "kind": "step",
        "op": "update",
        "urn": "urn:pulumi:s::p::mlinfra:registry:RegisteredModel$pulumi-python:dynamic:Resource::m-signature",
        "type": "pulumi-python:dynamic:Resource",
        "old": None,
        "new": {"inputs": {"key_id": "c0ffee" * 10 + "abcd"}, "outputs": {}},
    }
    s = plan.summarize([model, signer], "s", "p")
    assert s.models[0].signed_by == ["c0ffee" * 10 + "abcd"]
    assert "signed by `c0ffeec0ffee`" in plan.render_markdown(s)
    assert plan.summarize([model], "s", "p").models[0].signed_by == [], "unsigned: nothing claimed"
