"""DataCollection under mocks: the storage it provisions and what it hands the scoring servers."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
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
        ({"otlp_trace_sample": 2.0}, "otlp_trace_sample = 2.0 must be in [0, 1]"),
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


AZ = "azblob://devstoreaccount1/captured?endpoint=http://127.0.0.1:10000/devstoreaccount1"
KEY = "a2V5LWZvci11bml0LXRlc3RzLW9ubHk="


def test_the_sas_is_computed_in_the_program_and_never_a_provider_output() -> None:
    """The SAS and the account key are no provider outputs (a checkpoint can't hold them in plain text): the
    provider stores when it expires, the program derives the token from it as a secret, always the same."""
    from mlinfra.monitoring.provider import CollectionStorageProvider, _outs, container_sas

    window = {"container_uri": "u", "expires": "2026-12-28T10:00:00Z"}
    outs = _outs({"storage": AZ, "storage_credential": KEY, "ttl_hours": 720.0}, window)
    assert "storage_credential" not in outs and outs["sas"] == "" and outs["expires"] == window["expires"]
    assert KEY not in repr(outs)
    assert CollectionStorageProvider.KEYS == ("storage", "ttl_hours", "rotation")

    install({"-storage": {k: v for k, v in outs.items() if k != "storage"}})
    dc: dict = {}

    def build() -> dict:
        dc["c"] = mlinfra.DataCollection(
            "capture", mlinfra.DataCollectionArgs(storage=AZ, storage_credential=KEY)
        )
        return {"sas": dc["c"].sas}

    got = resolve(build)
    want = container_sas(AZ, KEY, window["expires"])
    assert got["sas"] == want and "sp=acw" in want and "se=2026-12-28T10%3A00%3A00Z" in want
    assert container_sas(AZ, KEY, window["expires"]) == want  # the same on every run
    assert container_sas(AZ, KEY, "2026-12-29T10:00:00Z") != want  # a rotation, a new token
    secret: dict = {}

    @pulumi.runtime.test
    def is_secret():
        return pulumi.Output.from_input(dc["c"].sas.is_secret()).apply(lambda s: secret.update(s=s))

    is_secret()
    assert secret["s"] is True


def test_a_stack_from_before_keeps_its_sas_until_rotated() -> None:
    """State written before the SAS moved into the program holds it as an output: it is kept until rotated (a changed
    SAS would roll out every endpoint that collects)."""
    install({"-storage": {"container_uri": "u", "sas": "sv=old&sig=x", "expires": "2027-01-01T00:00:00Z"}})
    got = resolve(
        lambda: {
            "sas": mlinfra.DataCollection(
                "capture", mlinfra.DataCollectionArgs(storage=AZ, storage_credential=KEY)
            ).sas
        }
    )
    assert got["sas"] == "sv=old&sig=x"
