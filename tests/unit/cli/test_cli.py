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


def test_provenance_commands_refuse_bad_input_with_the_fix(tmp_path, capsys) -> None:
    """`images verify` wants a digest and a readable key; `models register --signing-key` a readable EC key; the
    scoring server's and the edge agent's --trust a folder of keys."""
    assert cli.main(["images", "verify", "127.0.0.1:5000/x/y:latest", "--public-key", "k.pem"]) == 2
    assert "give the image by digest (host/repo@sha256:…), not by tag" in capsys.readouterr().err
    ref = "127.0.0.1:5000/x/y@sha256:" + "0" * 64
    assert cli.main(["images", "verify", ref, "--public-key", str(tmp_path / "missing.pem")]) == 2
    assert "--public-key" in capsys.readouterr().err
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    (tmp_path / "rsa.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    code = cli.main(
        ["models", "register", "m", str(model), "--framework", "custom", "--registry", f"file://{tmp_path / 'r'}",
         "--signing-key", str(tmp_path / "rsa.pem")]
    )  # fmt: skip
    assert code == 2 and "the signing key is not a PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "r" / "models").exists(), "nothing was registered"
    serve = subprocess.run(
        [sys.executable, "-m", "mlinfra_scoring", "--model", str(model), "--trust", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 2 and "trust folder" in serve.stderr and "does not exist" in serve.stderr
    agent = subprocess.run(
        [sys.executable, "-m", "mlinfra_edge", "--device-id", "d", "--broker", "mqtt://127.0.0.1:1",
         "--trust", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={"MLINFRA_EDGE_PASSWORD": "pw", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert agent.returncode == 2 and "no keys/ folder of trusted PEM keys" in agent.stderr
