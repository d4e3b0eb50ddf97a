"""Shared by the scoring-server tests that serve both sample models."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp, write_types_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The reference MLP (served as "mlp") and the one-Identity-per-datatype model ("types")."""
    d = tmp_path_factory.mktemp("models")
    return {"mlp": write_mlp(d / "mlp.onnx"), "types": write_types_model(d / "types.onnx")}
