"""DataCollection under mocks: the storage it provisions and what it hands the scoring servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlinfra
from mlinfra.errors import CollectionError
from tests.unit.mocks import install, resolve


def test_folder_storage_and_server_settings(tmp_path: Path) -> None:
    mocks = install({"-storage": {"container_uri": f"file://{tmp_path}/c", "sas": "", "expires": ""}})
    dc: dict = {}

    def build() -> dict:
        dc["c"] = mlinfra.DataCollection(
            "capture",
            mlinfra.DataCollectionArgs(
                storage=f"file://{tmp_path}/c", sample_rate=0.25, headers=["x-client-id"], capture=["inputs"]
            ),
        )
        return {"uri": dc["c"].container_uri}

    outs = resolve(build)
    storage = next(i for t, n, i in mocks.created if t == "pulumi-python:dynamic:Resource")
    assert storage["storage"] == f"file://{tmp_path}/c"
    assert outs["uri"] == f"file://{tmp_path}/c"
    env = dc["c"].server_env("shop", "blue", "/spool")
    collect = json.loads(env["MLINFRA_SERVE_COLLECT"])
    assert (
        collect["sample_rate"] == 0.25
        and collect["capture"] == ["inputs"]
        and collect["headers"] == ["x-client-id"]
    )
    assert (
        collect["endpoint"] == "shop" and collect["deployment"] == "blue" and collect["spool_dir"] == "/spool"
    )
    assert "MLINFRA_SERVE_OTLP_ENDPOINT" not in env


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate = 1.5 must be in [0, 1]"),
        ({"capture": ["weights"]}, "capture = ['weights']"),
        ({"headers": ["Authorization"]}, "must not include Authorization"),
        ({"storage": "s3://bucket"}, "storage 's3://bucket'"),
        ({"otlp_endpoint": "127.0.0.1:4318"}, "must be an http(s) URL"),
    ],
)
def test_bad_input_names_the_value(tmp_path: Path, kw: dict, message: str) -> None:
    mocks = install()
    args = {"storage": f"file://{tmp_path}/c", **kw}
    with pytest.raises(CollectionError) as e:
        resolve(
            lambda: {"u": mlinfra.DataCollection("capture", mlinfra.DataCollectionArgs(**args)).container_uri}
        )
    assert message in str(e.value)
    assert not any(t == "pulumi-python:dynamic:Resource" for t, _n, _i in mocks.created)
