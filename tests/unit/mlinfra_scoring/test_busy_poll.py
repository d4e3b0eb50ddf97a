"""--busy-poll-us (issue 19): the event loop spins in short gaps between requests, each at most one window, and
sleeps otherwise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.scoring_helpers import Server, metric, start_server

ONE_ROW = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process PID so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced_requests(srv: Server, n: int, gap_s: float) -> None:
    for _ in range(n):
        status, body, _ = srv.request("POST", "/v2/models/mlp/infer", ONE_ROW)
        assert status == 200, body
        time.sleep(gap_s)


def spin_seconds(srv: Server) -> float | None:
    return metric(srv.request("GET", "/metrics")[1], "mlinfra_busy_poll_seconds_total")


def test_busy_poll_spins_in_short_gaps_only_and_then_sleeps(tmp_path: Path, models) -> None:
    """With --busy-poll-us 10000, a caller that comes back within 10 ms finds the loop spinning: 40 requests ≈ 4 ms
    apart keep the core busy through the gaps (CPU and mlinfra_busy_poll_seconds_total ≈ the gaps). Requests 30 ms
    apart, longer than the window, are not spun for. With 0 nothing spins, and either way a server without traffic
    sleeps (no CPU)."""
    used: dict[str, float] = {}
    for label, flags in (("on", ("--busy-poll-us", "10000")), ("off", ("--busy-poll-us", "0"))):
        (tmp_path / label).mkdir()
        srv = start_server(
            tmp_path / label, "--model", str(models["mlp"]), "--name", "mlp", "--no-access-log", *flags
        )
        try:
            paced_requests(srv, 5, 0.004)  # warm-up (and the first short gap)
            before, t0 = cpu_s(srv.proc.pid), spin_seconds(srv) or 0.0
            paced_requests(srv, 40, 0.004)
            used[label] = cpu_s(srv.proc.pid) - before
            spun = (spin_seconds(srv) or 0.0) - t0
            if label == "on":  # each gap ≈ 4 ms + the client's own time, each spun through (at most 10 ms)
                assert 40 * 0.003 <= spun <= 40 * 0.010 + 0.05, spun
            else:
                assert spun == 0.0
            paced_requests(srv, 3, 0.03)
            t1 = spin_seconds(srv) or 0.0
            paced_requests(srv, 20, 0.03)  # gaps longer than the window: no spinning
            assert (spin_seconds(srv) or 0.0) - t1 <= 0.011, "spun in gaps longer than the window"
            time.sleep(0.1)
            idle = cpu_s(srv.proc.pid)
            time.sleep(1.0)
            assert cpu_s(srv.proc.pid) - idle < 0.15, f"{label}: the server kept the CPU busy without traffic"
        finally:
            assert srv.stop() == 0
    assert used["on"] >= 0.06 and used["on"] >= 2 * used["off"], used


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (["--busy-poll-us", "-1"], {}, "--busy-poll-us must be ≥ 0, got -1"),
        (["--busy-poll-us", "20000"], {}, "--busy-poll-us must be ≤ 10000 (10 ms), got 20000"),
        (["--busy-poll-us", "nan"], {}, "--busy-poll-us must be a finite number, got nan"),
        (["--max-body-mb", "inf"], {}, "--max-body-mb must be a finite number, got inf"),
        ([], {"MLINFRA_SERVE_BUSY_POLL_US": "fast"}, "MLINFRA_SERVE_BUSY_POLL_US='fast' is not a number"),
    ],
)
def test_busy_poll_configuration_errors_name_the_value(
    tmp_path: Path, monkeypatch, argv: list[str], env: dict[str, str], error: str
) -> None:
    from mlinfra_scoring.cli import ConfigError, build_parser, config_from

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        config_from(build_parser().parse_args(["--model", str(model), *argv]))
    assert error in str(e.value)


def test_busy_poll_is_on_by_default_only_on_cores_of_its_own_and_read_from_the_environment(
    tmp_path: Path, monkeypatch
) -> None:
    """Unset, the window is 300 µs when the server may run on fewer CPUs than the machine has (pinned: taskset,
    a cpuset) and 0 when it may run on all of them; a value given by flag or environment wins either way."""
    import os

    from mlinfra_scoring.cli import build_parser, config_from

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")

    def window(*argv: str) -> float:
        return config_from(build_parser().parse_args(["--model", str(model), *argv])).busy_poll_us

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert window() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2})
    assert window() == 300
    assert window("--busy-poll-us", "0") == 0
    monkeypatch.setenv("MLINFRA_SERVE_BUSY_POLL_US", "250")
    assert window() == 250
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert window() == 250


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pinning to fewer CPUs needs a machine with two")
def test_a_server_pinned_to_one_cpu_busy_polls_by_itself(tmp_path: Path, models) -> None:
    """The real server started under taskset (one CPU of the machine's) says it busy-polls, and spins between
    requests that come straight back; the same server unpinned does not (the test above, `--busy-poll-us 0`)."""
    import json
    import subprocess
    import sys

    from tests.scoring_helpers import REPO, free_port

    port = free_port()
    log = tmp_path / "pinned.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "mlinfra_scoring", "--model", str(models["mlp"]),
             "--name", "mlp", "--port", str(port), "--no-access-log"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if srv.request("GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        listening = next(json.loads(x) for x in log.read_text().splitlines() if '"listening"' in x)
        assert listening["busy_poll_us"] == 300, listening
        import http.client

        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=10
        )  # one keep-alive connection, no pause
        body = json.dumps(ONE_ROW).encode()
        for _ in range(200):
            conn.request(
                "POST", "/v2/models/mlp/infer", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
        conn.close()
        assert (spin_seconds(srv) or 0) > 0, "a pinned server did not spin between back-to-back requests"
    finally:
        assert srv.stop() == 0
