"""Deterministic layer tarballs: sorted entries, fixed mtimes, root owner, no names or timestamps in the gzip
header. Same inputs → same bytes → same digest, on any machine and from any working directory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlinfra.errors import LayerContentError

EPOCH = 0  # mtime of every entry


@dataclass(frozen=True)
class Entry:
    """A file in a layer: its path in the image, and where the bytes come from."""

    path: str  # absolute path in the image, e.g. /opt/mlinfra/app/mlinfra_scoring/server.py
    size: int
    source: Path | bytes | Callable[[], Iterator[bytes]]
    mode: int = 0o644
    sha256: str | None = None  # when set, the streamed bytes are verified against it


@dataclass(frozen=True)
class Layer:
    path: Path  # the .tar.gz
    digest: str  # sha256 of the compressed bytes (the blob)
    diff_id: str  # sha256 of the uncompressed tar
    size: int


class _HashWriter(io.RawIOBase):
    def __init__(self, inner: IO[bytes] | gzip.GzipFile | None = None):
        self.sha = hashlib.sha256()
        self.inner = inner
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha.update(b)
        self.n += len(b)
        if self.inner is not None:
            self.inner.write(b)
        return len(b)


class _IterReader(io.RawIOBase):
    """A file-like view of an iterator of chunks, hashing what it hands to tarfile."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                c = next(self._chunks)
            except StopIteration:
                break
            self._buf += c
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        self.sha.update(out)
        return out


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk


def _dirs_of(paths: Iterable[str]) -> list[str]:
    dirs: set[str] = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)


def build_layer(entries: list[Entry], out: Path) -> Layer:
    """Write a reproducible tar.gz of ENTRIES (parent directories added) to OUT."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer, not per process: the engine's provider process builds several images at once in threads,
    # and two of them may build the same cached layer (same bytes: whichever rename lands last is as good).
    tmp = out.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        layer = _write_layer(entries, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return Layer(out, layer.digest, layer.diff_id, layer.size)


def _write_layer(entries: list[Entry], tmp: Path) -> Layer:
    with open(tmp, "wb") as raw:
        blob = _HashWriter(raw)
        with gzip.GzipFile(filename="", fileobj=blob, mode="wb", mtime=EPOCH, compresslevel=6) as gz:
            plain = _HashWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for d in _dirs_of(e.path for e in entries):
                    ti = tarfile.TarInfo(d + "/")
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                    tar.addfile(ti)
                for e in sorted(entries, key=lambda e: e.path):
                    ti = tarfile.TarInfo(e.path.lstrip("/"))
                    ti.size, ti.mode, ti.mtime = e.size, e.mode, EPOCH
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                    if isinstance(e.source, bytes):
                        reader: io.RawIOBase | IO[bytes] = io.BytesIO(e.source)
                        tar.addfile(ti, reader)
                        got = hashlib.sha256(e.source).hexdigest()
                    elif isinstance(e.source, Path):
                        with open(e.source, "rb") as f:
                            r = _IterReader(_chunks(f))
                            tar.addfile(ti, r)
                            got = r.sha.hexdigest()
                    else:
                        r = _IterReader(e.source())
                        tar.addfile(ti, r)
                        got = r.sha.hexdigest()
                    if e.sha256 and got != e.sha256:
                        raise LayerContentError(
                            f"{e.path}: content sha256 {got[:12]}… does not match the expected {e.sha256[:12]}…"
                        )
    return Layer(tmp, "sha256:" + blob.sha.hexdigest(), "sha256:" + plain.sha.hexdigest(), blob.n)


def layer_from_dir(root: Path, prefix: str, out: Path, mode_exec: bool = False) -> Layer:
    """A layer holding every file under ROOT at PREFIX/<relative path> (symlinks skipped)."""
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(root).as_posix()
            mode = 0o755 if (mode_exec and os.access(p, os.X_OK)) else 0o644
            entries.append(Entry(f"{prefix.rstrip('/')}/{rel}", p.stat().st_size, p, mode))
    return build_layer(entries, out)
