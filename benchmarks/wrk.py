"""wrk as every benchmark here runs it: one thread pinned to a CPU, POSTing the JSON body in BODY with an optional
bearer key (serving/post.lua), parsed into rps, p50/p99 (ms), non-2xx, socket errors and the request count."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

POST_LUA = Path(__file__).resolve().parent / "serving" / "post.lua"


def run(
    url: str,
    body: Path,
    conns: int,
    seconds: int,
    key: str | None = None,
    cpu: str = "1",
    binary_header_length: int | None = None,
) -> dict:
    """BINARY_HEADER_LENGTH: BODY is an OIP binary-extension body whose JSON part is that long."""
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_KEY": key or ""}
    if binary_header_length is not None:
        env.update(WRK_CONTENT_TYPE="application/octet-stream", WRK_HEADER_LENGTH=str(binary_header_length))
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


# The router-vs-direct comparison the endpoint benchmarks share (Local Docker and Kubernetes).


def router_vs_direct(
    router: tuple[str, str | None],
    direct: tuple[str, str | None],
    body: Path,
    conns: int,
    rounds: int,
    seconds: int,
) -> dict:
    """One cell: a 2 s warm-up through the router, then ROUNDS alternating direct/router runs (so drift hits both
    alike); ROUTER and DIRECT are (url, bearer key). Medians of rps and p99, summed non-2xx, and the rps ratio."""
    run(router[0], body, conns, 2, router[1])
    rows: dict[str, list[dict]] = {"direct": [], "router": []}
    for _ in range(rounds):
        rows["direct"].append(run(direct[0], body, conns, seconds, direct[1]))
        rows["router"].append(run(router[0], body, conns, seconds, router[1]))
    cell: dict = {
        k: {
            "rps": statistics.median(r["rps"] for r in v),
            "p99_ms": statistics.median(r["p99_ms"] for r in v),
            "non2xx": sum(r["non2xx"] for r in v),
        }
        for k, v in rows.items()
    }
    cell["ratio_rps"] = cell["router"]["rps"] / cell["direct"]["rps"]
    return cell


def plot_router_vs_direct(ax: Any, cells: dict, direct_label: str, router_label: str) -> None:
    """Bars of direct and router rps per connection count, the router bar labelled with its ratio."""
    xs = range(len(cells))
    ax.bar([x - 0.2 for x in xs], [c["direct"]["rps"] for c in cells.values()], 0.4, label=direct_label)
    ax.bar([x + 0.2 for x in xs], [c["router"]["rps"] for c in cells.values()], 0.4, label=router_label)
    for x, c in zip(xs, cells.values(), strict=True):
        ax.text(x + 0.2, c["router"]["rps"], f"{c['ratio_rps']:.2f}×", ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"{k[1:]} connections" for k in cells])
    ax.set_ylabel("requests/s (/score, 1 row)")
    ax.legend(loc="lower right")


def router_vs_direct_table(cells: dict) -> list[str]:
    """The Markdown table of CELLS (goal: the router at 0.8 times the direct rps or more)."""
    lines = [
        "| connections | direct rps | router rps | ratio (goal ≥ 0.8×) | direct p99 | router p99 |",
        "|---|---|---|---|---|---|",
    ]
    for k, c in cells.items():
        lines.append(
            f"| {k[1:]} | {c['direct']['rps']:,.0f} | {c['router']['rps']:,.0f} | **{c['ratio_rps']:.2f}×** | "
            f"{c['direct']['p99_ms']:.2f} ms | {c['router']['p99_ms']:.2f} ms |"
        )
    return lines
