"""GitOps on the real engine: the platform project (stacks/) with dev, staging and prod on one local backend; dev
runs on Local Docker, staging and prod on the local Kubernetes cluster (real pods).

dev deploys model v2 → staging's preview has nothing to do → `mlinfra promote --from dev --to staging --copy` pins
v2 and its image digest (copied into staging's registries) → staging's preview markdown shows the version, digest
and traffic change → `up` rolls it out on Kubernetes (pods run the promoted digest, the router scores with the key)
and the next preview is empty → a slot Deployment deleted by hand is drift a refreshed preview names and `up
--refresh` repairs → prod's policy pack blocks the promoted model, which has no evaluation metric, and the markdown
says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pulumi import automation as auto

from mlinfra.edge.fleet import Broker, publish
from mlinfra.endpoints.local import find_containers
from mlinfra.engine import REPO_ROOT, engine_bin_dir
from mlinfra.gitops.stacks import POLICY_PACK, Project
from mlinfra.lab import node, services
from mlinfra.lab.samples import write_mlp
from mlinfra_edge.manifest import twin_topic
from tests.endpoint_helpers import score
from tests.waiting import until

MLINFRA = str(Path(sys.executable).parent / "mlinfra")


@pytest.fixture
def platform(tmp_path: Path, backend: Path, local_services, monkeypatch) -> Iterator[Project]:
    local_services("docker", "registry", "mosquitto", "python-base", "router-base", "azurite", "kubernetes")
    work = tmp_path / "stacks"
    shutil.copytree(REPO_ROOT / "stacks", work, ignore=shutil.ignore_patterns(".mlinfra", "__pycache__"))
    meta = work / "Pulumi.yaml"
    meta.write_text(meta.read_text().replace("../.venv", str(REPO_ROOT / ".venv")))
    # Each run its own image repositories, so digests already in the registry from other runs cannot help.
    for env in ("dev", "staging", "prod"):
        f = work / f"Pulumi.{env}.yaml"
        f.write_text(
            f.read_text().replace("image_prefix: platform/", f"image_prefix: t{tmp_path.name[-8:]}/")
        )
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
    project = Project(work)
    # staging and prod run on Kubernetes: their pods record into blob storage (Azurite), not a local folder.
    container = "gitops-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    storage = f"azblob://{services.AZURITE_ACCOUNT}/{container}?endpoint={services.azurite_blob_url()}"
    for env in ("staging", "prod"):
        st = project.stack(env)
        st.set_config("mlinfra:collectionStorage", auto.ConfigValue(storage))
        st.set_config("mlinfra:collectionCredential", auto.ConfigValue(services.AZURITE_KEY, secret=True))
    yield project
    # Every test cleans up what it started, even when it failed: the stacks' endpoints, images' users, edge
    # deployments (they used to stay up after `make test`).
    problems = []
    for env in ("dev", "staging", "prod"):
        try:
            st = project.stack(env)
            if st.export_stack().deployment.get("resources"):
                st.destroy(on_output=lambda _l: None)
        except Exception as e:
            problems.append(f"{env}: {str(e)[-300:]}")
    left = [c["name"] for env in ("dev", "staging", "prod") for c in find_containers(f"churn-{env}")]
    left += kube_objects("churn-staging")
    assert not problems and not left, f"cleanup failed: {problems}; left: {left}"


def kube_objects(namespace: str, *what: str) -> list[str]:
    """Names of the namespace's objects (default: Deployments, Services, ConfigMaps; none when it is gone)."""
    r = node.local_cluster().kubectl(
        "get", ",".join(what or ("deploy", "svc", "cm")), "-n", namespace, "-o", "name", "--ignore-not-found",
        check=False,
    )  # fmt: skip
    return [n for n in r.stdout.split() if not n.endswith("/kube-root-ca.crt")]


def staging_router(project: Project) -> tuple[str, str]:
    """staging's scoring URI as this machine reaches it (the router Service's ClusterIP) and its key."""
    ip = (
        node.local_cluster()
        .kubectl("get", "svc", "churn-staging", "-n", "churn-staging", "-o", "jsonpath={.spec.clusterIP}")
        .stdout.strip()
    )
    return f"http://{ip}:80/score", project.stack("staging").outputs()["endpoint:churn:key"].value


GOLDEN = os.environ.get("MLINFRA_RECORD_GOLDEN")  # a folder: save each preview's events there (tests/golden)


def cli(project: Project, *args: str, record: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--events", str(Path(GOLDEN) / f"{record}.jsonl")] if GOLDEN and record else []
    return subprocess.run(
        [MLINFRA, *args, *extra, "--dir", str(project.dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLINFRA_PIP_OFFLINE": "1"},
    )


def edit(project: Project, stack: str, change) -> None:
    path = project.dir / f"Pulumi.{stack}.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["config"]["mlinfra-platform:platform"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def up(project: Project, stack: str) -> dict:
    res = project.stack(stack).up(on_output=lambda _l: None)
    assert res.summary.result == "succeeded"
    return res.outputs["mlinfra"].value


def test_dev_to_staging_to_prod(platform: Project, tmp_path: Path) -> None:
    p = platform
    r = cli(p, "preview", "--stack", "dev", record="create")
    assert r.returncode == 0 and "| churn | — → **_next (assigned at up)_** |" in r.stdout, r.stdout
    dev1 = up(p, "dev")
    assert dev1["models"]["churn"]["version"] == 1
    # The first promotion pins staging to dev's v1 (until then staging registers from the file, like dev).
    r = cli(p, "promote", "--from", "dev", "--to", "staging", "--copy")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\+    churn: \{version: 1, sha256: [0-9a-f]{64}\}$", r.stdout, re.M), r.stdout
    staging1 = up(p, "staging")
    assert staging1["models"]["churn"]["version"] == 1

    # dev gets model v2 (new weights, no evaluation recorded yet).
    write_mlp(p.dir / "models" / "churn.onnx", seed=7)
    edit(p, "dev", lambda c: c["models"][0].pop("properties"))
    dev2 = up(p, "dev")
    assert dev2["models"]["churn"]["version"] == 2
    v2_sha, v2_image = dev2["models"]["churn"]["sha256"], dev2["images"]["churn-scorer"]["image_ref"]
    assert v2_image != dev1["images"]["churn-scorer"]["image_ref"]

    # staging: nothing to do.
    r = cli(p, "preview", "--stack", "staging", "--json", str(tmp_path / "same.json"), record="no-changes")
    assert r.returncode == 0, r.stdout + r.stderr
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["changed"] is False and "**No changes**" in r.stdout

    # promote pins v2 and its digest, copying both into staging's registries (the diff is shown first).
    r = cli(p, "promote", "--from", "dev", "--to", "staging")
    assert r.returncode == 2 and "re-run with --copy" in r.stderr, r.stderr
    r = cli(p, "promote", "--from", "dev", "--to", "staging", "--copy")
    assert r.returncode == 0, r.stderr
    # Only staging's mlinfra:pins change (the mechanism any program's stacks use); the platform object stays.
    assert re.search(rf"^\+    churn: {{version: 2, sha256: {v2_sha}}}$", r.stdout, re.M), r.stdout
    assert re.search(r"^-    churn: \{version: 1, ", r.stdout, re.M), r.stdout
    assert not re.search(r"^[-+] .*(path|platform):", r.stdout, re.M), r.stdout
    pins = yaml.safe_load((p.dir / "Pulumi.staging.yaml").read_text())["config"]["mlinfra:pins"]
    assert pins["churn"] == {"version": 2, "sha256": v2_sha}
    digest = v2_image.split("@", 1)[1]
    assert pins["churn-scorer"]["image"].endswith("@" + digest)
    assert "/staging/" in pins["churn-scorer"]["image"]  # copied into staging's own repository, same digest
    r = cli(p, "promote", "--from", "dev", "--to", "staging", "--copy")
    assert r.returncode == 0 and "nothing to change" in r.stdout

    # staging's preview, in model terms.
    md_file = tmp_path / "staging.md"
    r = cli(p, "preview", "--stack", "staging", "--markdown", str(md_file), record="promotion")
    assert r.returncode == 0, r.stdout + r.stderr
    md = md_file.read_text()
    assert "| churn (pinned) | v1 → **v2** |" in md, md
    assert f"`{v2_sha[:12]}`" in md
    assert f"`{digest[:19]}…`" in md  # image digest after
    assert "Rollout planned:" in md and "step 1/3" in md and "20%" in md, (
        md
    )  # traffic shift of the new revision

    r = cli(p, "up", "--stack", "staging")  # preview + policy pack, then the engine's up
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    staging2 = p.stack("staging").outputs()["mlinfra"].value
    assert staging2["models"]["churn"] == {**dev2["models"]["churn"]}
    assert staging2["images"]["churn-scorer"]["digest"] == digest
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 0 and "**No changes**" in r.stdout, r.stdout

    # staging runs on Kubernetes: its pods run the promoted digest, and the router scores with the key (401 without).
    pods = json.loads(
        node.local_cluster().kubectl(
            "get", "pods", "-n", "churn-staging", "-l", "mlinfra.io/deployment=blue", "-o", "json"
        ).stdout
    )["items"]  # fmt: skip
    serving = [p for p in pods if p["metadata"].get("deletionTimestamp") is None]
    assert serving and all(p["spec"]["containers"][0]["image"].endswith("@" + digest) for p in serving), (
        serving
    )
    uri, key = staging_router(p)
    until("staging's router scores", lambda: score(uri, key)[0] == 200)
    assert score(uri, None)[0] == 401
    # `mlinfra endpoints list` finds the digest on both targets (the local cluster is looked at when it runs).
    r = subprocess.run(
        [MLINFRA, "endpoints", "list", "--json", "--image", digest], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    found = {e["endpoint"]: e["target"] for e in json.loads(r.stdout)}
    assert (
        found.get("churn-staging") == "kubernetes:churn-staging" and found.get("churn-dev") == "local-docker"
    ), found

    # Drift: staging's serving Deployment deleted by hand. A plain preview can't know; one with --refresh (a
    # scheduled drift alarm) reports it and exits 1; `mlinfra up --refresh` repairs it; then all is clean again.
    slots = kube_objects("churn-staging", "deploy")
    slot = next(n.split("/", 1)[1] for n in slots if n.split("/", 1)[1].startswith("churn-staging-blue-"))
    node.local_cluster().kubectl("delete", "deploy", slot, "-n", "churn-staging", "--wait=false")
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 0 and "**No changes**" in r.stdout, r.stdout
    drift_md = tmp_path / "drift.md"
    r = cli(p, "preview", "--stack", "staging", "--refresh", "--markdown", str(drift_md), record="drift")
    assert r.returncode == 1, r.stdout + r.stderr
    text = drift_md.read_text()
    assert "#### Drift" in text and "🔧 1 resource(s) drifted" in text, text
    assert re.search(
        rf"\| CloudEndpoint \S+ \| deployments\.blue: Deployment {slot} missing \(declared: running\)", text
    ), text
    r = cli(p, "up", "--stack", "staging", "--refresh")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"deployment.apps/{slot}" in kube_objects("churn-staging", "deploy")
    assert score(uri, key)[0] == 200  # up waited for the recreated pods before it finished
    r = cli(p, "preview", "--stack", "staging", "--refresh")
    assert r.returncode == 0 and "**No changes**" in r.stdout, r.stdout

    # prod: the policy pack requires accuracy ≥ 0.9 on models; v2 carries none.
    r = cli(p, "promote", "--from", "staging", "--to", "prod", "--copy")
    assert r.returncode == 0, r.stderr
    md_file = tmp_path / "prod.md"
    r = cli(p, "preview", "--stack", "prod", "--markdown", str(md_file), record="policy-violation")
    assert r.returncode == 1, r.stdout + r.stderr
    md = md_file.read_text()
    assert "#### Policy violations" in md
    assert "| mlinfra-model-metric | mandatory | churn | model churn:2 has no property 'accuracy'" in md, md
    assert "⛔ blocked" in md
    r = cli(p, "up", "--stack", "prod")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr
    assert "not applying prod: mlinfra-model-metric: model churn:2 has no property 'accuracy'" in r.stderr
    assert p.stack("prod").history() == []  # nothing was applied

    # The same pack in a plain `pulumi preview` (what a team without mlinfra's CLI runs in CI).
    r = cli(p, "policy", "config", "--stack", "prod")
    assert r.returncode == 0, r.stderr
    (tmp_path / "policy.json").write_text(r.stdout)
    plain = subprocess.run(
        [str(engine_bin_dir() / "pulumi"), "preview", "--stack", "prod", "--policy-pack", str(POLICY_PACK),
         "--policy-pack-config", str(tmp_path / "policy.json")],
        cwd=p.dir, env=p.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode != 0, plain.stdout
    assert "mlinfra-model-metric" in plain.stdout and "churn:2 has no property 'accuracy'" in plain.stdout

    # No endpoint key in anything a pull request shows.
    key = p.stack("staging").outputs()["endpoint:churn:key"]
    assert key.secret and len(key.value) >= 32
    for text in (
        md,
        (tmp_path / "staging.md").read_text(),
        (tmp_path / "same.json").read_text(),
        plain.stdout,
    ):
        assert key.value not in text

    # dev again, preview only: a retrained model with another input width (breaking), a 90/10 traffic split onto
    # the staging-pinned image, and an edge target that now reaches two of three devices (their twins are on the
    # shared local broker under a tag of this test's own, removed again at the end).
    write_mlp(p.dir / "models" / "churn-wide.onnx", inputs=32, seed=3)
    condition = "tags.team = 'gitops-test' AND tags.ring IN ('canary', 'ga')"

    def change(c: dict) -> None:
        c["models"][0]["path"] = "models/churn-wide.onnx"
        c["endpoints"][0]["deployments"]["green"] = {"image": staging2["images"]["churn-scorer"]["image_ref"]}
        c["endpoints"][0]["traffic"] = {"blue": 90, "green": 10}
        c["edge"][0]["target_condition"] = condition

    edit(p, "dev", change)
    devices = {"gitops-test-a": "canary", "gitops-test-b": "ga", "gitops-test-c": "lab"}
    broker = Broker.local()
    try:
        for d, ring in devices.items():
            twin = {"device_id": d, "status": "online", "tags": {"team": "gitops-test", "ring": ring}}
            publish(broker, twin_topic(d), json.dumps(twin).encode())
        md_file = tmp_path / "dev.md"
        r = cli(p, "preview", "--stack", "dev", "--markdown", str(md_file), record="breaking-traffic-edge")
    finally:
        for d in devices:
            publish(broker, twin_topic(d), b"")  # an empty retained message removes the twin
    assert r.returncode == 1, r.stdout + r.stderr  # breaking change
    md = md_file.read_text()
    assert "⚠️ **breaking**: input `input` FP32[?,64] → FP32[?,32]" in md, md
    assert "| blue | `churn-scorer@sha256:" in md and "| 100 % → **90 %** |" in md, md
    assert "| green | — → **`churn-scorer@sha256:" in md and "| — → **10 %** |" in md, md
    assert f"`tags.ring = 'canary'` → **`{condition}`**" in md, md
    assert re.search(r"\| 2 of \d+ targeted \|", md), md


def test_bad_input_is_named_and_changes_nothing(platform: Project) -> None:
    p = platform
    before = {f: f.read_text() for f in p.dir.glob("Pulumi.*.yaml")}

    r = cli(p, "preview", "--stack", "stagign")
    assert r.returncode == 2
    assert "unknown stack 'stagign'" in r.stderr and "did you mean 'staging'?" in r.stderr, r.stderr
    r = cli(p, "promote", "--from", "dve", "--to", "staging")
    assert r.returncode == 2 and "did you mean 'dev'?" in r.stderr, r.stderr
    r = cli(p, "promote", "--from", "dev", "--to", "dev")
    assert r.returncode == 2 and "promote between two stacks" in r.stderr

    # Promotion from a stack that never deployed.
    r = cli(p, "promote", "--from", "prod", "--to", "staging")
    assert r.returncode == 2 and "stack 'prod' has no deployments: run `pulumi up` on prod" in r.stderr, (
        r.stderr
    )

    # Promotion from a stack whose last update failed: dev pins a version its registry does not have.
    doc = yaml.safe_load((p.dir / "Pulumi.dev.yaml").read_text())
    doc["config"]["mlinfra-platform:platform"]["models"][0] = {
        "name": "churn",
        "version": 9,
        "sha256": "0" * 64,
    }
    (p.dir / "Pulumi.dev.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(auto.CommandError, match="pinned churn:9 is not in the registry"):
        p.stack("dev").up(on_output=lambda _l: None)
    r = cli(p, "promote", "--from", "dev", "--to", "staging")
    assert r.returncode == 2 and "ended 'failed': fix dev" in r.stderr, r.stderr
    r = cli(p, "preview", "--stack", "dev")  # the program's error reaches the pull request, exit 2
    assert r.returncode == 2 and "pinned churn:9 is not in the registry" in r.stdout, r.stdout
    assert "❌ the preview failed" in r.stdout
    (p.dir / "Pulumi.dev.yaml").write_text(before[p.dir / "Pulumi.dev.yaml"])

    # Misspelt config keys and a missing policy threshold fail before the engine runs, naming the key.
    edit(p, "staging", lambda c: c["endpoints"][0].update(rollout={"steps": [20, 100], "bake": 1}))
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 2
    assert "platform.endpoints.0.rollout.bake: unknown key; did you mean 'bake_s'?" in r.stderr, r.stderr
    edit(p, "prod", lambda c: c["policy"]["model_metric"].pop("threshold"))
    r = cli(p, "preview", "--stack", "prod")
    assert r.returncode == 2 and "platform.policy.model_metric.threshold: Field required" in r.stderr, (
        r.stderr
    )
    r = cli(p, "promote", "--from", "dev", "--to", "prod")  # the target's config is checked too
    assert r.returncode == 2 and "model_metric.threshold" in r.stderr, r.stderr

    # A target that is not one, a namespace that is not a DNS label, a kubeconfig that is not there.
    kube = {"kind": "kubernetes", "kubeconfig": "local"}
    edit(
        p, "staging", lambda c: c["endpoints"][0].update(rollout={"steps": [20, 100]}, target={"kind": "k8s"})
    )
    r = cli(p, "preview", "--stack", "staging")
    assert (
        r.returncode == 2
        and (
            "platform.endpoints.0.target: kind 'k8s' is not a target kind; use kind: local-docker or kind: kubernetes"
        )
        in r.stderr
    ), r.stderr
    edit(p, "staging", lambda c: c["endpoints"][0].update(target={**kube, "namespace": "Churn_Staging"}))
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 2 and "namespace 'Churn_Staging' is not a DNS label" in r.stderr, r.stderr
    edit(
        p, "staging", lambda c: c["endpoints"][0].update(target={**kube, "kubeconfig": "clusters/gone.yaml"})
    )
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 2, r.stdout
    assert f"kubeconfig '{p.dir / 'clusters' / 'gone.yaml'}' is not a file" in r.stdout, r.stdout
    # On Kubernetes, data collection into a local folder cannot work: the preview says what to configure.
    edit(p, "staging", lambda c: c["endpoints"][0].update(target=kube))
    p.stack("staging").remove_config("mlinfra:collectionStorage")
    r = cli(p, "preview", "--stack", "staging")
    assert (
        r.returncode == 2
        and "cannot work on Kubernetes" in r.stdout
        and "mlinfra:collectionStorage" in r.stdout
    ), r.stdout
    assert kube_objects("churn-staging") == []  # previews create nothing

    # Nothing was written by the refused commands (the test's own edits aside).
    assert (p.dir / "Pulumi.dev.yaml").read_text() == before[p.dir / "Pulumi.dev.yaml"]


def workflow_preview(project_dir: Path, stack: str, runner: Path) -> tuple[str, str]:
    """Run the `preview` step of examples/gitops/github-actions.yml as GitHub would (bash -eo pipefail, the
    workflow's env with MLINFRA_PROJECT set to PROJECT_DIR, the matrix stack filled in) in the folder RUNNER.
    Returns the exit code it recorded in $GITHUB_OUTPUT and the markdown it wrote."""
    wf = yaml.safe_load((REPO_ROOT / "examples" / "gitops" / "github-actions.yml").read_text())
    step = next(s for s in wf["jobs"]["preview"]["steps"] if s.get("id") == "preview")
    script = step["run"].replace("${{ matrix.stack }}", stack)
    assert "${{" not in script, script
    runner.mkdir(exist_ok=True)
    env = {k: str(v) for k, v in wf["env"].items() if "${{" not in str(v)}
    env.update(MLINFRA=MLINFRA, MLINFRA_PROJECT=str(project_dir), GITHUB_OUTPUT=str(runner / "github_output"))
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=runner,
        env={**os.environ, **env, "MLINFRA_PIP_OFFLINE": "1"},
        check=True,
        timeout=600,
    )
    outputs = dict(ln.split("=", 1) for ln in (runner / "github_output").read_text().splitlines())
    return outputs["code"], (runner / "preview.md").read_text()


def test_preview_policy_and_up_on_any_program(
    tmp_path: Path, backend: Path, monkeypatch, local_services
) -> None:
    """`mlinfra preview` / `up` / `promote` on a program written like the README's tour (examples/registered-model
    plus a ScoringImage), not the platform project: the summary comes from its components; `mlinfra:policy` in its
    stack config turns the policy pack on; promotion pins the model's version and sha256 and the image's digest; a
    program without mlinfra components says so and exits 0."""
    local_services("registry", "python-base")
    work = tmp_path / "tour"
    shutil.copytree(
        REPO_ROOT / "examples" / "registered-model", work, ignore=shutil.ignore_patterns(".mlinfra")
    )
    with open(work / "__main__.py", "a") as f:  # the tour's next step: package the model
        f.write(
            "\nimage = mlinfra.ScoringImage(\n"
            f"    'churn-scorer', mlinfra.ScoringImageArgs(models=[model], repository='127.0.0.1:5000/t{tmp_path.name[-8:]}/churn')\n"
            ")\npulumi.export('image_ref', image.image_ref)\n"
        )
    meta = work / "Pulumi.yaml"
    meta.write_text(meta.read_text().replace("../../.venv", str(REPO_ROOT / ".venv")))
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
    stack_file = work / "Pulumi.dev.yaml"
    policy = {"model_metric": {"name": "accuracy", "threshold": 0.95}}
    stack_file.write_text(yaml.safe_dump({"config": {"mlinfra:policy": policy}}))
    p = Project(work, backend)

    r = cli(p, "preview", "--stack", "dev")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "| churn-classifier | — → **_next (assigned at up)_** |" in r.stdout, r.stdout
    assert "mlinfra-model-metric" in r.stdout and "0.91" in r.stdout, r.stdout
    policy["model_metric"]["threshold"] = 0.9
    policy["max_canary_pct"] = 5
    stack_file.write_text(yaml.safe_dump({"config": {"mlinfra:policy": policy}}))
    r = cli(p, "preview", "--stack", "dev")
    assert (
        r.returncode == 2
        and "mlinfra:policy.max_canary_pct: unknown key; did you mean 'max_canary_percent'?" in (r.stderr)
    ), r.stderr
    del policy["max_canary_pct"]
    stack_file.write_text(yaml.safe_dump({"config": {"mlinfra:policy": policy}}))
    r = cli(p, "up", "--stack", "dev")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    v1 = p.stack("dev").outputs()["sha256"].value
    dev_image = p.stack("dev").outputs()["image_ref"].value

    # New weights, same signature: the version and sha256 move, exit 0 — through the GitHub Actions example's
    # preview step as written, pointed at this program by its MLINFRA_PROJECT.
    write_mlp(work / ".mlinfra" / "model.onnx", seed=11)
    code, md = workflow_preview(work, "dev", tmp_path / "ci")
    assert code == "0" and f"`{v1[:12]}` → **" in md and "v1 → **_next" in md, md
    # Another input width: breaking, exit 1.
    write_mlp(work / ".mlinfra" / "model.onnx", inputs=16, seed=11)
    r = cli(p, "preview", "--stack", "dev")
    assert r.returncode == 1 and "⚠️ **breaking**" in r.stdout, r.stdout

    # Promotion on that program: staging's mlinfra:pins get dev's exact version and sha256 (its comments kept).
    staging_file = work / "Pulumi.staging.yaml"
    staging_file.write_text("# staging: what dev ran, pinned by `mlinfra promote`\nconfig: {}\n")
    r = cli(p, "promote", "--from", "dev", "--to", "staging")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\+    churn-classifier: {{version: 1, sha256: {v1}}}$", r.stdout, re.M), r.stdout
    assert re.search(rf"^\+    churn-scorer: {{image: '?{re.escape(dev_image)}'?}}$", r.stdout, re.M), (
        r.stdout
    )
    assert staging_file.read_text().startswith("# staging: what dev ran")
    r = cli(p, "promote", "--from", "dev", "--to", "staging")
    assert r.returncode == 0 and "nothing to change" in r.stdout, r.stdout
    r = cli(p, "preview", "--stack", "staging")
    assert r.returncode == 0 and "| churn-classifier (pinned) |" in r.stdout, r.stdout + r.stderr
    r = cli(p, "up", "--stack", "staging")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    staged = p.stack("staging").outputs()
    assert (staged["version"].value, staged["sha256"].value) == (1, v1)  # not the file's newer content
    assert staged["image_ref"].value == dev_image  # the exact digest dev runs: not rebuilt
    # prod keeps its models in a registry of its own (its mlinfra:registry, read from a preview of prod's program):
    # promotion names it, and --copy copies the exact version there (sha256 verified) before pinning it.
    prod_registry = f"file://{tmp_path / 'prod-registry'}"
    (work / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": {"mlinfra:registry": prod_registry}}))
    r = cli(p, "promote", "--from", "staging", "--to", "prod")
    assert (
        r.returncode == 2 and f"is not in prod's registry {prod_registry}: re-run with --copy" in r.stderr
    ), r.stderr
    assert "mlinfra:pins" not in (work / "Pulumi.prod.yaml").read_text()
    r = cli(p, "promote", "--from", "staging", "--to", "prod", "--copy")
    assert r.returncode == 0 and "copying model churn-classifier:1 into" in r.stderr, r.stdout + r.stderr
    r = cli(p, "preview", "--stack", "prod")
    assert r.returncode == 0 and "| churn-classifier (pinned) |" in r.stdout, r.stdout + r.stderr
    # A pin naming a resource the program does not have is named, with those it has.
    doc = yaml.safe_load(staging_file.read_text())
    doc["config"]["mlinfra:pins"]["churn-clasifier"] = {"version": 1, "sha256": v1}
    staging_file.write_text(yaml.safe_dump(doc))
    r = cli(p, "preview", "--stack", "staging")
    assert (
        r.returncode == 2
        and (
            "mlinfra:pins names churn-clasifier, which the program does not declare (its models and images: "
            "churn-classifier, churn-scorer)"
        )
        in r.stdout
    ), r.stdout
    p.stack("staging").destroy(on_output=lambda _l: None)

    # A program with no mlinfra component: the engine's counts, and a plain statement.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Pulumi.yaml").write_text(meta.read_text().replace("mlinfra-example-registered-model", "plain"))
    (plain / "__main__.py").write_text("import pulumi\n\npulumi.export('greeting', 'hello')\n")
    (plain / "Pulumi.dev.yaml").write_text("config: {}\n")
    r = cli(Project(plain, backend), "preview", "--stack", "dev")
    assert r.returncode == 0 and "Nothing of mlinfra's in this plan" in r.stdout, r.stdout + r.stderr
    p.stack("dev").destroy(on_output=lambda _l: None)


def test_the_policy_blocks_an_unsigned_model_and_the_preview_names_signers(
    tmp_path: Path, backend: Path, monkeypatch
) -> None:
    """platform.policy.trusted_signers on a tour program: the unsigned model is a policy violation in the preview
    markdown (exit 1); signed with the trusted key (the stack's secret mlinfra:signingKey) it passes and the
    preview names the signer."""
    from pulumi import automation as auto

    from mlinfra.registry.signing import key_id
    from tests.signing_helpers import ec_keypair

    private, public = ec_keypair()
    kid = key_id(public)
    work = tmp_path / "tour"
    shutil.copytree(
        REPO_ROOT / "examples" / "registered-model", work, ignore=shutil.ignore_patterns(".mlinfra")
    )
    meta = work / "Pulumi.yaml"
    meta.write_text(meta.read_text().replace("../../.venv", str(REPO_ROOT / ".venv")))
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
    (work / "Pulumi.prod.yaml").write_text(
        yaml.safe_dump({"config": {"mlinfra:policy": {"trusted_signers": [kid]}}})
    )
    p = Project(work, backend)
    md = tmp_path / "pr.md"
    r = cli(p, "preview", "--stack", "prod", "--markdown", str(md))
    assert r.returncode == 1, r.stdout + r.stderr
    text = md.read_text()
    assert "mlinfra-model-signed" in text and "churn-classifier is not signed" in text, text
    p.stack("prod").set_config("mlinfra:signingKey", auto.ConfigValue(private, secret=True))
    r = cli(p, "preview", "--stack", "prod", "--markdown", str(md))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"signed by `{kid[:12]}`" in md.read_text(), md.read_text()
    assert private.splitlines()[1] not in (work / "Pulumi.prod.yaml").read_text(), (
        "the key is stored encrypted"
    )
