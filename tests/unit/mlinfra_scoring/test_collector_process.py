"""The collector in a process of its own (mlinfra_scoring.collector_process): the shared-memory ring, records as
bytes, the process off the server's CPUs, a full ring dropping and counting, a killed process restarted with
nothing lost, and shutdown emptying the ring into the sink."""

from __future__ import annotations

import json
import os
import signal
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from mlinfra_scoring.collector import CollectorConfig
from mlinfra_scoring.collector_process import ProcessCollector, Ring, pack, unpack
from tests.waiting import until


def test_ring_frames_wrap_and_refuse_when_full() -> None:
    shm = shared_memory.SharedMemory(create=True, size=64 + 100)
    try:
        ring = Ring(shm)
        got: list[bytes] = []
        for i in range(50):  # frames of 4 + 30 bytes in 100: every few puts wrap
            assert ring.put(bytes([i]) * 30)
            ring.take(got.append)
        assert got == [bytes([i]) * 30 for i in range(50)]
        accepted = []
        for c in b"abcd":  # 44-byte frames in 100 bytes (a frame never wraps: the end may be skipped)
            if not ring.put(bytes([c]) * 40):
                break
            accepted.append(bytes([c]) * 40)
        assert 1 <= len(accepted) <= 2, "a full ring refuses"
        ring.take(got.append)
        assert got[50:] == accepted and ring.used() == 0
    finally:
        shm.close()
        shm.unlink()


def test_records_travel_as_bytes() -> None:
    record = {
        "request_id": "r1",
        "model": "m",
        "version": "2",
        "ts": 1.5,
        "inputs": {
            "x": np.arange(6, dtype=np.float32).reshape(2, 3),
            "s": np.array(["a", "b"], dtype=object),
        },
        "outputs": {"y": np.array([[True, False]]), "z": np.array([1, 2], dtype=np.int64)[::-1]},
        "headers": {"X-Client-Id": "acme", "Authorization": "Bearer secret"},
    }
    back = unpack(memoryview(pack(record, ["x-client-id"])))
    assert back["request_id"] == "r1" and back["version"] == "2" and back["ts"] == 1.5
    np.testing.assert_array_equal(back["inputs"]["x"], record["inputs"]["x"])
    assert back["inputs"]["s"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(back["outputs"]["z"], [2, 1])  # a strided view is copied in order
    assert back["outputs"]["y"].dtype == np.bool_
    assert back["headers"] == {"x-client-id": "acme"}, "only the configured headers leave the server"
    sdk = unpack(memoryview(pack({"request_id": "r2", "collection": "model_inputs", "data": {"a": [1]}}, [])))
    assert sdk["collection"] == "model_inputs" and sdk["data"] == {"a": [1]}


def records(folder: Path) -> list[dict]:
    return [
        json.loads(ln) for f in sorted(folder.rglob("*.jsonl")) for ln in f.read_text().splitlines() if ln
    ]


def record(i: int, size: int = 64) -> dict:
    return {
        "request_id": f"r{i}",
        "model": "m",
        "version": "1",
        "ts": time.time(),
        "inputs": {"x": np.ones(size)},
    }


@pytest.fixture
def collector(tmp_path: Path):
    made: list[ProcessCollector] = []

    def make(**cfg) -> ProcessCollector:
        config = CollectorConfig(
            sink=f"file://{tmp_path / 'sink'}", spool_dir=str(tmp_path / "spool"), flush_s=0.05, **cfg
        )
        c = ProcessCollector(config, None, on_drop=drops.append, log=logs.append)
        made.append(c)
        return c

    drops: list[str] = []
    logs: list[dict] = []
    make.drops, make.logs = drops, logs  # type: ignore[attr-defined]
    yield make
    for c in made:
        c.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a second CPU to move to")
def test_the_process_leaves_the_servers_cpu(collector, tmp_path: Path) -> None:
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mine)})  # the server pinned to one CPU, as the benchmark pins it
    try:
        c = collector()
        assert c._proc is not None
        server_cpu = min(mine)
        until(
            "the process moved off the server's CPU",
            lambda: server_cpu not in os.sched_getaffinity(c._proc.pid),  # type: ignore[union-attr]
            timeout_s=20,
            every_s=0.05,
        )
    finally:
        os.sched_setaffinity(0, mine)
    for i in range(100):
        c(record(i))

    def all_in_sink() -> list[dict] | None:
        found = records(tmp_path / "sink")
        return found if len(found) == 100 else None

    got = until("records in the sink", all_in_sink, timeout_s=20, every_s=0.05)
    assert sorted(r["request_id"] for r in got) == sorted(f"r{i}" for i in range(100))


def test_a_full_ring_drops_and_counts_and_a_killed_process_loses_nothing(collector, tmp_path: Path) -> None:
    c = collector(ring_mb=1)
    assert c._proc is not None
    os.kill(c._proc.pid, signal.SIGSTOP)  # the collector stalls: the ring fills
    try:
        for i in range(400):  # 400 records of ≈ 8 KB in a 1 MiB ring
            c(record(i, size=1000))
    finally:
        os.kill(c._proc.pid, signal.SIGCONT)
    dropped = c.counts["dropped"]
    assert 200 < dropped < 400 and len(collector.drops) == dropped, dropped
    # It dies with records still in the ring: restarted, they still arrive.
    os.kill(c._proc.pid, signal.SIGKILL)
    until(
        "a new collector process",
        lambda: any(e.get("event") == "collector_process_restarted" for e in collector.logs),
        timeout_s=20,
        every_s=0.05,
    )
    c.close()
    got = {r["request_id"] for r in records(tmp_path / "sink")} | {
        json.loads(ln)["request_id"]
        for f in (tmp_path / "spool").rglob("*.jsonl")
        for ln in f.read_text().splitlines()
        if ln
    }
    assert len(got) == 400 - dropped, (len(got), dropped)
