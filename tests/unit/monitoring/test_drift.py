"""Drift report on a synthetic shifted dataset: flags the shifted feature and not the others; malformed records are
skipped and counted; a baseline with the wrong columns is refused with both counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlinfra.cli import main
from mlinfra.monitoring.drift import MonitorError, drift, ks, psi, read_collected


def _collect(folder: Path, x: np.ndarray, outputs: np.ndarray | None = None) -> None:
    part = folder / "ep" / "blue" / "m" / "1" / "2026" / "11" / "24" / "08"
    part.mkdir(parents=True)
    lines = []
    for i, row in enumerate(x):
        r = {"request_id": f"r{i}", "time": "2026-11-24T08:00:00.000Z", "inputs": {"input": [row.tolist()]}}
        if outputs is not None:
            r["outputs"] = {"p": [outputs[i].tolist()]}
        lines.append(json.dumps(r))
    lines += ["not json", json.dumps({"request_id": "x", "inputs": {}})]  # two malformed records
    (part / "20261124T080000-000000000000.jsonl").write_text("\n".join(lines) + "\n")


def test_psi_and_ks_separate_shifted_from_same() -> None:
    rng = np.random.default_rng(0)
    a, same, shifted = rng.normal(0, 1, 4000), rng.normal(0, 1, 3000), rng.normal(1.0, 1, 3000)
    assert psi(a, same) < 0.05 < 0.2 < psi(a, shifted)
    assert ks(a, same)[1] > 0.01 and ks(a, shifted)[1] < 1e-6


def test_drift_report_flags_only_the_shifted_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(0, 1, (3000, 5))
    current = rng.normal(0, 1, (2000, 5))
    current[:, 2] += 1.5
    np.save(tmp_path / "baseline.npy", baseline)
    _collect(tmp_path / "collected", current)
    out = tmp_path / "report" / "drift.html"
    code = main(
        ["monitor", "drift", "--collected", f"file://{tmp_path / 'collected'}", "--baseline",
         str(tmp_path / "baseline.npy"), "--out", str(out), "--feature-names", "a,b,c,d,e"]
    )  # fmt: skip
    assert code == 1  # drift past the threshold: CI fails
    summary = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert summary["drifted"] == ["c"]
    assert summary["malformed_records"] == 2 and summary["records"] == 2000
    # The report's KS values are SciPy's on the same data (statistic and p-value).
    from scipy.stats import ks_2samp

    x = read_collected(f"file://{tmp_path / 'collected'}").x
    for i, f in enumerate(summary["features"]):
        ref = ks_2samp(baseline[:, i], x[:, i])
        assert (f["ks"], f["ks_p"]) == (float(ref.statistic), float(ref.pvalue)), (f, ref)
    assert (tmp_path / "report" / "drift-features.png").stat().st_size > 10_000
    assert "DRIFT" not in out.read_text().split("<table>")[0] or "c" in summary["drifted"]
    assert "data:image/png;base64," in out.read_text()
    # Without the shift: exit 0.
    _collect(tmp_path / "same", rng.normal(0, 1, (2000, 5)))
    assert main(["monitor", "drift", "--collected", f"file://{tmp_path / 'same'}", "--baseline",
                 str(tmp_path / "baseline.npy"), "--out", str(tmp_path / "same.html")]) == 0  # fmt: skip


def test_baseline_with_other_columns_is_refused(tmp_path: Path) -> None:
    _collect(tmp_path / "c", np.zeros((10, 5)))
    collected = read_collected(f"file://{tmp_path / 'c'}")
    with pytest.raises(MonitorError, match="baseline has 4 columns but the collected inputs have 5 features"):
        drift(collected, np.zeros((10, 4)), 0.2)
    assert main(["monitor", "drift", "--collected", "file:///nonexistent", "--baseline", "x.npy"]) == 2


def test_prediction_drift_from_the_model(tmp_path: Path) -> None:
    import onnxruntime as ort

    from mlinfra.lab.samples import write_mlp

    model = write_mlp(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    baseline = rng.normal(0, 1, (2000, 64))
    same = rng.normal(0, 1, (1500, 64))
    shifted = same + rng.normal(0, 3, (1, 64))  # every feature moves: predictions move too
    results = {}
    for name, x in (("same", same), ("shifted", shifted)):
        y = sess.run(None, {"input": x.astype(np.float32)})[0]
        _collect(tmp_path / name, x, y)
        results[name] = drift(read_collected(f"file://{tmp_path / name}"), baseline, 0.2, model=str(model))
    assert results["same"]["prediction"]["categorical"] and not results["same"]["prediction"]["drifted"]
    assert results["shifted"]["prediction"]["drifted"] and "prediction" in results["shifted"]["drifted"]


def test_collected_files_are_read_up_to_the_limit_and_special_files_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--collected file://` reads a record file up to collector.MAX_FILE_BYTES and no further (one over it is counted
    as malformed, named, not read whole — even if it grew after it was listed), and a FIFO or device named *.jsonl
    is skipped rather than read: a FIFO would block the report for good, /dev/zero would fill memory."""
    import os
    import threading

    from mlinfra.monitoring import drift as drift_mod

    monkeypatch.setattr(drift_mod, "MAX_FILE_BYTES", 4096)
    rng = np.random.default_rng(3)
    _collect(tmp_path, rng.normal(size=(20, 3)))
    part = next(tmp_path.rglob("*.jsonl")).parent
    (part / "big.jsonl").write_bytes(b"{}\n" * 2000)  # 6,000 bytes: over the (patched) limit
    os.mkfifo(part / "pipe.jsonl")
    os.symlink("/dev/null", part / "device.jsonl")  # a device (as /dev/zero would be, which never ends)
    # A file listed small that grows before it is read: the read stops at the limit all the same.
    grown = part / "grown.jsonl"
    grown.write_bytes(b"")
    real_listing = Path.rglob

    def listing_then_growth(self: Path, pattern: str):  # type: ignore[no-untyped-def]
        found = list(real_listing(self, pattern))
        grown.write_bytes(b"x" * 10_000)
        return iter(found)

    monkeypatch.setattr(Path, "rglob", listing_then_growth)
    got: dict = {}
    reader = threading.Thread(
        target=lambda: got.update(blobs=list(drift_mod._iter_blobs(f"file://{tmp_path}", None, "")))
    )
    reader.daemon = True
    reader.start()
    reader.join(20)
    if reader.is_alive():  # unblock the reader stuck on the FIFO before failing
        with open(part / "pipe.jsonl", "wb"):
            pass
        pytest.fail("reading the collected folder blocked on a FIFO named *.jsonl")
    blobs = dict(got["blobs"])
    assert "pipe.jsonl" not in " ".join(blobs) and "device.jsonl" not in " ".join(blobs), sorted(blobs)
    big = next(k for k in blobs if k.endswith("big.jsonl"))
    grown_key = next(k for k in blobs if k.endswith("grown.jsonl"))
    assert blobs[big] is None and blobs[grown_key] is None, (blobs[big], blobs[grown_key])
    monkeypatch.setattr(Path, "rglob", real_listing)
    c = read_collected(f"file://{tmp_path}")
    assert c.records == 20 and any("big.jsonl" in m for m in c.malformed_examples), c.malformed_examples


def test_collected_blobs_are_downloaded_up_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob listed under the limit but replaced by a larger one before it is downloaded: the download stops past
    collector.MAX_FILE_BYTES (chunk by chunk) and the blob counts as over the limit, not read whole."""
    from mlinfra.monitoring import drift as drift_mod
    from mlinfra_scoring import collector

    monkeypatch.setattr(collector, "MAX_FILE_BYTES", 100)  # the limit join_at_most reads
    pulled: list[int] = []

    class Downloader:
        def __init__(self, chunks: list[bytes]) -> None:
            self._chunks = chunks

        def chunks(self):  # type: ignore[no-untyped-def]
            for c in self._chunks:
                pulled.append(len(c))
                yield c

    class Client:
        def download_blob(self, name: str) -> Downloader:
            return Downloader([b"a" * 60] * 50 if name == "replaced.jsonl" else [b"{}\n"])

    assert drift_mod._download_at_most(Client(), "replaced.jsonl") is None
    assert sum(pulled) <= 120, pulled  # stopped after the chunk that crossed the limit, not all 3,000 bytes
    assert drift_mod._download_at_most(Client(), "small.jsonl") == b"{}\n"
