"""Drift reports over collected data: `mlinfra monitor drift --collected URI --baseline FILE --out report.html`.

Per input feature: the population stability index (PSI, 10 quantile bins of the baseline) and the two-sample
Kolmogorov-Smirnov test; prediction drift: PSI of the predicted-class (or output value) distribution against the
baseline scored by `--model`. Writes an HTML report with its plots embedded, the plots as PNGs next to it, and a
JSON summary; exits 1 when anything drifts past `--threshold`, so CI can gate on it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.errors import DataFileError, MonitorError
from mlinfra_scoring.collector import MAX_FILE_BYTES, Oversized, join_at_most
from mlinfra_scoring.monitor import Collected, parse_collected


def _iter_blobs(uri: str, credential: str | None, prefix: str) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of each record file under URI and PREFIX; bytes None for one over MAX_FILE_BYTES, which
    parse_collected counts as malformed rather than reading it whole."""
    u = urllib.parse.urlparse(uri)
    if u.scheme == "file":
        root = Path(u.path)
        if not root.is_dir():
            raise MonitorError(f"--collected {uri}: no such folder")
        for p in sorted(root.rglob("*.jsonl")):
            rel = p.relative_to(root).as_posix()
            if rel.startswith(prefix) and p.is_file():  # a FIFO or a device (/dev/zero) is no record file
                yield rel, _read_at_most(p)
        return
    if u.scheme in ("http", "https"):  # a container URL, as DataCollection's container_uri output
        from azure.storage.blob import ContainerClient

        account = u.netloc.split(".")[0] if "blob.core" in u.netloc else u.path.strip("/").split("/")[0]
        container_url = uri.split("?")[0]
        if credential and "sig=" in credential:
            client = ContainerClient.from_container_url(f"{container_url}?{credential.lstrip('?')}")
        elif credential:
            client = ContainerClient.from_container_url(
                container_url, credential={"account_name": account, "account_key": credential}
            )
        else:
            client = ContainerClient.from_container_url(container_url)
        try:
            for b in client.list_blobs(name_starts_with=prefix or None):
                if b.name.endswith(".jsonl"):
                    too_large = (b.size or 0) > MAX_FILE_BYTES
                    yield b.name, (None if too_large else _download_at_most(client, b.name))
        except Exception as e:
            raise MonitorError(
                f"--collected {container_url}: could not read ({type(e).__name__}); set MLINFRA_COLLECT_CREDENTIAL to "
                "the account key or a SAS with read/list"
            ) from None
        return
    raise MonitorError(
        f"--collected {uri!r}: use file:///folder or the container URL (DataCollection's container_uri)"
    )


def _read_at_most(path: Path) -> bytes | None:
    """PATH's bytes, None past MAX_FILE_BYTES: read up to the limit, never whole (a file may have grown since it
    was listed)."""
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    return None if len(data) > MAX_FILE_BYTES else data


def _download_at_most(client: Any, name: str) -> bytes | None:
    """Blob NAME's bytes, None past MAX_FILE_BYTES: downloaded chunk by chunk and dropped once past the limit (a blob
    may have been replaced by a larger one since it was listed)."""
    try:
        return join_at_most(client.download_blob(name).chunks(), name)
    except Oversized:
        return None


def read_collected(
    uri: str, credential: str | None = None, prefix: str = "", since: str | None = None
) -> Collected:
    """The records collected under URI (a folder or a container URL; CREDENTIAL: the account key or a SAS with
    read + list) and PREFIX, from SINCE on (mlinfra_scoring.monitor.parse_collected reads them)."""
    c = parse_collected(_iter_blobs(uri, credential, prefix), since)
    if not c.records:
        raise MonitorError(f"--collected {uri}: no usable records (files {c.files}, malformed {c.malformed})")
    return c


def psi(base: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(base, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:  # (nearly) constant baseline: compare the share equal to it
        v = edges[0]
        p = np.array([np.mean(base == v), np.mean(base != v)])
        q = np.array([np.mean(cur == v), np.mean(cur != v)])
    else:
        edges[0], edges[-1] = -np.inf, np.inf
        p = np.histogram(base, edges)[0] / len(base)
        q = np.histogram(cur, edges)[0] / len(cur)
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value: `scipy.stats.ks_2samp` (two-sided; exact for small
    samples, asymptotic for large ones, as SciPy chooses)."""
    from scipy.stats import ks_2samp

    r = ks_2samp(a, b)
    return float(r.statistic), float(r.pvalue)


def load_baseline(path: str) -> np.ndarray:
    from mlinfra.rows import load_rows

    try:
        arr = load_rows(path, "baseline")
    except DataFileError as e:
        raise MonitorError(str(e)) from None
    return arr.reshape(arr.shape[0], -1).astype(np.float64)


def _predictions(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Class ids when the output looks like per-class scores, else the (first) value."""
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(1).astype(np.float64), True
    return y.reshape(len(y), -1)[:, 0], False


def drift(
    collected: Collected,
    baseline: np.ndarray,
    threshold: float,
    feature_names: list[str] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    if baseline.shape[1] != collected.x.shape[1]:
        raise MonitorError(
            f"the baseline has {baseline.shape[1]} columns but the collected inputs have {collected.x.shape[1]} "
            "features: give a baseline with one column per model input feature, in the signature's order"
        )
    names = feature_names or [f"f{i}" for i in range(baseline.shape[1])]
    if len(names) != baseline.shape[1]:
        raise MonitorError(f"--feature-names gives {len(names)} names for {baseline.shape[1]} features")
    features = []
    for i, name in enumerate(names):
        d, p = ks(baseline[:, i], collected.x[:, i])
        value = psi(baseline[:, i], collected.x[:, i])
        features.append(
            {
                "feature": name,
                "psi": value,
                "ks": d,
                "ks_p": p,
                "baseline_mean": float(baseline[:, i].mean()),
                "collected_mean": float(collected.x[:, i].mean()),
                "drifted": value > threshold,
            }
        )
    prediction: dict[str, Any] | None = None
    if model and collected.outputs:
        import onnxruntime as ort

        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        ref = sess.run(None, {inp.name: baseline.astype(np.float32)})
        ref_y = next(o for o in ref if isinstance(o, np.ndarray) and o.dtype.kind == "f")
        cur_y = np.concatenate(collected.outputs)
        a, categorical = _predictions(ref_y)
        b, _ = _predictions(cur_y)
        if categorical:
            classes = np.union1d(np.unique(a), np.unique(b))
            pa = np.clip(np.array([np.mean(a == k) for k in classes]), 1e-4, None)
            pb = np.clip(np.array([np.mean(b == k) for k in classes]), 1e-4, None)
            value = float(np.sum((pb - pa) * np.log(pb / pa)))
        else:
            value = psi(a, b)
        prediction = {"psi": value, "categorical": categorical, "drifted": value > threshold}
        prediction["baseline"], prediction["collected"] = a.tolist()[:5000], b.tolist()[:5000]
    return {
        "threshold": threshold,
        "records": collected.records,
        "rows": int(collected.x.shape[0]),
        "baseline_rows": int(baseline.shape[0]),
        "malformed_records": collected.malformed,
        "malformed_examples": collected.malformed_examples,
        "features": features,
        "prediction": prediction,
        "drifted": [f["feature"] for f in features if f["drifted"]]
        + (["prediction"] if prediction and prediction["drifted"] else []),
    }


def png_bytes(fig: Any) -> bytes:
    """FIG as PNG (90 dpi), as reports embed it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_report(
    summary: dict[str, Any], baseline: np.ndarray, collected: Collected, out: Path
) -> list[Path]:
    """report.html (plots embedded) + report-*.png + report.json next to it; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    images: dict[str, bytes] = {}
    feats = summary["features"]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(feats)), 3))
    ax.bar(
        [f["feature"] for f in feats],
        [f["psi"] for f in feats],
        color=["tab:red" if f["drifted"] else "tab:blue" for f in feats],
    )
    ax.axhline(summary["threshold"], color="k", ls="--", lw=1, label=f"threshold {summary['threshold']:g}")
    ax.set_ylabel("PSI")
    ax.set_title("Population stability index per feature")
    ax.legend()
    fig.tight_layout()
    images["psi"] = png_bytes(fig)
    plt.close(fig)
    n = len(feats)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for i, f in enumerate(feats):
        ax = axes[i // cols][i % cols]
        lo = min(baseline[:, i].min(), collected.x[:, i].min())
        hi = max(baseline[:, i].max(), collected.x[:, i].max())
        bins = np.linspace(lo, hi, 30) if hi > lo else 10
        ax.hist(baseline[:, i], bins=bins, alpha=0.5, density=True, label="baseline")
        ax.hist(collected.x[:, i], bins=bins, alpha=0.5, density=True, label="collected")
        ax.set_title(f"{f['feature']}  PSI {f['psi']:.2f}" + ("  DRIFT" if f["drifted"] else ""), fontsize=9,
                     color="tab:red" if f["drifted"] else "black")  # fmt: skip
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    images["features"] = png_bytes(fig)
    plt.close(fig)
    pred = summary.get("prediction")
    if pred:
        fig, ax = plt.subplots(figsize=(5, 3))
        a, b = np.array(pred["baseline"]), np.array(pred["collected"])
        if pred["categorical"]:
            classes = np.union1d(np.unique(a), np.unique(b)).astype(int)
            ax.bar(classes - 0.2, [np.mean(a == k) for k in classes], 0.4, label="baseline")
            ax.bar(classes + 0.2, [np.mean(b == k) for k in classes], 0.4, label="collected")
            ax.set_xlabel("predicted class")
        else:
            ax.hist(a, bins=30, alpha=0.5, density=True, label="baseline")
            ax.hist(b, bins=30, alpha=0.5, density=True, label="collected")
        ax.set_title(f"Prediction drift: PSI {pred['psi']:.2f}")
        ax.legend()
        fig.tight_layout()
        images["prediction"] = png_bytes(fig)
        plt.close(fig)
    written = []
    for k, data in images.items():
        p = Path(f"{stem}-{k}.png")
        p.write_bytes(data)
        written.append(p)
    public = {k: v for k, v in summary.items() if k != "prediction"}
    if pred:
        public["prediction"] = {k: v for k, v in pred.items() if k not in ("baseline", "collected")}
    Path(f"{stem}.json").write_text(json.dumps(public, indent=1))
    written.append(Path(f"{stem}.json"))
    rows_html = "".join(
        f"<tr class='{'drift' if f['drifted'] else ''}'><td>{html.escape(f['feature'])}</td><td>{f['psi']:.3f}</td>"
        f"<td>{f['ks']:.3f}</td><td>{f['ks_p']:.2g}</td><td>{f['baseline_mean']:.3g}</td><td>{f['collected_mean']:.3g}</td>"
        f"<td>{'yes' if f['drifted'] else ''}</td></tr>"
        for f in feats
    )
    img = "".join(
        f"<h2>{html.escape(k)}</h2><img src='data:image/png;base64,{base64.b64encode(v).decode()}'>"
        for k, v in images.items()
    )
    verdict = (
        f"<p class='drift'>Drift past PSI {summary['threshold']:g}: {html.escape(', '.join(summary['drifted']))}</p>"
        if summary["drifted"]
        else f"<p>No feature or prediction drifts past PSI {summary['threshold']:g}.</p>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mlinfra drift report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
tr.drift td,p.drift{{color:#b00;font-weight:bold}}</style></head><body>
<h1>Drift report</h1>{verdict}
<p>{summary["records"]:,d} collected records ({summary["rows"]:,d} rows) against {summary["baseline_rows"]:,d} baseline rows;
{summary["malformed_records"]} malformed record(s) skipped{(": " + html.escape("; ".join(summary["malformed_examples"]))) if summary["malformed_examples"] else ""}.</p>
<table><tr><th>feature</th><th>PSI</th><th>KS</th><th>KS p</th><th>baseline mean</th><th>collected mean</th><th>drift</th></tr>
{rows_html}</table>{img}</body></html>"""
    out.write_text(page)
    written.insert(0, out)
    return written
