"""Scoring image size before and after a change of the server's requirements (issue 25: prometheus-client and the
OpenTelemetry SDK + OTLP/HTTP exporter added to the image). Installs each requirement set exactly as image builds do
(wheels for cp311/manylinux from the wheelhouse, hash-checked) and builds its dependency layer; the base image (from
the local registry) and the app layer are the same on both sides. Writes SIZE.md and size.json next to this file.

Usage: .venv/bin/python benchmarks/images/size.py [--rev 9d8c615]   (needs `make services`: the base image)
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import file_at, run_meta  # noqa: E402
from mlinfra import defaults  # noqa: E402
from mlinfra.images.builder import SERVER_REQUIREMENTS, SITE, pip_target, resolve_base  # noqa: E402
from mlinfra.images.layers import layer_from_dir  # noqa: E402


def requirements_at(rev: str) -> list[str]:
    src = file_at(rev, "mlinfra/images/builder.py")
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "SERVER_REQUIREMENTS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"no SERVER_REQUIREMENTS in mlinfra/images/builder.py at {rev}")


def measure(reqs: list[str], work: Path, name: str) -> dict:
    target = work / name
    pip_target(reqs, target)
    files = [p for p in target.rglob("*") if p.is_file() and not p.is_symlink()]
    layer = layer_from_dir(target, SITE, work / f"{name}.tar.gz", mode_exec=True)
    return {
        "requirements": reqs,
        "distributions": sorted(p.name.removesuffix(".dist-info") for p in target.glob("*.dist-info")),
        "installed_bytes": sum(p.stat().st_size for p in files),
        "layer_bytes": layer.size,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="9d8c615")
    args = ap.parse_args()
    _digest, manifest, _config = resolve_base(defaults.base_image_ref())
    base = sum(int(x["size"]) for x in manifest["layers"])
    with tempfile.TemporaryDirectory(prefix="mlinfra-size-") as tmp:
        before = measure(requirements_at(args.rev), Path(tmp), "before")
        after = measure(list(SERVER_REQUIREMENTS), Path(tmp), "after")
    added = sorted(set(after["distributions"]) - set(before["distributions"]))
    meta = {**run_meta(1), "rev": args.rev, "base_layers_bytes": base}
    (HERE / "size.json").write_text(json.dumps({**meta, "before": before, "after": after}, indent=1) + "\n")
    mb = 1e6
    lines = [
        f"# Scoring image size: working tree vs {args.rev}",
        "",
        f"Measured {meta['date']} on {meta['machine']}; `benchmarks/images/size.py`. Compressed bytes are what a",
        "registry stores and a node pulls; the base image and the app layer are the same on both sides.",
        "",
        "| | before | after | after / before |",
        "|---|---|---|---|",
        f"| dependency layer, compressed | {before['layer_bytes'] / mb:.1f} MB | {after['layer_bytes'] / mb:.1f} MB | "
        f"{after['layer_bytes'] / before['layer_bytes']:.2f} |",
        f"| dependencies installed | {before['installed_bytes'] / mb:.1f} MB | {after['installed_bytes'] / mb:.1f} MB | "
        f"{after['installed_bytes'] / before['installed_bytes']:.2f} |",
        f"| whole image, compressed (base {base / mb:.1f} MB) | {(base + before['layer_bytes']) / mb:.1f} MB | "
        f"{(base + after['layer_bytes']) / mb:.1f} MB | "
        f"{(base + after['layer_bytes']) / (base + before['layer_bytes']):.2f} |",
        "",
        f"Distributions added ({len(added)}): {', '.join(added)}.",
        "",
    ]
    (HERE / "SIZE.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
