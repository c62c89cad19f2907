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
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import atomic_path
from oirl.errors import LogFormatError, one_line

REQUIRED_COLUMNS = ("query", "prompt", "reward")
OPTIONAL_COLUMNS = ("query_id", "prompt_id", "split", "llm", "cost", "propensity")
CANONICAL_COLUMNS = ("query_id", "query", "prompt_id", "prompt", "reward", "split", "llm", "cost", "propensity")
LOG_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


def text_id(text: str, prefix: str) -> str:
    """A stable short id derived from a text (the same text gives the same id everywhere)."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def text_hashes64(texts) -> np.ndarray:
    """(n,) uint64: the first 8 bytes of each text's sha256 (enough to tell texts apart)."""
    return np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little") for t in texts], dtype="<u8")


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


# --------------------------------------------------------------------------- validation


def validate_logs(
    raw: pd.DataFrame, *, source: str = "<logs>", where: Callable[[int], str] | None = None
) -> pd.DataFrame:
    """Check a frame of string cells against the schema and return the canonical frame.

    ``where(i)`` names data row ``i`` in error messages (defaults to ``row i+1``).
    """
    where = where or (lambda i: f"row {i + 1}")
    raw = raw.reset_index(drop=True)
    columns = [str(c).strip() for c in raw.columns]
    raw.columns = columns
    reward_column = "reward" if "reward" in columns else "correct" if "correct" in columns else None
    missing = [c for c in ("query", "prompt") if c not in columns] + ([] if reward_column else ["reward"])
    if missing:
        raise LogFormatError(
            f"{source}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}; "
            f"required: query, prompt, reward — or correct instead of reward)"
        )
    if raw.empty:
        raise LogFormatError(f"{source}: the file holds no rows")

    out = pd.DataFrame(index=raw.index)
    for column in ("query", "prompt"):
        values = raw[column].astype(str)
        empty = values.str.strip() == ""
        if empty.any():
            i = int(empty.to_numpy().argmax())
            raise LogFormatError(f"{source}, {where(i)}, column {column!r}: empty {column} text")
        out[column] = values

    out["reward"] = _parse_rewards(raw[reward_column], reward_column, source, where)

    for column, prefix, text_column in (("query_id", "q", "query"), ("prompt_id", "p", "prompt")):
        ids = raw[column].astype(str).str.strip() if column in columns else pd.Series("", index=raw.index)
        blank = ids == ""
        if blank.any():
            ids = ids.copy()
            ids[blank] = [text_id(t, prefix) for t in out.loc[blank, text_column]]
        out[column] = ids

    for column in ("split", "llm"):
        if column in columns:
            out[column] = raw[column].astype(str).str.strip()
    if "cost" in columns:
        out["cost"] = _parse_costs(raw["cost"], source, where)
    if "propensity" in columns:
        out["propensity"] = _parse_propensities(raw["propensity"], source, where)
    # Columns outside the schema ride along as strings (e.g. a custom split column).
    extras = [c for c in columns if c not in CANONICAL_COLUMNS and c != reward_column and c != "correct"]
    for column in extras:
        out[column] = raw[column].astype(str)

    _check_prompt_ids(out, source, where)
    out = average_duplicates(out, source, ["query_id", "prompt_id"] + (["split"] if "split" in out.columns else []))
    if "propensity" in out.columns:
        _check_propensity_sums(out, source)
    ordered = [c for c in CANONICAL_COLUMNS if c in out.columns] + extras
    return out[ordered].reset_index(drop=True)


def _parse_rewards(values: pd.Series, column: str, source: str, where: Callable[[int], str]) -> pd.Series:
    parsed = []
    for i, cell in enumerate(values.astype(str)):
        text = cell.strip()
        lowered = text.lower()
        if lowered in _TRUE and column == "correct":
            parsed.append(1.0)
            continue
        if lowered in _FALSE and column == "correct":
            parsed.append(0.0)
            continue
        try:
            value = float(text)
        except ValueError:
            kind = "a missing" if not text else f"a non-numeric ({text!r})"
            raise LogFormatError(f"{source}, {where(i)}, column {column!r}: {kind} value; expected a number in [0, 1]") from None
        if not (0.0 <= value <= 1.0):  # also rejects nan
            raise LogFormatError(f"{source}, {where(i)}, column {column!r}: {text} is outside [0, 1]")
        parsed.append(value)
    return pd.Series(parsed, index=values.index, dtype="float64")


def _parse_costs(values: pd.Series, source: str, where: Callable[[int], str]) -> pd.Series:
    parsed = []
    for i, cell in enumerate(values.astype(str)):
        text = cell.strip()
        try:
            value = float(text)
        except ValueError:
            raise LogFormatError(f"{source}, {where(i)}, column 'cost': {text!r} is not a number") from None
        if not value >= 0.0 or math.isinf(value):
            raise LogFormatError(f"{source}, {where(i)}, column 'cost': {text} is not a finite cost >= 0")
        parsed.append(value)
    return pd.Series(parsed, index=values.index, dtype="float64")


def _check_prompt_ids(frame: pd.DataFrame, source: str, where: Callable[[int], str]) -> None:
    texts_per_id = frame.groupby("prompt_id", sort=False)["prompt"].nunique()
    clashing = texts_per_id[texts_per_id > 1]
    if len(clashing):
        prompt_id = clashing.index[0]
        rows = frame.index[frame["prompt_id"] == prompt_id]
        first = frame.loc[rows[0], "prompt"]
        other = next(i for i in rows if frame.loc[i, "prompt"] != first)
        raise LogFormatError(
            f"{source}, {where(int(other))}, column 'prompt': prompt_id {prompt_id!r} has a different text "
            f"here than in {where(int(rows[0]))}; one id must name one prompt text"
        )


def average_duplicates(frame: pd.DataFrame, source: str, keys: list[str]) -> pd.DataFrame:
    """Merge rows that share ``keys`` into one, averaging rewards (and costs), with a warning.

    Rows of one key must agree on their propensity: the same logged decision cannot
    have been drawn with two probabilities.
    """
    duplicated = frame.duplicated(keys, keep=False)
    if not duplicated.any():
        return frame
    if "propensity" in frame.columns:
        spread = frame[duplicated].groupby(keys, sort=False)["propensity"].nunique()
        if (spread > 1).any():
            key = spread[spread > 1].index[0]
            raise LogFormatError(f"{source}: rows with the same {', '.join(keys)} {key} have different propensities")
    n_keys = frame.loc[duplicated, keys].drop_duplicates().shape[0]
    warnings.warn(
        f"{source}: {int(duplicated.sum())} rows share {n_keys} ({', '.join(keys)}) keys; "
        "their rewards (and costs) are averaged into one row per key",
        stacklevel=3,
    )
    numeric = {c: "mean" for c in ("reward", "cost") if c in frame.columns}
    first = {c: "first" for c in frame.columns if c not in numeric and c not in keys}
    return frame.groupby(keys, sort=False, as_index=False).agg({**first, **numeric})


def _parse_propensities(values: pd.Series, source: str, where: Callable[[int], str]) -> pd.Series:
    parsed = []
    for i, cell in enumerate(values.astype(str)):
        text = cell.strip()
        if not text:
            raise LogFormatError(f"{source}, {where(i)}, column 'propensity': missing value; give a propensity on every row or drop the column")
        try:
            value = float(text)
        except ValueError:
            raise LogFormatError(f"{source}, {where(i)}, column 'propensity': {text!r} is not a number") from None
        if not (0.0 < value <= 1.0):  # also rejects nan
            raise LogFormatError(f"{source}, {where(i)}, column 'propensity': {text} is outside (0, 1]")
        parsed.append(value)
    return pd.Series(parsed, index=values.index, dtype="float64")


def _check_propensity_sums(frame: pd.DataFrame, source: str) -> None:
    keys = ["query_id"] + (["split"] if "split" in frame.columns else [])
    sums = frame.groupby(keys, sort=False)["propensity"].sum()
    over = sums[sums > 1.0 + 1e-6]
    if len(over):
        key = over.index[0]
        where = f"{key[0]!r} (split {key[1]!r})" if isinstance(key, tuple) else repr(key)
        raise LogFormatError(
            f"{source}: query instance {where} has several prompts logged with propensities summing to "
            f"{over.iloc[0]:.4g} > 1; the propensities of one decision's prompts cannot exceed a distribution"
        )


def coverage(frame: pd.DataFrame) -> str:
    """``full`` when every prompt of the frame is logged for every query instance, else ``partial``."""
    cells = frame["query_id"].nunique() * frame["prompt_id"].nunique()
    return "full" if len(frame.drop_duplicates(["query_id", "prompt_id"])) == cells else "partial"


# --------------------------------------------------------------------------- writing


def write_logs(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a canonical frame atomically in the format its extension names."""
    path = Path(path)
    fmt = log_format(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
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


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows a model was trained on (order-insensitive)."""
    keyed = frame[["query_id", "prompt_id", "query", "prompt", "reward"]].sort_values(["query_id", "prompt_id"])
    digest = hashlib.sha256(pd.util.hash_pandas_object(keyed, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
