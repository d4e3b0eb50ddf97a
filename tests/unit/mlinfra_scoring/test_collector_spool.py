"""The collector's writer and uploader share the spool: a file the uploader deletes while the writer measures the
spool must not cost the batch being written (it did: 20 records of a storage-outage test were dropped)."""

from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import numpy as np

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
