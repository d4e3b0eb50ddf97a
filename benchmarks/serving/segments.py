"""Where a request's time goes, segment by segment, at one connection and at 32 (issue 19: why one connection stays
below 3x the best peer).

Two measurements in one run, each rep in alternating order (the VM drifts within minutes):

- **Segments.** The scoring server (defaults but ``--no-direct-path``: this measures the aiohttp path, which the
  direct path of mlinfra_scoring/direct.py bypasses; the reference MLP, one-row OIP v2 JSON, pinned to CPU 0; wrk on CPU 1)
  runs with a timer around each step of the hot path (`--serve` mode below wraps the functions, then starts the
  server as `mlinfra serve` does): wall time per call, awaits included, so a parent includes its children. The
  wrappers cost ≈ 0.3 µs each; their figures are the server's under its own timers.
- **CPU per request, user and system**, at one connection: mlinfra (uninstrumented) beside a constant-reply aiohttp
  server (the same HTTP stack, no work): what the request's own work costs on top of Python's HTTP.

    .venv/bin/python benchmarks/serving/segments.py [--reps 3] [--duration 5]   # SEGMENTS.md, segments.json, .png
    .venv/bin/python benchmarks/serving/segments.py --report
"""

from __future__ import annotations

import atexit
import collections
import functools
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import rep_args, run_meta  # noqa: E402
from benchmarks.serving.bench import (  # noqa: E402
    free_port,
    mlinfra_command,
    servers,
    start_server,
    stop_server,
    wait_ready,
    workspace,
    wrk,
)
from benchmarks.serving.busypoll import group_cpu  # noqa: E402

CONNS = (1, 32)

# (label, depth, module, owner attribute path): the wrapped steps, in the order of a request; depth: nesting.
# BATCH_WAIT: the steps whose time at 32 connections includes waiting for the batch a request joins.
BATCH_WAIT = {"handle the request (aiohttp)", "middleware: auth, admission, metrics, log", "infer handler",
              "data plane: validate, run, encode"}  # fmt: skip
SEGMENTS = (
    ("read and parse the request (aiohttp)", 0, "mlinfra_scoring.server", "_Guard.data_received"),
    ("handle the request (aiohttp)", 0, "aiohttp.web_protocol", "RequestHandler._handle_request"),
    ("middleware: auth, admission, metrics, log", 1, "mlinfra_scoring.server", "ScoringServer.middleware"),
    ("infer handler", 2, "mlinfra_scoring.server", "ScoringServer.infer"),
    ("read the body", 3, "mlinfra_scoring.server", "ScoringServer._raw_body"),
    ("parse the JSON", 3, "mlinfra_scoring.jsonbody", "loads"),
    ("data plane: validate, run, encode", 3, "mlinfra_scoring.dataplane", "DataPlane.infer"),
    ("decode and check the input", 4, "mlinfra_scoring.dataplane", "decode_input"),
    ("run the model (ONNX Runtime)", 4, "mlinfra_scoring.models", "LoadedModel.run"),
    ("encode the output", 4, "mlinfra_scoring.dataplane", "encode_output"),
    ("access-log line", 2, "mlinfra_scoring.server", "ScoringServer.access_log"),
    ("write the response (aiohttp)", 1, "aiohttp.web_protocol", "RequestHandler.finish_response"),
)


def _instrument(out: Path) -> None:
    """Wrap every step of SEGMENTS with a timer; at exit, write {label: [calls, total ns]} to OUT."""
    import importlib

    totals: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for label, _depth, module, path in SEGMENTS:
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        f = getattr(owner, name)

        def timed(f: Any, label: str) -> Any:
            if inspect.iscoroutinefunction(f):

                @functools.wraps(f)
                async def wrapper(*a: Any, **k: Any) -> Any:
                    t = time.perf_counter_ns()
                    try:
                        return await f(*a, **k)
                    finally:
                        totals[label] += time.perf_counter_ns() - t
                        calls[label] += 1

                return wrapper

            @functools.wraps(f)
            def sync_wrapper(*a: Any, **k: Any) -> Any:
                t = time.perf_counter_ns()
                try:
                    return f(*a, **k)
                finally:
                    totals[label] += time.perf_counter_ns() - t
                    calls[label] += 1

            return sync_wrapper

        if isinstance(inspect.getattr_static(owner, name), staticmethod):
            setattr(owner, name, staticmethod(timed(f, label)))
        else:
            setattr(owner, name, timed(f, label))

    def dump() -> None:
        out.write_text(json.dumps({k: [calls[k], totals[k]] for k in totals}))

    atexit.register(dump)


def serve(argv: list[str]) -> int:
    """The scoring server with its steps timed (SEGMENTS_OUT: where the figures go at exit)."""
    _instrument(Path(os.environ["SEGMENTS_OUT"]))
    from mlinfra_scoring import cli

    return cli.main(argv)


def main() -> int:
    args, saved = rep_args(HERE / "segments.json", 3)
    if saved is not None:
        report(saved)
        return 0
    work, model, b1 = workspace("segments")
    seg: dict[str, list[dict[str, list[int]]]] = {f"c{c}": [] for c in CONNS}
    rps: dict[str, list[float]] = {f"c{c}": [] for c in CONNS}
    cpu: dict[str, list[dict[str, float]]] = {"mlinfra": [], "constant-aiohttp": []}
    runs = ["timed", "mlinfra", "constant-aiohttp"]
    for rep in range(args.reps):
        for run in runs[:: 1 if rep % 2 == 0 else -1]:
            port = free_port()
            if run == "timed":
                for c in CONNS:
                    out = work / f"segments-{rep}-c{c}.json"
                    # The aiohttp path, whose steps these are (the direct path, the default since 2026-12-03, skips most).
                    cmd = [
                        sys.executable,
                        __file__,
                        "--serve",
                        *mlinfra_command(model, port)[3:],
                        "--no-direct-path",
                    ]
                    spec = {"cmd": cmd, "cwd": REPO}
                    proc, log = start_server(
                        "timed", spec, port, work, extra_env={"SEGMENTS_OUT": str(out), "PYTHONPATH": str(REPO / "components" / "scoring")}
                    )  # fmt: skip
                    try:
                        wait_ready(port, b1.read_bytes(), proc)
                        wrk(port, b1, c, 1)  # warm-up (its requests are counted too: a second's worth)
                        r = wrk(port, b1, c, args.duration)
                    finally:
                        stop_server(proc, log)
                    seg[f"c{c}"].append(json.loads(out.read_text()))
                    rps[f"c{c}"].append(r["rps"])
                    print(f"rep {rep} timed c={c:<3d} {r['rps']:8.0f} rps", flush=True)
                continue
            proc, log = start_server(run, servers(model, port, work)[run], port, work)
            try:
                wait_ready(port, b1.read_bytes(), proc)
                wrk(port, b1, 1, 1)
                u0, s0 = group_cpu(proc.pid)
                r = wrk(port, b1, 1, args.duration)
                u1, s1 = group_cpu(proc.pid)
            finally:
                stop_server(proc, log)
            n = r["rps"] * args.duration
            cell = {"rps": r["rps"], "user_us": (u1 - u0) / n * 1e6, "sys_us": (s1 - s0) / n * 1e6}
            cpu[run].append(cell)
            print(f"rep {rep} {run:17s} c=1   {r['rps']:8.0f} rps  user {cell['user_us']:5.0f} µs  sys {cell['sys_us']:5.0f} µs",
                  flush=True)  # fmt: skip
    saved = {**run_meta(args.reps), "duration_s": args.duration, "segments": seg, "rps": rps, "cpu": cpu}
    (HERE / "segments.json").write_text(json.dumps(saved, indent=1) + "\n")
    report(saved)
    return 0


def _means(reps: list[dict[str, list[int]]]) -> dict[str, float]:
    """Each segment's mean µs per call, the median over the reps."""
    return {
        label: statistics.median(r[label][1] / r[label][0] / 1000 for r in reps if r.get(label, [0])[0])
        for label, *_ in SEGMENTS
        if any(r.get(label, [0])[0] for r in reps)
    }


def report(saved: dict) -> None:
    means = {c: _means(saved["segments"][c]) for c in saved["segments"]}
    rps = {c: statistics.median(v) for c, v in saved["rps"].items()}
    cpu = {
        k: {f: statistics.median(c[f] for c in v) for f in ("rps", "user_us", "sys_us")}
        for k, v in saved["cpu"].items()
    }
    lines = [
        "# Where a request's time goes (issue 19)",
        "",
        f"Measured {saved['date']} on {saved['machine']}; `benchmarks/serving/segments.py`, {saved['reps']} reps of "
        f"{saved['duration_s']} s per cell, in alternating order; medians over the reps. One-row OIP v2 JSON, the reference MLP, server "
        "pinned to CPU 0, wrk to CPU 1. Machines are shared and noisy: read the ratios.",
        "",
        "## Segments: wall µs per call (a parent includes the steps under it)",
        "",
        "The aiohttp path (`--no-direct-path`): the steps the direct path (mlinfra_scoring/direct.py, the default since",
        "2026-12-03) skips or shares. Under its timers the server answered "
        f"{rps['c1']:,.0f} requests/s at one connection and {rps['c32']:,.0f} at 32.",
        "",
        "| step | c=1 µs | c=32 µs | c=1 / c=32 |",
        "|---|---|---|---|",
    ]
    for label, depth, *_ in SEGMENTS:
        a, b = means["c1"].get(label), means["c32"].get(label)
        if a is None or b is None:
            continue
        name = f"{'&nbsp;' * 4 * depth}{label}"
        if label in BATCH_WAIT:
            lines.append(f"| {name} | {a:.1f} | (batch wait) | |")
        else:
            lines.append(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    m, k = cpu["mlinfra"], cpu["constant-aiohttp"]
    lines += [
        "",
        "At 32 connections the steps around the model's run include the wait for the batch a request joins (dynamic",
        "batching), so only the steps without it compare; at one connection a request runs alone, at once. The model's",
        "run at 32 connections is a batch's (several rows).",
        "",
        "## CPU per request at one connection (user and system time of the server's processes / requests)",
        "",
        "Before the direct path (2026-12-03 16:46, the aiohttp path): mlinfra 219 µs (179 user, 40 system), the",
        "constant aiohttp reply 84 µs.",
        "",
        "| server | rps | user µs | system µs |",
        "|---|---|---|---|",
        f"| mlinfra (defaults: the direct path) | {m['rps']:,.0f} | {m['user_us']:.0f} | {m['sys_us']:.0f} |",
        f"| constant-aiohttp | {k['rps']:,.0f} | {k['user_us']:.0f} | {k['sys_us']:.0f} |",
        "",
        "![wall µs per request by step, one connection and 32](segments.png)",
        "",
    ]
    (HERE / "SEGMENTS.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(means, cpu)


def _own(means: dict[str, float]) -> dict[str, float]:
    """Each step's time without the steps under it (what the stacked bars show)."""
    own = dict(means)
    for i, (label, depth, *_) in enumerate(SEGMENTS):
        for child, child_depth, *_ in SEGMENTS[i + 1 :]:
            if child_depth <= depth:
                break
            if child_depth == depth + 1 and label in own:
                own[label] -= means.get(child, 0.0)
    return own


def plot(means: dict[str, dict[str, float]], cpu: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 4.2), gridspec_kw={"height_ratios": [1, 2]})
    colors = plt.get_cmap("tab20").colors
    own = _own(means["c1"])
    left = 0.0
    for i, (label, *_) in enumerate(SEGMENTS):
        w = max(own.get(label, 0.0), 0.0)
        ax.barh(0, w, left=left, color=colors[i % len(colors)], label=label)
        left += w
    ax.set_yticks([0], ["mlinfra"])
    ax.set_xlabel("wall µs per request at one connection, by step (own time)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    names = list(cpu)
    user = [cpu[n]["user_us"] for n in names]
    system = [cpu[n]["sys_us"] for n in names]
    bx.barh(names, user, color="#4c72b0", label="user")
    bx.barh(names, system, left=user, color="#dd8452", label="system")
    bx.set_xlabel("CPU µs per request at one connection")
    bx.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(HERE / "segments.png", dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
