"""mlinfra.files: the atomic writer promotion uses for Pulumi.<stack>.yaml (issue 17)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlinfra.files import write_atomic


def test_write_atomic_replaces_the_file_in_one_step_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text("config: old\n")
    os.chmod(path, 0o640)
    before = path.stat().st_ino
    write_atomic(path, "config: new\n")
    assert path.read_text() == "config: new\n"
    assert path.stat().st_ino != before, "written in place: a reader or a crash could see half a file"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pulumi.staging.yaml"]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text("config: old\n" * 100)

    def full_disk(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "config: new\n" * 100)
    assert path.read_text() == "config: old\n" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pulumi.staging.yaml"]
