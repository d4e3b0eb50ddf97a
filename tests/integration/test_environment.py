"""Bad environments give clear errors: no Go and no pulumi, a taken port, a service that died."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
MLINFRA = [sys.executable, "-m", "mlinfra.cli"]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH holding links to every program on this PATH except HIDDEN."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = shadow / name
            if name in hidden or target.exists():
                continue
            src = os.path.join(d, name)
            if os.access(src, os.X_OK) and not os.path.isdir(src):
                target.symlink_to(src)
    return str(shadow)


def test_setup_without_go_or_pulumi_says_what_to_install(tmp_path: Path) -> None:
    env = {
        "PATH": _path_without(tmp_path, "go", "pulumi"),
        "HOME": str(tmp_path),
        "MLINFRA_CACHE": str(tmp_path / "cache"),
    }
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "engine.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    assert "no Go toolchain and no 'pulumi' v" in res.stderr
    assert "Install Go >= 1.25" in res.stderr


def test_taken_port_names_port_and_service(tmp_path: Path) -> None:
    port = _free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        env = {**os.environ, "MLINFRA_CACHE": str(tmp_path), "MLINFRA_REGISTRY_PORT": str(port)}
        res = subprocess.run(
            [*MLINFRA, "services", "up", "registry"], env=env, capture_output=True, text=True, timeout=60
        )
    assert res.returncode == 2, res.stderr
    assert f"port {port} for the OCI registry is taken" in res.stderr
    assert "MLINFRA_REGISTRY_PORT" in res.stderr
    assert "Traceback" not in res.stderr


def test_doctor_names_a_service_that_died(tmp_path: Path) -> None:
    env = {**os.environ, "MLINFRA_CACHE": str(tmp_path), "MLINFRA_MQTT_PORT": str(_free_port())}
    up = subprocess.run(
        [*MLINFRA, "services", "up", "mosquitto"], env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    pid = int((tmp_path / "services" / "mosquitto" / "pid").read_text())
    try:
        before = json.loads(
            subprocess.run(
                [*MLINFRA, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120
            ).stdout
        )
        assert next(c for c in before if c["name"] == "mosquitto")["ok"] is True
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        res = subprocess.run(
            [*MLINFRA, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 1
        mosq = next(c for c in json.loads(res.stdout) if c["name"] == "mosquitto")
        assert mosq["ok"] is False
        assert "died" in mosq["detail"] and "MQTT" in mosq["detail"]
        assert "make services" in mosq["fix"]
        human = subprocess.run(
            [*MLINFRA, "doctor"], env=env, capture_output=True, text=True, timeout=120
        ).stdout
        assert "MISSING mosquitto" in human.replace("  ", " ")
    finally:
        subprocess.run([*MLINFRA, "services", "down", "mosquitto"], env=env, capture_output=True, timeout=60)


def test_doctor_is_green_with_engine_and_services(local_services) -> None:
    local_services("docker", "registry", "azurite", "mosquitto", "python-base")
    res = subprocess.run([*MLINFRA, "doctor"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all good" in res.stdout
