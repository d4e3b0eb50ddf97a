from __future__ import annotations

import json
import subprocess
import sys

from mlinfra import cli


def test_help_lists_commands(capsys) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("version", "doctor", "services"):
        assert cmd in out


def test_version_json_names_sdk_and_engine(capsys) -> None:
    assert cli.main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from mlinfra.engine import pinned_versions

    assert info["pulumi_sdk"] == pinned_versions()["PULUMI_SDK_VERSION"]
    assert info["engine"] == f"v{pinned_versions()['PULUMI_VERSION']}" or info["engine"] is None
    assert set(info) >= {"mlinfra", "engine"}


def test_unknown_service_is_a_clear_error() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mlinfra.cli", "services", "up", "postgres"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "unknown service 'postgres'" in res.stderr and "registry" in res.stderr
