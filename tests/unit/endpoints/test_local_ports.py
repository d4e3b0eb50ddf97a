"""Endpoint ports are picked below the kernel's ephemeral range: an outgoing connection's source port can never hold
one when a replica or router binds it (the ports of a slot are kept across updates, so binding may come long after
picking)."""

from __future__ import annotations

from pathlib import Path

from mlinfra.endpoints.local import free_port


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = {free_port() for _ in range(50)}
    assert all(p < min(low, 30000) for p in picked), sorted(picked)
    assert len(picked) > 40, "picked at random, not one port over and over"
    avoid = set(range(20000, 29990))
    assert free_port(avoid) not in avoid
