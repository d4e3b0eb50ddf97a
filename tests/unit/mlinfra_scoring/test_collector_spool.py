"""The collector's writer and uploader share the spool: a file the uploader deletes while the writer measures the
spool must not cost the batch being written (it did: 20 records of a storage-outage test were dropped)."""

from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from mlinfra_scoring.collector import Collector, CollectorConfig, FolderSink


def test_a_spool_file_deleted_while_the_writer_measures_the_spool_drops_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = CollectorConfig(sink=f"file://{tmp_path / 'out'}", spool_dir=str(spool), flush_s=3600)
    dropped: list[str] = []
    c = Collector(config, FolderSink(tmp_path / "out"), on_drop=dropped.append)
    try:
        victim = spool / "ep" / "old.jsonl"
        victim.parent.mkdir(parents=True)
        victim.write_text("{}\n")
        real_stat = Path.stat
        seen: list[int] = []

        def stat(
            self: Path, *a, **kw
        ):  # the uploader deletes the file after it was listed (and seen to exist)
            if self.name == "old.jsonl":
                seen.append(1)
                if len(seen) == 2:
                    self.unlink(missing_ok=True)
            return real_stat(self, *a, **kw)

        record = {"request_id": "r1", "model": "mlp", "version": "1", "ts": time.time(),
                  "inputs": {"x": np.ones((1, 2), np.float32)}, "outputs": {"y": np.ones((1, 1), np.float32)}}  # fmt: skip
        with mock.patch.object(Path, "stat", stat):
            c._write_batch([record])
        assert dropped == [] and c.counts["spooled"] == 1, (dropped, c.counts)
    finally:
        c.close(timeout=1)


def _record(i: int) -> dict:
    return {"request_id": f"r{i}", "model": "mlp", "version": "1", "ts": time.time(),
            "inputs": {"x": np.ones((1, 2), np.float32)}, "outputs": {"y": np.ones((1, 1), np.float32)}}  # fmt: skip


def test_the_uploader_survives_any_storage_error_and_delivers_after(tmp_path: Path) -> None:
    """Connection resets, replies that are not HTTP, exceptions of any kind: counted, logged rate-limited, retried;
    the uploader thread never dies, and once storage answers the records arrive."""
    import socket
    import threading

    from mlinfra_scoring.collector import BlobSink

    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")  # not HTTP
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    blob = BlobSink("acct", "c", "", f"http://127.0.0.1:{garbage.getsockname()[1]}/acct", "sig=x")
    folder = FolderSink(tmp_path / "out")
    failures = iter([blob.put, lambda *_a: (_ for _ in ()).throw(RuntimeError("surprise")), blob.put])

    class Flaky:
        def describe(self) -> str:
            return "flaky"

        def put(self, name: str, data: bytes) -> None:
            next(failures, folder.put)(name, data)

    errors: list[int] = []
    logged: list[dict] = []
    config = CollectorConfig(sink="file:///unused", spool_dir=str(tmp_path / "spool"), flush_s=0.05)
    c = Collector(config, Flaky(), log=logged.append, on_upload_error=lambda: errors.append(1))  # type: ignore[arg-type]
    try:
        for i in range(5):
            c(_record(i))
        deadline = time.monotonic() + 20
        while c.counts["uploaded"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c._uploader.is_alive()
        assert c.counts["uploaded"] == 5 and len(errors) == 3 == c.counts["upload_errors"], (c.counts, errors)
        texts = [e["error"] for e in logged if e.get("event") == "collector_upload_failed"]
        assert any("not an HTTP answer" in t for t in texts) or any("surprise" in t for t in texts), texts
    finally:
        c.close(timeout=1)
        garbage.close()


def test_a_full_disk_leaves_no_partial_spool_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    stale = spool / "ep" / "d" / ".123.jsonl.part"
    stale.parent.mkdir(parents=True)
    stale.write_text("half a")
    dropped: list[str] = []
    config = CollectorConfig(sink="file:///unused", spool_dir=str(spool), flush_s=3600)
    c = Collector(config, FolderSink(tmp_path / "out"), on_drop=dropped.append)
    try:
        assert not stale.exists(), "a partial file of an earlier run was left"

        def full(_fd: int) -> None:
            raise OSError(28, "No space left on device")

        with mock.patch("mlinfra_scoring.collector.os.fsync", full), pytest.raises(OSError, match="No space"):
            c._write_batch([_record(1), _record(2)])  # the writer loop counts the batch as dropped
        assert not list(spool.rglob("*.part")), list(spool.rglob("*"))
        assert not list(spool.rglob("*.jsonl"))
    finally:
        c.close(timeout=1)


def test_the_default_spool_is_private_and_a_foreign_one_in_shared_tmp_is_refused(
    tmp_path: Path, monkeypatch
) -> None:
    import os
    import stat
    import tempfile

    from mlinfra_scoring.collector import CollectorConfigError, private_dir

    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(shared))
    c = Collector(CollectorConfig(sink="file:///unused", flush_s=3600), FolderSink(tmp_path / "out"))
    try:
        assert c.spool == shared / f"mlinfra-spool-{os.getuid()}"
        assert stat.S_IMODE(c.spool.stat().st_mode) == 0o700
    finally:
        c.close(timeout=1)
    planted = shared / "planted"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)  # another user's folder in shared /tmp
    with pytest.raises(CollectorConfigError, match="not a folder of this user"):
        private_dir(planted)
    (shared / "link").symlink_to(tmp_path)
    with pytest.raises(CollectorConfigError):
        private_dir(shared / "link")
    loose = shared / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(private_dir(loose).stat().st_mode) == 0o700
