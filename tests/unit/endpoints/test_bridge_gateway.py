"""Where containers reach this machine: Docker's bridge gateway, also from a daemon that records none."""

from __future__ import annotations

import subprocess

import pytest

from mlinfra.endpoints import local
from mlinfra.errors import EndpointError


def fake(monkeypatch, inspect: str, addr: str, rc: int = 0) -> list[list[str]]:
    asked: list[list[str]] = []
    monkeypatch.setattr(local, "_GATEWAY", [])
    monkeypatch.setattr(
        local, "docker", lambda *a, **_k: subprocess.CompletedProcess(list(a), rc, inspect, "no such network")
    )

    def run(cmd, **_k):
        asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, addr, "")

    monkeypatch.setattr(local.subprocess, "run", run)
    return asked


def test_the_recorded_gateway_comes_first(monkeypatch) -> None:
    asked = fake(monkeypatch, "172.18.0.1 docker0\n", "")
    assert local.bridge_gateway() == "172.18.0.1" and asked == []


def test_without_a_recorded_gateway_the_bridge_interface_address_is_used(monkeypatch) -> None:
    asked = fake(
        monkeypatch, " br-mine\n", "7: br-mine    inet 10.9.0.1/24 brd 10.9.0.255 scope global br-mine\n"
    )
    assert local.bridge_gateway() == "10.9.0.1"
    assert asked == [["ip", "-4", "-o", "addr", "show", "dev", "br-mine"]]


def test_no_address_at_all_says_how_to_fix_it(monkeypatch) -> None:
    fake(monkeypatch, " docker0\n", "")
    with pytest.raises(EndpointError, match=r"has no gateway address.*restart Docker"):
        local.bridge_gateway()
