"""Serving benchmark by protocol: OIP v2 REST with JSON, REST with binary tensors (Triton's and KServe's extension)
and gRPC (``inference.GRPCInferenceService/ModelInfer`` with raw contents), side by side in one run, mlinfra against
the peers' front ends that speak them: KServe, MLServer and PyTriton (each in its own venv: setup_peers.sh).

The server is pinned to CPU 0, the load generator to CPU 1: wrk (one thread) for REST, ghz (Go, built from the Go
module proxy into the cache on first use) for gRPC, 32 concurrent requests, one row of the reference MLP per
request. A server that refuses a workload (no binary extension, say) is reported as such.

    .venv/bin/python benchmarks/serving/protocols.py [--duration 8] [--only mlinfra,kserve]
    .venv/bin/python benchmarks/serving/protocols.py --report     # re-render PROTOCOLS.md from protocols.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench import free_port, servers, start_server, stop_server, wait_ready  # noqa: E402
from benchmarks.wrk import run as wrk_run  # noqa: E402
from mlinfra.engine import cache_dir  # noqa: E402
from mlinfra.images import grpcfront  # noqa: E402
from mlinfra.lab.samples import write_mlp  # noqa: E402

PROTO = REPO / "components" / "scoring" / "mlinfra_scoring" / "oip" / "oip.proto"
GHZ_VERSION = "v0.121.0"
GHZ = cache_dir() / "bench-tools" / f"ghz-{GHZ_VERSION}" / "ghz"
CONNS = 32
PEERS = ("mlinfra", "mlinfra-grpcio", "kserve", "mlserver", "pytriton")
OURS = ("mlinfra", "mlinfra-grpcio")
"""Not peers: mlinfra (gRPC through its native front end, mlinfra-grpcfront, as images serve it), and the same
server with its in-process grpcio service (`--grpc-frontend grpcio`; gRPC only: its REST is the row above's)."""
WORKLOADS = ("rest-json", "rest-binary", "grpc", "rest-json-64", "rest-binary-64")
ROWS = {"rest-json-64": 64, "rest-binary-64": 64}
"""Rows per request where not one: those workloads are reported in rows/s (requests/s × rows)."""


def ghz_binary() -> Path:
    """ghz, built once from the Go module proxy into the cache (no binary downloads here)."""
    if not GHZ.exists():
        GHZ.parent.mkdir(parents=True, exist_ok=True)
        print(f"building ghz {GHZ_VERSION} (go install)…", flush=True)
        subprocess.run(
            ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            env={**os.environ, "GOBIN": str(GHZ.parent)},
            check=True,
        )
    return GHZ


def row(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)


def bodies(work: Path) -> dict[str, tuple[Path, int | None]]:
    """Each REST workload's body file and, for the binary ones, the length of its JSON part."""
    out: dict[str, tuple[Path, int | None]] = {}
    for rows, suffix in ((1, ""), (64, "-64")):
        x = row(rows)
        json_body = {
            "id": "bench",
            "inputs": [
                {"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ],
        }
        head = json.dumps(
            {
                "id": "bench",
                "inputs": [
                    {
                        "name": "input",
                        "shape": [rows, 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},  # as tritonclient asks by default
            }
        ).encode()
        (work / f"json{suffix}.body").write_bytes(json.dumps(json_body).encode())
        (work / f"binary{suffix}.body").write_bytes(head + x.tobytes())
        out[f"rest-json{suffix}"] = (work / f"json{suffix}.body", None)
        out[f"rest-binary{suffix}"] = (work / f"binary{suffix}.body", len(head))
    x = row()
    grpc = {
        "model_name": "mlp",
        "id": "bench",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}],
        "raw_input_contents": [base64.b64encode(x.tobytes()).decode()],
    }
    (work / "grpc.json").write_text(json.dumps(grpc))
    return out


def ghz(port: int, data: Path, seconds: int) -> dict:
    out = subprocess.run(
        [
            "taskset", "-c", "1", str(ghz_binary()), "--insecure", "--proto", str(PROTO),
            "--call", "inference.GRPCInferenceService.ModelInfer", "--data-file", str(data),
            "--concurrency", str(CONNS), "--connections", "1", "--duration", f"{seconds}s", "--cpus", "1",
            "--format", "json", f"127.0.0.1:{port}",
        ],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    r = json.loads(out.stdout)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
    # ghz stops at the deadline by closing its connection under the calls in flight (at most CONNS): those end
    # "Unavailable … closed network connection" / "client connection is closing" and are not the server's errors.
    ending = ("use of closed network connection", "client connection is closing", "context canceled")
    kinds = r.get("errorDistribution") or {}
    cut = sum(n for k, n in kinds.items() if any(e in k for e in ending))
    return {
        "rps": r["rps"],
        "p50_ms": lat.get(50, float("nan")),
        "p99_ms": lat.get(99, float("nan")),
        "errors": sum(n for k, n in kinds.items() if not any(e in k for e in ending)),
        "cut_at_end": cut,
        "error_kinds": sorted(k for k in kinds if not any(e in k for e in ending))[:3],
        "requests": r["count"],
    }


def check_rest(port: int, body: Path, header_length: int | None) -> str | None:
    """None when the server answers the workload with 200, else why not (it is then not measured)."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/mlp/infer", data=body.read_bytes(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:160].decode(errors='replace')}"
    except OSError as e:
        return str(e)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--only", default="")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((HERE / "protocols.json").read_text())
        report(saved["results"], saved["duration"], saved["date"], saved["machine"])
        return 0
    ghz_binary()
    front = grpcfront.binary(print)
    if front is None:
        raise SystemExit("mlinfra-grpcfront could not be built (no Go?): run make setup")
    work = Path(tempfile.mkdtemp(prefix="mlinfra-bench-protocols-"))
    model = write_mlp(work / "mlp.onnx")
    os.environ["BENCH_MODEL"] = str(model)
    rest = bodies(work)
    only = set(filter(None, args.only.split(",")))
    results: dict[str, dict] = {}
    for name in PEERS:
        if only and name not in only:
            continue
        port = free_port()
        while port + 2 > 65535:
            port = free_port()
        spec = servers(model, port, work)["mlinfra" if name in OURS else name]
        if not Path(spec["cmd"][0]).exists():
            results[name] = {
                "error": f"not installed ({spec['cmd'][0]}): run benchmarks/serving/setup_peers.sh"
            }
            continue
        grpc_args = (  # the peers read BENCH_GRPC
            ("--grpc-port", str(port + 1), "--grpc-frontend", str(front) if name == "mlinfra" else "grpcio")
            if name in OURS
            else ()
        )
        proc, log = start_server(name, spec, port, work, {"BENCH_GRPC": "1"}, grpc_args)
        r: dict = {}
        try:
            wait_ready(port, rest["rest-json"][0].read_bytes(), proc)
            for workload, (body, header_length) in rest.items():
                if name == "mlinfra-grpcio":  # its REST is mlinfra's, measured in the row above
                    break
                why = check_rest(port, body, header_length)
                if why is not None:
                    r[workload] = {"error": why}
                    continue
                wrk_run(
                    f"http://127.0.0.1:{port}/v2/models/mlp/infer",
                    body,
                    CONNS,
                    2,
                    binary_header_length=header_length,
                )
                r[workload] = wrk_run(
                    f"http://127.0.0.1:{port}/v2/models/mlp/infer", body, CONNS, args.duration,
                    binary_header_length=header_length,
                )  # fmt: skip
            ghz(port + 1, work / "grpc.json", 2)  # warm-up
            r["grpc"] = ghz(port + 1, work / "grpc.json", args.duration)
        except Exception as e:
            r["error"] = (
                f"{type(e).__name__}: {e}; log: " + (work / f"{name}.log").read_text(errors="replace")[-300:]
            )
        finally:
            stop_server(proc, log)
        results[name] = r
        print(name, json.dumps(r), flush=True)
    date = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    machine = f"{platform.node()} — {os.cpu_count()} cores ({platform.machine()})"
    (HERE / "protocols.json").write_text(
        json.dumps(
            {"date": date, "machine": machine, "duration": args.duration, "results": results}, indent=1
        )
    )
    report(results, args.duration, date, machine)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _cell(r: dict | None, rows: int = 1) -> tuple[str, str]:
    if not r:
        return "—", ""
    if "error" in r:
        return "refused", ""
    bad = r.get("errors", 0) + r.get("non2xx", 0) + r.get("socket_errors", 0)
    return f"{r['rps'] * rows:,.0f}" + (f" ({bad} errors)" if bad else ""), f"{r['p99_ms']:.1f}"


def report(results: dict[str, dict], duration: int, date: str, machine: str) -> None:
    lines = [
        "# Serving benchmark by protocol",
        "",
        f"Measured {date} on {machine}; server pinned to CPU 0, load generator to CPU 1 (wrk 1 thread for REST, "
        f"ghz {GHZ_VERSION} for gRPC over one HTTP/2 connection), {CONNS} concurrent requests, {duration} s per "
        "cell, one row of the reference MLP (64→256→10) per request (64 rows where the column says so). Machines are "
        "shared and noisy: read the "
        "ratios. Reproduce: `.venv/bin/python benchmarks/serving/protocols.py` (peers: `setup_peers.sh`).",
        "",
        "| server | REST JSON rps | p99 ms | REST binary rps | p99 ms | gRPC rps | p99 ms | REST JSON 64 rows: "
        "rows/s | p99 ms | REST binary 64 rows: rows/s | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r and not any(w in r for w in WORKLOADS):
            lines.append(f"| {name} | {r['error'][:80]} |" + " |" * (2 * len(WORKLOADS) - 1))
            continue
        cells = [c for w in WORKLOADS for c in _cell(r.get(w), ROWS.get(w, 1))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for ours, w in [("mlinfra", w) for w in WORKLOADS] + [("mlinfra-grpcio", "grpc")]:
        mine = results.get(ours, {}).get(w)
        peers = {
            n: r[w]
            for n, r in results.items()
            if n not in OURS and isinstance(r.get(w), dict) and "rps" in r[w]
        }
        if not mine or "rps" not in mine or not peers:
            continue
        best = max(peers, key=lambda n: peers[n]["rps"])
        ratio = mine["rps"] / peers[best]["rps"]
        rows, unit = ROWS.get(w, 1), "rows/s" if w in ROWS else "rps"
        lines.append(
            f"- {w}: {ours} {mine['rps'] * rows:,.0f} {unit} vs the best peer {best} "
            f"{peers[best]['rps'] * rows:,.0f} → "
            f"**{ratio:.2f}×** (goal ≥ 3×: {'met' if ratio >= 3 else 'missed'}); p99 {mine['p99_ms']:.1f} ms vs "
            f"{peers[best]['p99_ms']:.1f} ms."
        )
    refused = [f"{n} ({w}: {r[w]['error'][:100]})" for n, r in results.items() for w in WORKLOADS
               if isinstance(r.get(w), dict) and "error" in r[w]]  # fmt: skip
    if refused:
        lines += ["", "Refused workloads (not measured): " + "; ".join(refused) + "."]
    lines += ["", "![requests/s by protocol](protocols.png)", "", NOTES]
    (HERE / "PROTOCOLS.md").write_text("\n".join(lines))
    plot(results)


NOTES = """Notes:
- Every server wraps the same ONNX session (1 intra-op thread); mlinfra runs with its defaults (dynamic batching on
  for this model, the direct path for REST inference requests — mlinfra_scoring/direct.py, since 2026-12-03 —,
  access log and metrics on) plus `--grpc-port`; PyTriton with Triton's dynamic batcher. Each peer's gRPC front
  end: KServe's and MLServer's are grpcio's asyncio server in Python; PyTriton's is Triton's C++ server, which calls
  the Python model over IPC.
- **gRPC goes through mlinfra's native front end** (mlinfra-grpcfront, components/grpcfront: grpc-go), as images
  serve it: it merges concurrent ModelInfer calls into one call to the Python data plane (Triton's design: its
  dynamic batcher sits in its C++ front end) and runs on the server's core beside it. mlinfra-grpcio is the same
  server with its in-process grpcio service (`--grpc-frontend grpcio`): Python's gRPC stack bounds it. A constant
  ModelInferResponse, with nothing else to do, reached 2,985-3,239 calls/s on grpcio's asyncio server and
  3,022-4,342 on grpclib at ≈ 95 % of the core (2026-12-03, same harness): under 3× any peer that does real work.
  Merging is what makes the difference: a first version that forwarded each call as its own REST call (measured
  2026-12-03 09:05) reached 3,352 calls/s, 1.65× PyTriton in that run.
- **JSON numbers are the 64-row ceiling.** Bodies of 4 KiB or more are parsed by simdjson, which copies a
  tensor's numbers straight into an array (JSONBODY.md: 1.39× the 64-row rows/s of the orjson path), with one
  parser per thread reused since 2026-12-03 (a new one sized its buffers for every body: ≈ 237 → 180 µs a 64-row
  request in process). What is left is the numbers' text itself: parsing it is ≈ a quarter of the server's time on
  that workload (profile-direct-64.md). It is the thinnest cell against MLServer, whose 64-row rate moves the most
  between runs (46k-82k rows/s over the day; 82k here, its best): 3.14× here, 2.32× in the same benchmark at
  19:01 and 3.06-4.49× in RESULTS.md's runs with the same code. The binary extension skips the text: 2.6× the
  rows/s of JSON here.
- **One-row REST JSON**: 6.0× here, 5.9× at 19:01; 1.85× in the 09:31 run, before the direct path took aiohttp's request
  machinery out of the hot path (DIRECT.md: 1.66× at 32 connections in an A/B); PyTriton answered 1,961-2,842
  requests/s at 32 connections over the day's runs.
- The machine varies within minutes (the ONNX Runtime floor measured 79k-126k calls/s on the same day): compare
  within one run only.
"""


def plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.25
    for i, w in enumerate(
        w for w in WORKLOADS if w not in ROWS
    ):  # one-row workloads: 64-row ones are in rows/s
        vals = [
            results[n][w]["rps"] if isinstance(results[n].get(w), dict) and "rps" in results[n][w] else 0
            for n in names
        ]
        ax.bar([x + (i - 1) * width for x in range(len(names))], vals, width, label=w)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"requests/s at c={CONNS}")
    ax.set_title("OIP v2 by protocol (one-row MLP)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "protocols.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
