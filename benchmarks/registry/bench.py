"""Registry benchmarks, side by side in one run (issue 3).

1. Register a 1 GiB file in Azurite: mlinfra (`ModelRegistry.register`, framework custom, cold hash cache) vs the
   raw path (sha256 of the file, then `BlobClient.upload_blob(max_concurrency=4)` to the same Azurite). Each in a
   fresh subprocess so peak RSS is its own; alternated, median of N. Goal: ratio ≤ 1.2.
2. Peak RSS while registering a 2 GiB file (goal: grows < 100 MB over the process's baseline).
3. No-op `pulumi preview` of a stack with 20 RegisteredModels (2 GiB total) vs the same stack of 20 plain dynamic
   resources, after an `up` of each. Goal: ≤ +5 s.

Usage: .venv/bin/python benchmarks/registry/bench.py [--reps 3] [--out benchmarks/registry/RESULTS.md]
Needs `make setup services` (Azurite). Writes figures with the date and machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlinfra.lab import services  # noqa: E402

CHILD_MLINFRA = r"""
import os, resource, sys, time, json
sys.path.insert(0, {repo!r})
from mlinfra.registry import ModelRegistry
from mlinfra.lab import services  # noqa: E402
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reg = ModelRegistry("azblob://devstoreaccount1/{container}?endpoint=" + services.azurite_blob_url(), services.AZURITE_KEY)
reg.store.check()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
mv, created = reg.register("{name}", {path!r}, framework="custom")
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "base_kb": base, "created": created}}))
"""

CHILD_RAW = r"""
import hashlib, os, resource, sys, time, json
sys.path.insert(0, {repo!r})
from azure.storage.blob import BlobServiceClient
from mlinfra.lab import services  # noqa: E402
svc = BlobServiceClient.from_connection_string(services.azurite_connection_string())
cc = svc.get_container_client("{container}")
try:
    cc.create_container()
except Exception:
    pass
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
h = hashlib.sha256()
with open({path!r}, "rb") as f:
    while chunk := f.read(4 << 20):
        h.update(chunk)
with open({path!r}, "rb") as f:
    cc.get_blob_client("raw/" + h.hexdigest()).upload_blob(f, overwrite=True, max_concurrency=4)
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "base_kb": base}}))
"""


def make_file(path: Path, size: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n


def run_child(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_upload(work: Path, reps: int) -> dict:
    f1 = work / "model-1g.bin"
    make_file(f1, 1 << 30, 1)
    results: dict[str, list[dict]] = {"mlinfra": [], "raw": []}
    for i in range(reps):
        for kind in ("mlinfra", "raw"):
            container = f"bench{kind}{i}{os.getpid()}"
            env = {**os.environ, "MLINFRA_CACHE": str(work / f"cache-{kind}-{i}")}  # cold hash cache
            tmpl = CHILD_MLINFRA if kind == "mlinfra" else CHILD_RAW
            r = run_child(tmpl.format(repo=str(REPO), container=container, name="big", path=str(f1)), env)
            results[kind].append(r)
            print(
                f"  1 GiB {kind:8s} rep {i + 1}: {r['seconds']:.2f} s, peak RSS {r['peak_kb'] / 1024:.0f} MiB",
                flush=True,
            )
            _drop_container(container)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    return {
        "median_s": med,
        "ratio": med["mlinfra"] / med["raw"],
        "peak_rss_mib": {k: max(r["peak_kb"] for r in v) / 1024 for k, v in results.items()},
        "runs": results,
    }


def bench_rss_2g(work: Path) -> dict:
    f2 = work / "model-2g.bin"
    make_file(f2, 2 << 30, 2)
    container = f"benchrss{os.getpid()}"
    env = {**os.environ, "MLINFRA_CACHE": str(work / "cache-rss")}
    r = run_child(CHILD_MLINFRA.format(repo=str(REPO), container=container, name="big2g", path=str(f2)), env)
    _drop_container(container)
    f2.unlink()
    return {
        "seconds": r["seconds"],
        "baseline_mib": r["base_kb"] / 1024,
        "peak_mib": r["peak_kb"] / 1024,
        "growth_mib": (r["peak_kb"] - r["base_kb"]) / 1024,
    }


def _drop_container(name: str) -> None:
    from azure.storage.blob import BlobServiceClient

    with contextlib.suppress(Exception):
        BlobServiceClient.from_connection_string(services.azurite_connection_string()).delete_container(name)


PLAIN_PROGRAM = """
import pulumi
from pulumi.dynamic import CreateResult, ResourceProvider, Resource

class P(ResourceProvider):
    def create(self, props):
        return CreateResult(id_=props["name"], outs=props)

class R(Resource):
    def __init__(self, name, props):
        super().__init__(P(), name, props)

for i in range(20):
    R(f"plain-{i}", {"name": f"plain-{i}", "path": f"/models/m{i}.bin", "sha256": "0" * 64})
"""

MODELS_PROGRAM = """
import pulumi, mlinfra
for i in range(20):
    mlinfra.RegisteredModel(f"m{{i}}", mlinfra.RegisteredModelArgs(path=f"{models}/m{{i}}.bin", framework="custom",
                            registry="file://{registry}"))
"""


def bench_preview(work: Path, reps: int) -> dict:
    from mlinfra.automation import local_stack

    models = work / "models20"
    models.mkdir()
    for i in range(20):
        make_file(models / f"m{i}.bin", 100 << 20, 100 + i)
    out: dict[str, list[float]] = {"models": [], "plain": []}
    stacks = {}
    for kind, src in (
        ("models", MODELS_PROGRAM.format(models=models, registry=work / "registry")),
        ("plain", PLAIN_PROGRAM),
    ):
        d = work / f"prog-{kind}"
        d.mkdir()
        (d / "Pulumi.yaml").write_text(f"name: bench-{kind}\nruntime: python\n")
        (d / "__main__.py").write_text(src)
        st = local_stack(d, "bench", backend_dir=work / f"state-{kind}")
        t = time.perf_counter()
        st.up()
        print(f"  up {kind}: {time.perf_counter() - t:.1f} s", flush=True)
        stacks[kind] = st
    for i in range(reps):
        for kind, st in stacks.items():
            t = time.perf_counter()
            res = st.preview()
            dt = time.perf_counter() - t
            assert set(res.change_summary) == {"same"}, res.change_summary
            out[kind].append(dt)
            print(f"  no-op preview {kind:6s} rep {i + 1}: {dt:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"median_s": med, "delta_s": med["models"] - med["plain"], "runs": out}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    services.ensure(["azurite"], progress=lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="mlinfra-bench-registry-"))
    try:
        print("1 GiB registration, mlinfra vs raw (alternating)")
        up = bench_upload(work, args.reps)
        print("2 GiB registration, peak RSS")
        rss = bench_rss_2g(work)
        print("no-op preview, 20 models (2 GiB) vs 20 plain dynamic resources")
        pv = bench_preview(work, args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.node()} — {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "upload_1g": up,
        "rss_2g": rss,
        "preview_20": pv,
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(data, indent=1))
    Path(args.out).write_text(f"""# Registry benchmark results

Measured {data["date"]} on {machine} (shared, noisy: read the ratios). Script: `bench.py`, {args.reps} alternating
repetitions, medians. Azurite {services.azurite_blob_url()} on the same machine.

| measure | mlinfra | peer | ratio / delta | goal |
|---|---|---|---|---|
| register 1 GiB in Azurite (s) | {up["median_s"]["mlinfra"]:.2f} | raw sha256 + upload_blob(max_concurrency=4): {up["median_s"]["raw"]:.2f} | **{up["ratio"]:.2f}×** | ≤ 1.2× |
| peak RSS during 1 GiB (MiB) | {up["peak_rss_mib"]["mlinfra"]:.0f} | {up["peak_rss_mib"]["raw"]:.0f} | | |
| register 2 GiB: RSS growth over baseline (MiB) | {rss["growth_mib"]:.0f} (baseline {rss["baseline_mib"]:.0f}, peak {rss["peak_mib"]:.0f}) | | | < 100 MB |
| no-op `pulumi preview`, 20 models / 2 GiB (s) | {pv["median_s"]["models"]:.2f} | 20 plain dynamic resources: {pv["median_s"]["plain"]:.2f} | **+{pv["delta_s"]:.2f} s** | ≤ +5 s |

mlinfra's registration hashes the file once before uploading (to skip uploads of content the registry already
has and to claim the version) and once more while streaming it (to detect a file changed mid-upload); the raw
path hashes once. No-op previews reuse the hash cache (size, mtime, inode), so unchanged big models are not
re-read.
""")
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
