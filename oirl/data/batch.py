"""Batch recommendations: a file of queries in, Parquet partitions of picks out.

IO, not the fitted artifact: it reads query files and writes Parquet, and takes the
recommender as any object with its ``recommend`` (and the checks it runs before any work),
so it sits with the readers and writers, below :mod:`oirl.recommender`. The Dask engine
scores the same partitions on its workers (:mod:`oirl.distributed.batch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from oirl._atomic import atomic_directory, atomic_path
from oirl._outputs import check_output_directory
from oirl.data.logs import _parquet_value_to_str, is_partitioned, iter_jsonl_objects, partition_files
from oirl.errors import OirlError, one_line

OUTPUT_MARKER = "_SUCCESS"
PART_ROWS = 100_000  # queries per output partition when the input is one JSONL file


class Recommends(Protocol):
    """What the writer needs of a recommender (:class:`oirl.recommender.recommender.Recommender`
    has it); a protocol, so that IO does not import the layer above it."""

    def recommend(self, queries: list[str], candidates: Any = None, *, policy: str | None = None, top_k: int | None = None,
                  cost_weight: float | None = None) -> list[Any]: ...

    def policy(self, name: str | None = None, candidates: Any = None, *, costs: dict[str, float] | None = None) -> Any: ...

    def resolve_candidates(self, candidates: Any = None) -> Any: ...

    def candidate_costs(self, candidates: Any) -> Any: ...


# --------------------------------------------------------------------------- batch recommendations


def query_sources(path: str | Path) -> list[Any]:
    """The partitions of a batch of queries, in order: a Parquet file's path per file of a
    Parquet file, directory or glob, or frames of up to :data:`PART_ROWS` queries from a
    JSONL file (``query`` and optional ``query_id`` per line)."""

    path = Path(path)
    if not is_partitioned(path) and path.suffix.lower() != ".parquet":
        if not path.is_file():
            raise OirlError(f"{path}: no such file")
        queries, ids = [], []
        for number, record in iter_jsonl_objects(path):
            value = record.get("query")
            if not isinstance(value, str) or not value.strip():
                raise OirlError(f"{path}, line {number}, field 'query': missing or empty text")
            queries.append(value)
            ids.append(None if record.get("query_id") is None else str(record["query_id"]))
        if not queries:
            raise OirlError(f"{path}: no records")
        frame = pd.DataFrame({"query": queries})
        if any(i is not None for i in ids):
            frame["query_id"] = ["" if i is None else i for i in ids]
        return [frame.iloc[start : start + PART_ROWS].reset_index(drop=True) for start in range(0, len(frame), PART_ROWS)]
    files = partition_files(path)
    if not files[0].is_file():
        raise OirlError(f"{files[0]}: no such file")
    return [str(f) for f in files]


def read_query_partition(source: Any) -> pd.DataFrame:
    """A query partition as a frame with ``query`` (non-empty texts) and optional ``query_id``."""
    if isinstance(source, pd.DataFrame):
        return source
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(source).names
        if "query" not in names:
            raise OirlError(f"{source}: missing column 'query' (found: {', '.join(names) or 'none'})")
        table = pq.read_table(source, columns=["query"] + (["query_id"] if "query_id" in names else []))
    except OirlError:
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise OirlError(f"{source}: not a readable Parquet file: {one_line(exc)}") from None
    frame = pd.DataFrame({c: [_parquet_value_to_str(v) for v in table.column(c).to_pylist()] for c in table.column_names})
    empty = frame["query"].str.strip() == ""
    if empty.any():
        raise OirlError(f"{source}, row {int(empty.to_numpy().argmax()) + 1}, column 'query': empty query text")
    return frame


def recommend_frame(rec: Recommends, frame: pd.DataFrame, *, candidates=None, policy: str | None = None, cost_weight: float | None = None) -> pd.DataFrame:
    """The policy's pick for every query of ``frame``, in order: ``query``, ``query_id`` (if
    given), ``prompt_id``, ``prompt``, ``score``."""
    picks = rec.recommend(frame["query"].tolist(), candidates, policy=policy, top_k=1, cost_weight=cost_weight)
    out = {"query": frame["query"].tolist()}
    if "query_id" in frame.columns:
        out["query_id"] = frame["query_id"].astype(str).tolist()
    out.update(prompt_id=[r.prompt_id for r in picks], prompt=[r.prompt for r in picks], score=np.array([r.score for r in picks]))
    return pd.DataFrame(out)


def write_part(frame: pd.DataFrame, directory: str | Path, index: int) -> int:
    """Write ``frame`` as ``part-<index>.parquet`` in ``directory``, atomically; returns its rows."""
    with atomic_path(Path(directory) / f"part-{index:05d}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return len(frame)


def is_recommend_output(directory: Path) -> bool:
    """A directory written by ``oirl recommend --out``: part files and the marker only."""
    names = [p.name for p in directory.iterdir()]
    return OUTPUT_MARKER in names and all(n == OUTPUT_MARKER or (n.startswith("part-") and n.endswith(".parquet")) for n in names)


def check_recommend_output(directory: str | Path) -> Path:
    """Refuse an ``--out`` that exists, is not empty and is not a previous output."""
    return check_output_directory(directory, is_recommend_output, "an 'oirl recommend' output")


#: ``write_parts(sources, directory, options) -> counts``: score and write each query
#: partition ``i`` as ``part-<i>.parquet`` in ``directory`` (another engine, e.g. Dask,
#: brings its own; see :func:`oirl.distributed.batch.part_writer`).
PartWriter = Callable[[list[Any], Path, dict[str, Any]], list[int]]


def local_part_writer(rec: Recommends) -> PartWriter:
    """Score and write every partition in this process, in order."""
    def write_parts(sources: list[Any], directory: Path, options: dict[str, Any]) -> list[int]:
        return [write_part(recommend_frame(rec, read_query_partition(s), **options), directory, i) for i, s in enumerate(sources)]

    return write_parts


def recommend_to_parquet(
    rec: Recommends, queries: str | Path, out_dir: str | Path, *, candidates=None, policy: str | None = None,
    cost_weight: float | None = None, write_parts: PartWriter | None = None,
) -> dict[str, Any]:
    """Write the pick for every query as Parquet partitions ``part-00000.parquet``, ... in
    ``out_dir``: one per input partition, rows in input order, then ``_SUCCESS``. The
    directory appears whole or not at all (it is written beside and renamed into place).
    ``write_parts`` scores and writes the partitions (default: here, in order)."""
    out_dir = check_recommend_output(out_dir)
    rec.policy(policy, rec.resolve_candidates(candidates), costs=rec.candidate_costs(candidates))  # e.g. cost-aware without costs: fail before any work
    sources = query_sources(queries)
    options = {"candidates": candidates, "policy": policy, "cost_weight": cost_weight}
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        counts = (write_parts or local_part_writer(rec))(sources, Path(tmp), options)
        (Path(tmp) / OUTPUT_MARKER).write_text("", encoding="utf-8")  # last: the output is complete
    return {"out": str(out_dir), "partitions": len(counts), "queries": int(sum(counts)), "seconds": round(time.perf_counter() - started, 2)}
