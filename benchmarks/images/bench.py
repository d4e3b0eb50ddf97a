"""Image rebuild benchmark, side by side in one run (issue 5).

After a model-only change (a new version of a 4096-wide MLP, ≈ 17 MB), rebuild and push:
- mlinfra's daemonless build (`build_and_push`: cached deps/app layers, one new model layer, registry API), vs
- `docker build` + `docker push` of the equivalent Dockerfile (same base, site-packages, app and model layers,
  model last so the Docker cache keeps the rest), on the same Docker engine and registry.

Reports wall time and bytes pushed (layers new to the registry plus config and manifest), median of N alternating
repetitions. Usage: .venv/bin/python benchmarks/images/bench.py [--reps 3]
"""

from __future__ import annotations

import argparse
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from mlinfra.images.builder import DOCKER, ImageSpec, ModelInput, build_and_push, docker_context  # noqa: E402
from mlinfra.images.oci import RegistryClient  # noqa: E402
from mlinfra.lab import services  # noqa: E402
from mlinfra.lab.samples import write_mlp  # noqa: E402
from mlinfra.registry import ModelRegistry  # noqa: E402

DOCKERFILE = """ARG MLINFRA_BASE
FROM ${MLINFRA_BASE}
COPY mlinfra/site-packages/ /opt/mlinfra/site-packages/
COPY mlinfra/components/ /opt/mlinfra/app/components/
COPY mlinfra/models/ /models/
ENV PYTHONPATH=/opt/mlinfra/site-packages:/opt/mlinfra/app MLINFRA_SERVE_MODEL=/models/mlp/model.onnx \\
    MLINFRA_SERVE_NAME=mlp MLINFRA_SERVE_HOST=0.0.0.0
USER 10001
ENTRYPOINT ["python3", "-m", "mlinfra_scoring"]
"""


def layers(repo_ref: str) -> dict[str, int]:
    host, rest = repo_ref.split("/", 1)
    repo, ref = rest.split("@") if "@" in rest else rest.rsplit(":", 1)
    got = RegistryClient(f"http://{host}").get_manifest(repo, ref)
    assert got is not None
    return {layer["digest"]: layer["size"] for layer in got[1]["layers"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    services.ensure(["docker", "registry", "python-base"], progress=lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="mlinfra-bench-images-"))
    os.environ["MLINFRA_CACHE"] = str(work / "cache")  # no layer from an earlier run is reused
    reg_uri = f"file://{work / 'registry'}"
    reg = ModelRegistry(reg_uri)
    stamp = int(time.time())
    repo_m = f"{services.registry_host()}/bench/mlinfra-{stamp}"
    repo_d = f"{services.registry_host()}/bench/docker-{stamp}"
    res: dict[str, list[dict]] = {"mlinfra": [], "docker": []}
    prev: dict[str, dict[str, int]] = {}
    try:
        for i in range(args.reps + 1):  # the first round primes both (full build), then model-only changes
            mv, _ = reg.register(
                "mlp", write_mlp(work / "model.onnx", inputs=1024, hidden=4096, seed=stamp + i)
            )
            model = ModelInput("mlp", mv.version, mv.sha256, reg_uri)
            # mlinfra
            t = time.perf_counter()
            out = build_and_push(ImageSpec(repository=repo_m, models=[model], base=services.base_image_ref()))
            dt = time.perf_counter() - t
            new = layers(out.image_ref)
            if i:
                res["mlinfra"].append(
                    {
                        "seconds": dt,
                        "bytes_pushed": out.bytes_pushed,
                        "new_layers": sum(1 for d in new if d not in prev.get("m", {})),
                    }
                )
            prev["m"] = new
            # docker build + push of the equivalent Dockerfile
            # The Docker user's context is prepared once; a model-only change replaces only the model file.
            ctx = work / "ctx"
            spec_d = ImageSpec(repository=repo_d, models=[model], base=services.base_image_ref())
            if i == 0:
                src = work / "src"
                src.mkdir(exist_ok=True)
                (src / "Dockerfile").write_text(DOCKERFILE)
                docker_context(spec_d, src, ctx)
            models_dir = ctx / "mlinfra" / "models" / "mlp"
            shutil.rmtree(models_dir, ignore_errors=True)
            models_dir.mkdir(parents=True)
            t = time.perf_counter()
            reg.download(f"mlp:{mv.version}", models_dir)
            env = {**os.environ, "DOCKER_BUILDKIT": "1"}
            subprocess.run(
                [
                    DOCKER,
                    "build",
                    "-q",
                    "-t",
                    f"{repo_d}:latest",
                    "--build-arg",
                    f"MLINFRA_BASE={services.base_image_ref()}",
                    str(ctx),
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            push = subprocess.run(
                [DOCKER, "push", f"{repo_d}:latest"], check=True, capture_output=True, text=True
            )
            dt = time.perf_counter() - t
            new = layers(f"{repo_d}:latest")
            pushed = sum(size for d, size in new.items() if d not in prev.get("d", {})) if i else 0
            if i:
                res["docker"].append(
                    {
                        "seconds": dt,
                        "bytes_pushed": pushed,
                        "new_layers": sum(1 for d in new if d not in prev.get("d", {})),
                    }
                )
            prev["d"] = new
            del push
            print(
                f"round {i}: {res['mlinfra'][-1] if i else 'primed'} | {res['docker'][-1] if i else 'primed'}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "bytes_pushed")}
        for k, v in res.items()
    }
    machine = f"{platform.node()} — {os.cpu_count()} cores, {platform.machine()}"
    date = datetime.now(UTC).isoformat(timespec="seconds")
    (HERE / "results.json").write_text(
        json.dumps({"date": date, "machine": machine, "runs": res, "median": med}, indent=1)
    )
    (HERE / "RESULTS.md").write_text(f"""# Image rebuild benchmark results

Measured {date} on {machine} (shared, noisy: read the ratios). `bench.py`, {args.reps} model-only changes after a
priming build, medians. Model: MLP 1024→4096→10 (≈ 17 MB), local registry, Docker {_docker_version()}.

| rebuild after a model-only change | wall time (s) | bytes pushed | new layers |
|---|---|---|---|
| mlinfra daemonless build + registry API | {med["mlinfra"]["seconds"]:.2f} | {med["mlinfra"]["bytes_pushed"]:,.0f} | {res["mlinfra"][-1]["new_layers"]} |
| `docker build` + `docker push` (equivalent Dockerfile, BuildKit cache) | {med["docker"]["seconds"]:.2f} | {med["docker"]["bytes_pushed"]:,.0f} | {res["docker"][-1]["new_layers"]} |

Ratio (docker / mlinfra): **{med["docker"]["seconds"] / med["mlinfra"]["seconds"]:.1f}× the time**,
{med["docker"]["bytes_pushed"] / max(med["mlinfra"]["bytes_pushed"], 1):.2f}× the bytes. Both push only the model
layer (plus config and manifest). The time is of the same order (both stream ≈ 17 MB through sha256 and gzip once);
what mlinfra adds is that it needs no Docker daemon (CI runners that preview pull requests often have none) and that
its digest is reproducible — the same inputs give the same digest on any machine — which the Docker build's is not
(layer timestamps), so an unchanged model is no change in `pulumi preview` and pushes nothing.
Each run uses fresh model content (seeded by time) and an empty mlinfra layer cache, so neither side reuses a
layer from an earlier run; the Docker side keeps its build context and BuildKit cache between rounds, as a
developer's machine would.
""")
    print((HERE / "RESULTS.md").read_text())
    return 0


def _docker_version() -> str:
    return subprocess.run(
        [DOCKER, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
