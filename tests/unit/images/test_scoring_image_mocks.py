"""ScoringImage under mocks: the build inputs it registers (content hashes, not paths), its outputs, and bad
input refused before anything is registered."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import mlinfra
from mlinfra import defaults
from mlinfra.errors import ImageBuildError
from tests.unit.mocks import install, registered_model, resolve

DIGEST = "sha256:" + "b" * 64
COMPUTED = {
    "-version": {"version": 4.0, "size_bytes": 100.0, "uri": "u"},
    "-image": {
        "image_ref": f"127.0.0.1:5000/mlinfra/scorer@{DIGEST}",
        "digest": DIGEST,
        "model_versions": [{"name": "churn", "version": 4, "sha256": "c" * 64}],
    },
}


def _model(tmp_path: Path) -> mlinfra.RegisteredModel:
    return registered_model(tmp_path, "churn")


def test_build_inputs_are_content_and_outputs_the_digest(tmp_path: Path) -> None:
    mocks = install(COMPUTED)
    script = tmp_path / "score.py"
    script.write_text("def init():\n    pass\n\n\ndef run(raw):\n    return raw\n")
    outs = resolve(
        lambda: {
            "ref": (
                img := mlinfra.ScoringImage(
                    "scorer", mlinfra.ScoringImageArgs(models=[_model(tmp_path)], script=str(script))
                )
            ).image_ref,
            "digest": img.digest,
        }
    )
    inputs = mocks.inputs("scorer-image")
    assert inputs["repository"] == f"{defaults.registry_host()}/mlinfra/scorer"
    assert inputs["base"] == defaults.base_image_ref()
    assert inputs["script_sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    assert [(m["name"], m["version"]) for m in inputs["models"]] == [("churn", 4)]
    assert outs == {"ref": f"127.0.0.1:5000/mlinfra/scorer@{DIGEST}", "digest": DIGEST}
    component = next(i for t, n, i in mocks.created if t == "mlinfra:images:ScoringImage")
    assert component["repository"] == inputs["repository"], "policies read the component's inputs"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": []}, "models is empty"),
        ({"script": "/nonexistent/score.py"}, "script '/nonexistent/score.py' does not exist"),
        ({"files": {"x.txt": "/nonexistent/x.txt"}}, "file '/nonexistent/x.txt' (for x.txt) does not exist"),
        ({"pinned": "127.0.0.1:5000/m:latest"}, "must be host/repo@sha256:<64 hex>"),
    ],
)
def test_bad_input_names_the_value(tmp_path: Path, kwargs: dict, message: str) -> None:
    mocks = install(COMPUTED)

    def build() -> dict:
        args = {"models": [_model(tmp_path)], **kwargs}
        return {"ref": mlinfra.ScoringImage("scorer", mlinfra.ScoringImageArgs(**args)).image_ref}

    with pytest.raises(ImageBuildError) as e:
        resolve(build)
    assert message in str(e.value)
    assert "pulumi-python:dynamic:Resource" not in [t for t, n, _ in mocks.created if n == "scorer-image"]


def test_a_missing_or_silent_buildx_builder_is_named_with_the_fix(tmp_path, monkeypatch) -> None:
    import json

    from mlinfra.errors import ImageBuildError
    from mlinfra.images.scoring_image import check_builder

    monkeypatch.setenv("BUILDX_CONFIG", str(tmp_path))
    with pytest.raises(ImageBuildError, match=r"no buildx builder 'mine'.*mlinfra services up buildkit"):
        check_builder("ScoringImage x", "mine")
    (tmp_path / "instances").mkdir()
    sock = tmp_path / "gone.sock"
    (tmp_path / "instances" / "mine").write_text(
        json.dumps({"Name": "mine", "Driver": "remote", "Nodes": [{"Endpoint": f"unix://{sock}"}]})
    )
    with pytest.raises(ImageBuildError, match=r"'mine' does not answer at unix://"):
        check_builder("ScoringImage x", "mine")
    (tmp_path / "instances" / "mine").write_text("{not json")
    with pytest.raises(ImageBuildError, match="cannot be read"):
        check_builder("ScoringImage x", "mine")
