"""Tables of numbers from files: calibration and validation rows (FpgaEndpoint), baselines (drift reports,
ModelMonitor): .npy, .csv, .jsonl, or Parquet (numeric columns; nulls read as NaN)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mlinfra.errors import DataFileError

MAX_ROWS = 1_000_000


def load_rows(path: str | Path, what: str) -> np.ndarray:
    """Rows from .npy, .csv (numbers, optional header) or .jsonl (one list per line) as a 2-D+ float32 array."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{what} file {str(path)!r} does not exist")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".csv":
            with open(p, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] and not _is_number(rows[0][0]):
                rows = rows[1:]
            arr = np.asarray(rows, dtype=np.float64)
        elif p.suffix in (".jsonl", ".json"):
            arr = np.asarray([json.loads(line) for line in p.read_text().splitlines() if line.strip()])
        elif p.suffix == ".parquet":
            arr = _parquet(p, what)
        else:
            raise DataFileError(f"{what} file {p.name!r}: use .npy, .csv, .jsonl or .parquet")
    except (ValueError, OSError, ImportError) as e:
        if isinstance(e, DataFileError):
            raise
        raise DataFileError(f"{what} file {p.name!r} is not a rectangular table of numbers: {e}") from None
    if arr.size == 0 or arr.shape[0] == 0:
        raise DataFileError(
            f"{what} file {p.name!r} has no rows: give at least one (≈ 100-1000 representative rows)"
        )
    if arr.shape[0] > MAX_ROWS:
        raise DataFileError(f"{what} file {p.name!r} has {arr.shape[0]:,d} rows; at most {MAX_ROWS:,d}")
    return arr


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _parquet(p: Path, what: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    cols = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if not (
            pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
        ):
            raise DataFileError(
                f"{what} file {p.name!r}: column {name!r} is {col.type}, not numbers: drop it or encode it as numbers"
            )
        cols.append(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False))
    return np.column_stack(cols) if cols else np.zeros((0, 0))


def column_names(path: str | Path) -> list[str] | None:
    """The names of a table's columns: a CSV's header row or a Parquet file's schema; None for other files."""
    p = Path(path)
    if p.suffix == ".csv" and p.is_file():
        with open(p, newline="") as f:
            first = next(csv.reader(f), [])
        return None if not first or all(_is_number(v) for v in first) else [v.strip() for v in first]
    if p.suffix == ".parquet" and p.is_file():
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)
    return None
