"""wrk as every benchmark here runs it: one thread pinned to a CPU, POSTing the JSON body in BODY with an optional
bearer key (serving/post.lua), parsed into rps, p50/p99 (ms), non-2xx, socket errors and the request count."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

POST_LUA = Path(__file__).resolve().parent / "serving" / "post.lua"


def run(url: str, body: Path, conns: int, seconds: int, key: str | None = None, cpu: str = "1") -> dict:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_KEY": key or ""}
    out = subprocess.run(
        [
            "taskset",
            "-c",
            cpu,
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(POST_LUA),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    ).stdout

    def lat(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    total = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    return {
        "rps": rps,
        "p50_ms": lat("50"),
        "p99_ms": lat("99"),
        "non2xx": non2xx,
        "socket_errors": errors,
        "requests": total,
    }
