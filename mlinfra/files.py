"""mlinfra's one file hasher."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from mlinfra.engine import cache_dir

Progress = Callable[[int, int], None]


def _hash_cache_path(path: Path) -> Path:
    return cache_dir() / "hashes" / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")


def sha256_file(path: Path | str, progress: Progress | None = None) -> str:
    """Hex sha256 of a file's bytes, streamed in 4 MiB blocks (PROGRESS(done, total) after each); cached by (path,
    size, mtime, inode), so an unchanged big model is hashed once. Content, not path, decides whether an input
    changed: this is mlinfra's one file hasher (models, component inputs, image layers)."""
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    cache = _hash_cache_path(path)
    try:
        cached = json.loads(cache.read_text())
        if {k: cached.get(k) for k in key} == key:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, st.st_size)
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**key, "sha256": digest}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return digest


def write_atomic(path: Path | str, text: str) -> None:
    """Replace PATH's content in one step: written to a temporary file beside it, flushed to disk, renamed over it
    (its permissions kept). A reader, a crash or a full disk sees the old file or the new one, never half of one;
    a failed write leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(fd)
