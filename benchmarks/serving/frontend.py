"""Would a native HTTP front end lift mlinfra past 3x the best peer? (issue 19: "if Python's HTTP stack is the
ceiling, say so with the numbers"). One run, side by side, on the reference MLP with one-row OIP v2 JSON requests at
1, 32 and 128 connections (server pinned to CPU 0, wrk to CPU 1, as bench.py):

- constant-aiohttp, constant-go: a constant reply from Python's HTTP stack (aiohttp + uvloop, as mlinfra) and from
  Go's net/http — the two ceilings;
- go-front+minimal: Go's net/http hands each request as a frame over a Unix socket to a Python process that only
  parses, runs ONNX Runtime and encodes (frontend_probe/: the floor of that architecture);
- go-front+dataplane: the same, with mlinfra's own data plane behind the socket (body parsing, validation, dynamic
  batching, admission, metrics, access log: everything the infer route does after HTTP);
- mlinfra as it serves today, and the peers that were best in RESULTS.md (MLServer, KServe, PyTriton).

    .venv/bin/python benchmarks/serving/frontend.py [--duration 6]   # writes FRONTEND.md and frontend.json
    .venv/bin/python benchmarks/serving/frontend.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench import free_port, servers, start_server, stop_server, wait_ready, workspace, wrk  # noqa: E402
from mlinfra.engine import cache_dir  # noqa: E402

PROBE = HERE / "frontend_probe"
PEERS = ("mlserver", "kserve", "pytriton")
CONNS = (1, 32, 128)


def probe_binary() -> Path:
    """frontend_probe/main.go, built into the cache (rebuilt when its source changes)."""
    import hashlib

    digest = hashlib.sha256((PROBE / "main.go").read_bytes() + (PROBE / "go.mod").read_bytes()).hexdigest()[
        :12
    ]
    out = cache_dir() / "bench-tools" / f"frontendprobe-{digest}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-trimpath", "-o", str(out), "."], cwd=PROBE, check=True)
    return out


def rows(model: Path, port: int, work: Path) -> dict[str, dict]:
    front = str(probe_binary())
    sock = str(work / "dataplane.sock")
    probe = [sys.executable, str(PROBE / "dataplane_socket.py"), "--model", str(model), "--socket", sock]
    probe += ["--front", front, "--port", str(port)]
    known = servers(model, port, work)
    dataplane = {
        "cmd": [*probe, "--mode", "dataplane"],
        "cwd": REPO,
        "pythonpath": str(REPO / "components" / "scoring"),
    }
    # The two rows compared run first and again last (the VM drifts within a run): their mean is reported.
    return {
        "mlinfra": known["mlinfra"],
        "go-front+dataplane": dataplane,
        "constant-aiohttp": known["constant-aiohttp"],
        "constant-go": {"cmd": [front, "-constant", "-listen", f"127.0.0.1:{port}"], "cwd": REPO},
        "go-front+minimal": {"cmd": [*probe, "--mode", "minimal"], "cwd": REPO},
        **{p: known[p] for p in PEERS},
        "go-front+dataplane (repeat)": dataplane,
        "mlinfra (repeat)": known["mlinfra"],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((HERE / "frontend.json").read_text())
        report(saved)
        return 0
    work, model, b1 = workspace("frontend")
    results: dict[str, dict] = {}
    port = free_port()
    for name in rows(model, port, work):
        spec = rows(model, port, work)[name]
        if not Path(spec["cmd"][0]).exists():
            results[name] = {"error": f"not installed ({spec['cmd'][0]}): run setup_peers.sh"}
            continue
        proc, log = start_server(name, spec, port, work)
        try:
            wait_ready(port, b1.read_bytes(), proc)
            wrk(port, b1, 32, 2)  # warm-up
            results[name] = {f"c{c}": wrk(port, b1, c, args.duration) for c in CONNS}
            print(name, {k: round(v["rps"]) for k, v in results[name].items()}, flush=True)
        except Exception as e:
            tail = (work / f"{name}.log").read_text(errors="replace")[-400:]
            results[name] = {"error": f"{type(e).__name__}: {e}; log tail: {tail}"}
            print(name, "FAILED:", results[name]["error"], flush=True)
        finally:
            stop_server(proc, log)
            port = free_port()
    saved = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} — {os.cpu_count()} cores ({platform.machine()})",
        "duration_s": args.duration,
        "results": results,
    }
    (HERE / "frontend.json").write_text(json.dumps(saved, indent=1) + "\n")
    report(saved)
    return 0


def report(saved: dict) -> None:
    res = saved["results"]
    best = {}
    for c in CONNS:
        peers = [(res[p][f"c{c}"]["rps"], p) for p in PEERS if "error" not in res.get(p, {"error": 1})]
        best[c] = max(peers) if peers else (float("nan"), "none")
    lines = [
        "# Would a native HTTP front end lift mlinfra past 3x the best peer?",
        "",
        f"Measured {saved['date']} on {saved['machine']}; server pinned to CPU 0, wrk (1 thread) to CPU 1, "
        f"{saved['duration_s']} s per cell, one-row OIP v2 JSON requests (frontend.py). Machines are shared and "
        "noisy: read the ratios.",
        "",
        "| server | " + " | ".join(f"rps c={c} | × best peer" for c in CONNS) + " | p99 ms c=128 |",
        "|---|" + "---|---|" * len(CONNS) + "---|",
    ]
    for name, r in res.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error'][:80]} |" + " |" * (2 * len(CONNS)))
            continue
        cells = []
        for c in CONNS:
            rps = r[f"c{c}"]["rps"]
            cells += [f"{rps:,.0f}", f"{rps / best[c][0]:.2f}×"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['c128']['p99_ms']:.1f} |")
    lines += ["", "Best peer: " + ", ".join(f"c={c} {best[c][1]} {best[c][0]:,.0f} rps" for c in CONNS) + "."]

    def mean(name: str, c: int) -> float:
        runs = [
            res[n][f"c{c}"]["rps"]
            for n in (name, f"{name} (repeat)")
            if "error" not in res.get(n, {"error": 1})
        ]
        return sum(runs) / len(runs) if runs else float("nan")

    lines += [
        "",
        "Today's server against the same data plane behind Go's HTTP (each the mean of its two runs, first and last):",
        "",
        "| connections | mlinfra | go-front+dataplane | front end / today | mlinfra × best peer | "
        "go-front+dataplane × best peer |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONNS:
        a, b = mean("mlinfra", c), mean("go-front+dataplane", c)
        lines.append(
            f"| {c} | {a:,.0f} | {b:,.0f} | {b / a:.2f}× | {a / best[c][0]:.2f}× | {b / best[c][0]:.2f}× |"
        )
    notes = HERE / "frontend_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    (HERE / "FRONTEND.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
