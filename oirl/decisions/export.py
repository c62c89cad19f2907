"""The export of served decisions as a partial log, streamed in constant memory.

A decision's outcome is what arrived within ``feedback_window`` seconds of it:

* feedback within the window: exported with its reward;
* feedback after the window (``late``): kept in the store, not exported with it;
* no feedback, and the window has passed (``without``): the decision is final;
* no feedback yet, and the window has not passed (``pending``): not exported yet.

Late and final decisions are dropped, or exported with ``missing_reward`` (and no
``feedback_at``) when one is given. So an export made at any time after every window
has closed gives the same rows: a late reward never changes an exported log.

Rows are read in chunks (one SQLite snapshot) and written as they come: CSV and JSONL
line by line, Parquet one row group per chunk with a :class:`pyarrow.parquet.ParquetWriter`;
the file appears atomically when complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from oirl._atomic import atomic_path
from oirl.data.logs import log_format
from oirl.decisions.records import format_time, parse_time
from oirl.errors import OirlError

EXPORT_COLUMNS = (
    "decision_id", "query_id", "query", "prompt_id", "prompt", "reward",
    "propensity", "candidate_ids", "model_version", "created_at", "feedback_at",
)
#: The columns :func:`write_export` reads, in this order.
SOURCE_COLUMNS = ("decision_id", "query", "prompt_id", "prompt", "reward", "propensity", "candidate_ids",
                  "model_version", "created_at", "feedback_at")
DEFAULT_FEEDBACK_WINDOW = 24 * 3600.0  # seconds: a day for an outcome to come back
CHUNK_ROWS = 5_000  # rows read, and written as one Parquet row group, at a time


@dataclass
class ExportCounts:
    """How many decisions fell into each case (see the module docstring)."""

    with_feedback: int = 0
    late_feedback: int = 0
    without_feedback: int = 0
    pending: int = 0


def write_export(rows: Iterable[tuple], out_path: str | os.PathLike[str], *, source: Path,
                 feedback_window: float = DEFAULT_FEEDBACK_WINDOW, missing_reward: float | None = None,
                 now: datetime | None = None, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Write the exportable ``rows`` (tuples of :data:`SOURCE_COLUMNS`, oldest first) to ``out_path``.

    Returns the summary: ``rows`` written and the :class:`ExportCounts`, the window and
    the missing reward used, and ``file``. Raises :class:`OirlError` when nothing is
    exportable (nothing is written) or when one prompt id was served with two texts.
    """

    out_path = Path(out_path)
    fmt = log_format(out_path)  # an unknown extension fails before any work
    if not (feedback_window > 0 and math.isfinite(feedback_window)):
        raise OirlError(f"feedback window: must be a finite number of seconds > 0, got {feedback_window!r}")
    if missing_reward is not None and not 0.0 <= missing_reward <= 1.0:
        raise OirlError(f"missing reward: must be in [0, 1], got {missing_reward!r}")
    now = now or datetime.now(timezone.utc)
    window = timedelta(seconds=feedback_window)
    closed_before = format_time(now - window)  # created at or before this: the window has passed
    counts = ExportCounts()
    texts = _PromptTexts(source)
    written = 0
    with atomic_path(out_path) as tmp:
        writer = _WRITERS[fmt](tmp)
        try:
            batch: list[dict[str, Any]] = []
            for row in rows:
                record = _outcome(dict(zip(SOURCE_COLUMNS, row, strict=True)), window, closed_before, missing_reward, counts)
                if record is None:
                    continue
                texts.check(record)
                batch.append(record)
                if len(batch) >= chunk_rows:
                    writer.write(batch)
                    written += len(batch)
                    batch = []
            if batch:
                writer.write(batch)
                written += len(batch)
        finally:
            writer.close()
        if not written:
            raise OirlError(f"{source}: nothing to export ({_counts_text(counts)}); nothing written to {out_path}")
    return {"rows": written, "with_feedback": counts.with_feedback, "late_feedback": counts.late_feedback,
            "without_feedback": counts.without_feedback, "pending": counts.pending,
            "filled_with_missing_reward": written - counts.with_feedback,
            "dropped": 0 if missing_reward is not None else counts.late_feedback + counts.without_feedback,
            "feedback_window_seconds": feedback_window, "missing_reward": missing_reward, "file": str(out_path)}


def _outcome(row: dict[str, Any], window: timedelta, closed_before: str, missing_reward: float | None,
             counts: ExportCounts) -> dict[str, Any] | None:
    """The exported record of one decision, or None (pending, or dropped); counts the case."""
    rewarded = row["reward"] is not None
    if rewarded and parse_time(row["feedback_at"]) - parse_time(row["created_at"]) <= window:
        counts.with_feedback += 1
    elif not rewarded and row["created_at"] > closed_before:
        counts.pending += 1
        return None
    else:  # the window has passed without an outcome in it
        if rewarded:
            counts.late_feedback += 1
        else:
            counts.without_feedback += 1
        if missing_reward is None:
            return None
        row = {**row, "reward": missing_reward, "feedback_at": None}
    return {"decision_id": row["decision_id"], "query_id": row["decision_id"], **{k: row[k] for k in SOURCE_COLUMNS[1:]}}


def _counts_text(counts: ExportCounts) -> str:
    return (f"{counts.with_feedback} with feedback within the window, {counts.late_feedback} with late feedback, "
            f"{counts.without_feedback} without feedback, {counts.pending} younger than the window without feedback yet")


class _PromptTexts:
    """One prompt id must name one text in a log: the first text seen per id, to compare."""

    def __init__(self, source: Path):
        self.source = source
        self.first: dict[str, dict[str, Any]] = {}

    def check(self, record: dict[str, Any]) -> None:
        first = self.first.setdefault(record["prompt_id"], record)
        if first["prompt"] != record["prompt"]:
            raise OirlError(
                f"{self.source}: prompt_id {record['prompt_id']!r} was served with two texts (decision {first['decision_id']}, "
                f"model {first['model_version']}; decision {record['decision_id']}, model {record['model_version']}); "
                "one id must name one prompt text in a log"
            )
        if first is record:  # keep only what the message needs, not the whole row
            self.first[record["prompt_id"]] = {k: record[k] for k in ("prompt", "decision_id", "model_version")}


# --------------------------------------------------------------------------- writers


class _CsvWriter:
    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        self.csv = csv.DictWriter(self.file, fieldnames=EXPORT_COLUMNS)
        self.csv.writeheader()

    def write(self, records: list[dict[str, Any]]) -> None:
        self.csv.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)

    def close(self) -> None:
        self.file.close()


class _JsonlWriter:
    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, records: list[dict[str, Any]]) -> None:
        self.file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    def close(self) -> None:
        self.file.close()


class _ParquetWriter:
    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        numbers = {"reward", "propensity"}
        self.schema = pa.schema([(c, pa.float64() if c in numbers else pa.string()) for c in EXPORT_COLUMNS])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.pa = pa

    def write(self, records: list[dict[str, Any]]) -> None:
        self.writer.write_table(self.pa.Table.from_pylist(records, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


_WRITERS = {"csv": _CsvWriter, "jsonl": _JsonlWriter, "parquet": _ParquetWriter}
