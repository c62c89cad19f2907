"""Partitioned logs read lazily on the workers, each partition validated as in memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from oirl.data.logs import _read_parquet, partition_files
from oirl.data.schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, validate_logs
from oirl.distributed.cluster import _require_dask
from oirl.errors import LogFormatError, one_line

# --------------------------------------------------------------------------- reading logs lazily

_DUMMY = {"query": "q", "prompt": "p", "reward": "0", "correct": "0", "cost": "0", "propensity": "1"}


def read_log_partitions(path: str | Path, *, columns: list[str] | None = None):
    """A lazy Dask DataFrame of a partitioned log: one partition per Parquet file.

    Only the columns oirl reads are loaded (the schema's, plus ``columns``), with
    pyarrow; each partition is validated by :func:`oirl.data.schema.validate_logs` inside
    ``map_partitions``, so errors name the file, row and column, as in memory. Keys
    repeated *across* files are not merged here (the callers pivot per instance).
    """
    _require_dask()
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    files = [str(f) for f in partition_files(path)]
    try:
        names = pq.read_schema(files[0]).names
    except FileNotFoundError:
        raise LogFormatError(f"{files[0]}: no such log file") from None
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise LogFormatError(f"{files[0]}: not a readable Parquet file: {one_line(exc)}") from None
    wanted = [c for c in names if c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "correct", *(columns or ()))]
    raw_meta = pd.DataFrame({c: pd.Series([], dtype="str") for c in wanted})
    sample = pd.DataFrame({c: [_DUMMY.get(c, "x")] for c in wanted})
    try:
        meta = validate_logs(sample, source=files[0]).iloc[:0]
    except LogFormatError as exc:  # e.g. a missing required column: the same message as in memory
        raise LogFormatError(str(exc).replace(", row 1", "")) from None
    raw = dd.from_map(_read_partition, files, columns=wanted, meta=raw_meta, enforce_metadata=False, label="read-log")
    return raw.map_partitions(_validate_partition, files, meta=meta, partition_info=True, enforce_metadata=False)


def _read_partition(file: str, columns: list[str]) -> pd.DataFrame:

    frame, _ = _read_parquet(Path(file), columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LogFormatError(f"{file}: missing column(s) {', '.join(missing)} that the log's other files have; "
                             "the files of one log must share their columns")
    return frame[columns]


def _validate_partition(raw: pd.DataFrame, files: list[str], partition_info: dict | None = None) -> pd.DataFrame:
    source = files[partition_info["number"]] if partition_info else "<partition>"
    with warnings.catch_warnings():  # duplicates are merged and counted per instance later
        warnings.simplefilter("ignore")
        return validate_logs(raw, source=source)


def _rows_of_split(rows, split_column: str | None, split: str):
    """The rows of ``split``; every row when the log has no such column (as in memory)."""
    if split_column and split_column in rows.columns:
        return rows[rows[split_column] == split]
    return rows
