"""Layers are reproducible: same content → same bytes, whatever the order, path or time they were built."""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import pytest

from mlinfra.images.builder import SERVER_REQUIREMENTS, ImageBuildError, check_script, split_ref
from mlinfra.images.layers import Entry, LayerContentError, build_layer, layer_from_dir


def test_same_entries_same_digest_any_order(tmp_path: Path) -> None:
    a = [Entry("/opt/x/b.txt", 3, b"bbb"), Entry("/opt/x/a.txt", 1, b"a")]
    l1 = build_layer(a, tmp_path / "1.tar.gz")
    time.sleep(1.1)
    l2 = build_layer(list(reversed(a)), tmp_path / "2.tar.gz")
    assert (l1.digest, l1.diff_id) == (l2.digest, l2.diff_id)
    with tarfile.open(l1.path) as tar:
        names = tar.getnames()
        assert names == ["opt", "opt/x", "opt/x/a.txt", "opt/x/b.txt"]
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert {(m.uid, m.gid) for m in tar.getmembers()} == {(0, 0)}


def test_layer_from_dirs_at_different_paths_and_mtimes(tmp_path: Path) -> None:
    for d in ("one", "two"):
        (tmp_path / d / "pkg").mkdir(parents=True)
        (tmp_path / d / "pkg" / "m.py").write_text("x = 1\n")
        os.utime(tmp_path / d / "pkg" / "m.py", (1_000_000 if d == "one" else 2_000_000,) * 2)
    l1 = layer_from_dir(tmp_path / "one", "/opt/site", tmp_path / "l1.tar.gz")
    l2 = layer_from_dir(tmp_path / "two", "/opt/site", tmp_path / "l2.tar.gz")
    assert l1.digest == l2.digest


def test_streamed_content_is_verified(tmp_path: Path) -> None:
    entry = Entry("/models/m/1/model.onnx", 3, lambda: iter([b"ab", b"c"]), sha256="0" * 64)
    with pytest.raises(LayerContentError, match="does not match"):
        build_layer([entry], tmp_path / "bad.tar.gz")


def test_server_requirements_match_the_project_pins() -> None:
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    for req in SERVER_REQUIREMENTS:
        assert f'"{req}"' in pyproject, f"{req} differs from pyproject.toml"


def test_refs_and_scripts(tmp_path: Path) -> None:
    assert split_ref("127.0.0.1:5000/a/b:tag") == ("127.0.0.1:5000", "a/b", "tag")
    assert split_ref("127.0.0.1:5000/a/b@sha256:ff") == ("127.0.0.1:5000", "a/b", "sha256:ff")
    with pytest.raises(ImageBuildError, match="needs a registry host"):
        split_ref("scorer")
    bad = tmp_path / "score.py"
    bad.write_text("def run(raw):\n    return [\n")
    with pytest.raises(ImageBuildError, match=r"score\.py:2"):
        check_script(bad)


def test_concurrent_builds_of_one_cached_layer_do_not_collide(tmp_path: Path) -> None:
    """The engine's provider process builds images in threads; two may write the same cached layer at once (this
    failed with FileNotFoundError when the temp name was per process)."""
    import threading

    out = tmp_path / "layers" / "deps-same.tar.gz"
    entries = [Entry(f"/opt/x/{i}.txt", 1 << 16, bytes([i % 256]) * (1 << 16)) for i in range(64)]
    errors: list[BaseException] = []
    digests: list[str] = []

    def build() -> None:
        try:
            digests.append(build_layer(entries, out).digest)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors
    assert len(set(digests)) == 1 and out.exists()
    assert not list(out.parent.glob("*.tmp")), "no temp file is left behind"
