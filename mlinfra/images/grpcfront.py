"""The scoring server's native gRPC front end (components/grpcfront, Go): built from source into the cache, for
images (/opt/mlinfra/bin/mlinfra-grpcfront) and for `mlinfra serve` on this machine.

`make setup` builds it (`python -m mlinfra.images --grpcfront`); Go fetches grpc-go and protobuf from the module
proxy the first time. Without Go or without the source (an install from a wheel), :func:`binary` is None: images
then serve gRPC with the in-process grpcio service, which answers the same calls more slowly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlinfra_scoring
from mlinfra.engine import cache_dir
from mlinfra.errors import ImageBuildError

SOURCE = Path(mlinfra_scoring.__file__).resolve().parents[2] / "grpcfront"
"""components/grpcfront, beside components/scoring (a checkout or an editable install)."""
IMAGE_PATH = "/opt/mlinfra/bin/mlinfra-grpcfront"


def _sources() -> list[Path]:
    return sorted(
        p for p in SOURCE.rglob("*") if p.is_file() and p.name.endswith((".go", "go.mod", "go.sum"))
    )


def target() -> Path | None:
    """Where the build of the current sources goes (in the cache, keyed by them); None without the source."""
    if not (SOURCE / "go.mod").is_file():
        return None
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.relative_to(SOURCE).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return cache_dir() / "bin" / f"mlinfra-grpcfront-{h.hexdigest()[:16]}"


def binary(progress: Callable[[str], None] = lambda _m: None) -> Path | None:
    """mlinfra-grpcfront built from SOURCE (static, stripped) into the cache, keyed by the sources; None without
    the source or without Go."""
    go = shutil.which("go")
    out = target()
    if go is None or out is None:
        return None
    if out.is_file():
        return out
    progress("building mlinfra-grpcfront (go build; the first build fetches grpc-go from the module proxy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        built = Path(tmp) / "mlinfra-grpcfront"
        done = subprocess.run(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(built), "."],
            cwd=SOURCE,
            env={**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ImageBuildError(f"building mlinfra-grpcfront failed: {done.stderr.strip()[-2000:]}")
        os.replace(built, out)  # atomic: a concurrent build of the same sources writes the same file
    return out
