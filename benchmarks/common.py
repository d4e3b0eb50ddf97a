"""What every benchmark here shares: what it records next to its figures (when, on which machine, how many
repetitions), and the scoring images it measures."""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def run_meta(reps: int) -> dict[str, object]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} · {os.cpu_count()} cores · {platform.platform()}",
        "reps": reps,
    }


def rep_args(saved: Path, reps: int) -> tuple[argparse.Namespace, dict | None]:
    """A side-by-side benchmark's flags: --reps, --duration (seconds per cell) and --report; with --report, the figures
    saved in SAVED (the caller re-renders its report from them and runs nothing), else None."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--report", action="store_true", help=f"only re-render the report from {saved.name}")
    args = ap.parse_args()
    return args, (json.loads(saved.read_text()) if args.report else None)


def scoring_images(repository: str, seeds: tuple[int, ...], work: Path) -> list[str]:
    """One scoring image per seed (a small MLP, registered in a registry under WORK), built on the local base image
    and pushed to REPOSITORY in the local registry; their references by digest, in the order of SEEDS."""
    from mlinfra.images.builder import ImageSpec, ModelInput, build_and_push
    from mlinfra.lab import services
    from mlinfra.lab.samples import write_mlp
    from mlinfra.registry import ModelRegistry

    reg_uri = f"file://{work / 'registry'}"
    reg = ModelRegistry(reg_uri)
    refs = []
    for seed in seeds:
        mv, _ = reg.register("mlp", write_mlp(work / f"m{seed}.onnx", seed=seed))
        spec = ImageSpec(
            repository=repository,
            models=[ModelInput("mlp", mv.version, mv.sha256, reg_uri)],
            base=services.base_image_ref(),
        )
        refs.append(build_and_push(spec).image_ref)
    return refs


def file_at(rev: str, path: str) -> str:
    """PATH (relative to the repository) as it was at git revision REV: the "before" side of an A/B."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
    ).stdout
