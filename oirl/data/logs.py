"""Demonstration logs: the one schema oirl learns from, its readers, writers and checks.

A log row is one logged outcome of one prompt on one query instance:

========== ======== ===========================================================
column     required meaning
========== ======== ===========================================================
query      yes      the query text sent to the LLM (may span several lines)
prompt     yes      the prompt text used with it
reward     yes      float in [0, 1]: 1/0 for right/wrong, or a fraction of
                    correct samples. ``correct`` (true/false/1/0) is accepted
                    as an alias when ``reward`` is absent.
query_id   no       the query *instance*; default: derived from the query text
prompt_id  no       a short name for the prompt; default: derived from its text
split      no       e.g. ``train`` / ``test``
llm        no       which model answered
cost       no       cost of one call with this prompt (>= 0)
propensity no       probability in (0, 1] that the logging policy chose this
                    prompt for this query (partial-feedback logs)
========== ======== ===========================================================

Rows are keyed by (query_id, prompt_id) within a split. The same text may occur under
several query ids (repeated samples of one question): those stay separate rows.
Duplicate keys are averaged with a warning, never across splits (a test outcome must
not merge into a training row). Every value is read as a string first, so ids such as
``nan``, ``NA`` or ``null`` stay strings.

A log has *full information* when every prompt was logged for every query instance
(an evaluation harness) and *partial feedback* otherwise (a deployed system logs the
one prompt it used, with its propensity if it explored).
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from oirl._atomic import atomic_path
from oirl._outputs import PARQUET_KEY, check_replaceable, is_oirl_parquet
from oirl.data.schema import REQUIRED_COLUMNS, _check_propensity_sums, average_duplicates, validate_logs
from oirl.errors import LogFormatError, one_line

LOG_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def log_format(path: str | Path) -> str:
    """The format of a log file from its extension: ``csv``, ``jsonl`` or ``parquet``."""
    suffix = Path(path).suffix.lower()
    if suffix not in LOG_FORMATS:
        raise LogFormatError(f"{path}: unknown log format {suffix!r} (use one of: {', '.join(LOG_FORMATS)})")
    return LOG_FORMATS[suffix]


# --------------------------------------------------------------------------- reading


def read_logs(path: str | Path) -> pd.DataFrame:
    """Read and validate a CSV, JSONL or Parquet log into the canonical frame.

    Returns a DataFrame with the columns of :data:`CANONICAL_COLUMNS` that the file
    has (``query_id``, ``query``, ``prompt_id``, ``prompt``, ``reward`` always), ids
    and texts as ``str``, ``reward`` as float. Raises :class:`LogFormatError` naming
    the file, row and column of the first problem. A directory or a glob pattern of
    Parquet files is read by :func:`read_log_directory`.
    """
    if is_partitioned(path):
        return read_log_directory(path)
    path = Path(path)
    fmt = log_format(path)
    if not path.is_file():
        raise LogFormatError(f"{path}: no such log file")
    raw, where = _READERS[fmt](path)
    return validate_logs(raw, source=str(path), where=where)


def is_partitioned(path: str | Path) -> bool:
    """Whether ``path`` names a directory of Parquet files or a glob pattern (not one file)."""
    if Path(path).is_file():
        return False
    return Path(path).is_dir() or any(c in str(path) for c in "*?[")


def partition_files(path: str | Path) -> list[Path]:
    """The Parquet files of a partitioned log, sorted by name.

    A directory contributes its ``*.parquet`` files (not its subdirectories, nor names
    starting with ``_`` or ``.``, such as ``_SUCCESS``); a glob pattern every file it
    matches, each of which must be Parquet. A single file is a log of one partition.
    """
    if not is_partitioned(path):
        return [Path(path)]
    if Path(path).is_dir():
        files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() == ".parquet" and not p.name.startswith(("_", ".")))
        if not files:
            raise LogFormatError(f"{path}: a log directory must hold *.parquet files; found none")
        return files
    files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file() and not Path(p).name.startswith(("_", ".")))
    if not files:
        raise LogFormatError(f"{path}: no file matches this pattern")
    other = [p for p in files if p.suffix.lower() != ".parquet"]
    if other:
        raise LogFormatError(f"{other[0]}: not a .parquet file; a log pattern must match Parquet files only")
    return files


def read_log_directory(path: str | Path) -> pd.DataFrame:
    """Read a directory or glob of Parquet files as one log, in memory.

    Each file is read and validated on its own (errors name the file, row and column),
    then the files are concatenated: they must share their columns, one prompt id must
    name one text across files, and keys repeated across files are averaged with a
    warning, as within one file.
    """
    files = partition_files(path)
    frames = [read_logs(f) for f in files]
    first = list(frames[0].columns)
    texts: dict[str, tuple[str, Path]] = {}
    for file, frame in zip(files, frames, strict=True):
        if list(frame.columns) != first:
            raise LogFormatError(f"{file}: columns {', '.join(frame.columns)} differ from those of {files[0]} "
                                 f"({', '.join(first)}); the files of one log must share their columns")
        for prompt_id, prompt in frame.drop_duplicates("prompt_id")[["prompt_id", "prompt"]].itertuples(index=False):
            seen = texts.setdefault(prompt_id, (prompt, file))
            if seen[0] != prompt:
                raise LogFormatError(f"{file}, column 'prompt': prompt_id {prompt_id!r} has a different text here than in "
                                     f"{seen[1]}; one id must name one prompt text")
    source = str(path)
    frame = pd.concat(frames, ignore_index=True)
    frame = average_duplicates(frame, source, ["query_id", "prompt_id"] + (["split"] if "split" in frame.columns else []))
    if "propensity" in frame.columns:
        _check_propensity_sums(frame, source)
    return frame.reset_index(drop=True)


def _read_csv(path: Path) -> tuple[pd.DataFrame, Callable[[int], str]]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise LogFormatError(f"{path}: the file is empty (expected a header with {', '.join(REQUIRED_COLUMNS)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise LogFormatError(f"{path}: not a readable CSV file: {one_line(exc)}") from None
    # Header is line 1, so data row i (0-based) sits on line i + 2 when no field spans lines.
    return frame, lambda i: f"row {i + 1} (line {i + 2})"


def iter_jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file.

    Raises :class:`LogFormatError` naming the file and line of a line that is not a
    JSON object. Records are split on ``\\n`` only, not ``splitlines()``: U+2028 and
    friends may sit unescaped inside a JSON string.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (FileNotFoundError, IsADirectoryError):
        raise LogFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LogFormatError(f"{path}: not UTF-8 text: {one_line(exc)}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogFormatError(f"{path}, line {number}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            raise LogFormatError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, Callable[[int], str]]:
    records: list[dict] = []
    line_numbers: list[int] = []
    for number, record in iter_jsonl_objects(path):
        records.append({key: _json_value_to_str(value) for key, value in record.items()})
        line_numbers.append(number)
    if not records:
        raise LogFormatError(f"{path}: the file holds no records")
    frame = pd.DataFrame.from_records(records).fillna("")
    return frame.astype(str), lambda i: f"line {line_numbers[i]}"


def _json_value_to_str(value: object) -> str:
    # JSON null means "absent"; numbers and booleans keep their JSON spelling.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _read_parquet(path: Path, columns: list[str] | None = None) -> tuple[pd.DataFrame, Callable[[int], str]]:
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path, columns=columns).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise LogFormatError(f"{path}: not a readable Parquet file: {one_line(exc)}") from None
    for column in frame.columns:
        frame[column] = [_parquet_value_to_str(v) for v in frame[column]]
    return frame, lambda i: f"row {i + 1}"


def _parquet_value_to_str(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


# --------------------------------------------------------------------------- writing


def write_logs(frame: pd.DataFrame, path: str | Path, *, force: bool = False) -> Path:
    """Write a canonical frame atomically in the format its extension names.

    An existing file is replaced only if oirl wrote it (a Parquet log carries oirl's mark
    in its schema metadata) or with ``force`` (:mod:`oirl._outputs`)."""
    path = Path(path)
    fmt = log_format(path)
    check_replaceable(path, is_oirl_parquet if fmt == "parquet" else lambda _: False, force=force)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: b"log"}), tmp)
    return path


def training_rows(frame: pd.DataFrame, split_column: str | None, train_split: str, *, source: str) -> pd.DataFrame:
    """The rows to train on: those whose ``split_column`` equals ``train_split``.

    A log without that column is all training data. A log with it but no such row is
    an error, since training on nothing is never what was meant.
    """
    return split_rows(frame, split_column, train_split, source=source)


def split_rows(frame: pd.DataFrame, split_column: str | None, split: str, *, source: str, required: bool = False) -> pd.DataFrame:
    """The rows whose ``split_column`` equals ``split``, duplicates averaged within them.

    Without that column every row is returned, unless ``required`` (then it is an error).
    """
    if not split_column or split_column not in frame.columns:
        if required and split_column:
            raise LogFormatError(f"{source}: no column {split_column!r} to select the {split!r} rows by (columns: {', '.join(frame.columns)})")
        rows = frame
    else:
        rows = frame[frame[split_column] == split]
        if rows.empty:
            present = ", ".join(sorted(frame[split_column].unique())[:10])
            raise LogFormatError(f"{source}: no rows with {split_column} == {split!r} (values present: {present})")
    return average_duplicates(rows.reset_index(drop=True), source, ["query_id", "prompt_id"]).reset_index(drop=True)
