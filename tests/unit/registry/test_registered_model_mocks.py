"""RegisteredModel and ModelAlias under mocks: what they register and output; bad input fails before anything is
registered."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import mlinfra
from mlinfra.errors import ModelError
from mlinfra.lab.samples import write_mlp
from tests.unit.mocks import install, resolve


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return write_mlp(tmp_path / "churn.onnx")


def test_registers_content_by_hash_and_outputs_int_version(tmp_path: Path, model_file: Path) -> None:
    mocks = install({"-version": {"version": 3.0, "size_bytes": 1234.0, "uri": "file:///r/churn/3"}})
    reg = f"file://{tmp_path}/registry"
    outs = resolve(
        lambda: {
            "version": (
                m := mlinfra.RegisteredModel(
                    "churn",
                    mlinfra.RegisteredModelArgs(path=str(model_file), registry=reg, tags={"team": "growth"}),
                )
            ).version,
            "signature": m.signature,
            "sha256": m.sha256,
        }
    )
    inputs = mocks.inputs("churn-version")
    assert inputs["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert (
        inputs["model_name"] == "churn" and inputs["tags"] == {"team": "growth"} and inputs["registry"] == reg
    )
    assert outs["version"] == 3 and isinstance(outs["version"], int), outs["version"]
    assert [i["name"] for i in outs["signature"]["inputs"]] == ["input"], outs["signature"]
    assert "mlinfra:registry:RegisteredModel" in mocks.types()


def test_alias_points_at_the_models_version(tmp_path: Path, model_file: Path) -> None:
    mocks = install({"-version": {"version": 2.0, "size_bytes": 10.0, "uri": "u"}})

    def build() -> dict:
        m = mlinfra.RegisteredModel(
            "churn", mlinfra.RegisteredModelArgs(path=str(model_file), registry=f"file://{tmp_path}/r")
        )
        a = mlinfra.ModelAlias("champion", mlinfra.ModelAliasArgs(model=m, alias="champion"))
        return {"alias_version": a.version}

    outs = resolve(build)
    alias = mocks.inputs("champion-alias")
    assert alias["alias"] == "champion" and alias["model_name"] == "churn" and alias["version"] == 2
    assert outs["alias_version"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tags": {"": "x"}}, "tag"),
        ({"framework": "pickle"}, "framework 'pickle' is not supported"),
        ({"version": 3}, "give either path= (register a file) or version= and sha256="),
        ({"registry": "s3://bucket/models"}, "registry URI 's3://bucket/models'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_registered(
    tmp_path: Path, model_file: Path, args: dict, message: str
) -> None:
    mocks = install()
    with pytest.raises(mlinfra.UserError, match=re.escape(message)):
        resolve(
            lambda: {
                "v": mlinfra.RegisteredModel(
                    "churn",
                    mlinfra.RegisteredModelArgs(
                        **{"path": str(model_file), "registry": f"file://{tmp_path}/r", **args}
                    ),
                ).version
            }
        )
    assert mocks.created == [], mocks.created


def test_alias_name_is_validated_before_registration(tmp_path: Path, model_file: Path) -> None:
    mocks = install({"-version": {"version": 1.0, "size_bytes": 1.0, "uri": "u"}})
    with pytest.raises(ModelError, match="alias"):

        def build() -> dict:
            m = mlinfra.RegisteredModel(
                "churn", mlinfra.RegisteredModelArgs(path=str(model_file), registry=f"file://{tmp_path}/r")
            )
            return {
                "a": mlinfra.ModelAlias("bad", mlinfra.ModelAliasArgs(model=m, alias="Not An Alias!")).version
            }

        resolve(build)
    assert not any("ModelAlias" in t for t in mocks.types())
