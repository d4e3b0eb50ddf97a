"""Secrets never on a process command line (issue 17): a replica's collection SAS reaches `docker run` through the
CLI's environment (`-e NAME`), so `ps` never shows it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from mlinfra.endpoints import local
from mlinfra.endpoints.rollout import Revision

SAS = "sv=2024-11-04&se=2099-01-01&sp=cw&sig=SECRETSIGNATURE%3D"


def test_the_collection_sas_is_passed_in_the_environment_not_argv(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append((list(argv), kw.get("env")))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(local.subprocess, "run", fake_run)
    monkeypatch.setattr(local, "image_info", lambda _ref: ("sha256:" + "0" * 64, []))
    monkeypatch.setattr(local, "endpoint_dir", lambda _e: tmp_path)
    monkeypatch.setattr(local.os, "chown", lambda *_a: None)
    collect = {"sink": "azblob://127.0.0.1:10000/devstoreaccount1/c", "sample_rate": 1.0}
    rev = Revision(
        "blue",
        "abc123",
        {"image": "127.0.0.1:5000/x@sha256:" + "1" * 64, "cpu": 0.5, "memory_mb": 256, "replicas": 1,
         "env": {"MLINFRA_SERVE_COLLECT": json.dumps(collect)}},
    )  # fmt: skip
    local.start_upstream("ep", rev, [18080], lambda _m: None, {"MLINFRA_SERVE_COLLECT_CREDENTIAL": SAS})
    runs = [(argv, env) for argv, env in calls if "run" in argv]
    assert len(runs) == 1
    argv, env = runs[0]
    assert not any("SECRETSIGNATURE" in a for a in argv), argv
    assert (
        "MLINFRA_SERVE_COLLECT_CREDENTIAL" in argv
    )  # `-e NAME`: docker takes the value from its environment
    assert env is not None and env["MLINFRA_SERVE_COLLECT_CREDENTIAL"] == SAS
