"""The log schema: the columns of a canonical log and the checks every row passes.

See :mod:`oirl.data.logs` for the readers and writers.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from oirl.data.questions import QuestionKey
from oirl.errors import LogFormatError

REQUIRED_COLUMNS = ("query", "prompt", "reward")
OPTIONAL_COLUMNS = ("query_id", "prompt_id", "split", "llm", "cost", "propensity")
CANONICAL_COLUMNS = ("query_id", "query", "prompt_id", "prompt", "reward", "split", "llm", "cost", "propensity")

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


def text_id(text: str, prefix: str) -> str:
    """A stable short id derived from a text (the same text gives the same id everywhere)."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def text_hashes64(texts) -> np.ndarray:
    """(n,) uint64: the first 8 bytes of each text's sha256 (enough to tell texts apart)."""
    return np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little") for t in texts], dtype="<u8")


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

    return check_rows(out, source=source, where=where)


def check_rows(frame: pd.DataFrame, *, source: str, where: Callable[[int], str] | None = None) -> pd.DataFrame:
    """The checks that span rows, on rows whose cells are parsed already (by
    :func:`validate_logs`, or several validated logs concatenated): one prompt id one text,
    one query id one question, duplicate keys averaged, propensities of one instance within
    a distribution; canonical columns first, the others after them in order."""
    where = where or (lambda i: f"row {i + 1}")
    frame = frame.reset_index(drop=True)
    _check_prompt_ids(frame, source, where)
    _check_query_ids(frame, source, where)
    frame = average_duplicates(frame, source, ["query_id", "prompt_id"] + (["split"] if "split" in frame.columns else []))
    if "propensity" in frame.columns:
        _check_propensity_sums(frame, source)
    ordered = [c for c in CANONICAL_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in CANONICAL_COLUMNS]
    return frame[ordered].reset_index(drop=True)


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


def _check_query_ids(frame: pd.DataFrame, source: str, where: Callable[[int], str]) -> None:
    """One query instance (a query_id, per split), one question: its rows must hold the same
    text, up to Unicode form and whitespace. Otherwise its rewards would be averaged across
    two questions (two suites whose cases are both numbered test-0, ...)."""
    keys = ["query_id"] + (["split"] if "split" in frame.columns else [])
    texts = frame.groupby(keys, sort=False)["query"].nunique()
    if not (texts > 1).any():
        return
    question = QuestionKey(casefold=False)
    for key in texts[texts > 1].index:
        values = key if isinstance(key, tuple) else (key,)
        mask = np.logical_and.reduce([frame[k].to_numpy() == v for k, v in zip(keys, values, strict=True)])
        rows = frame.index[mask]
        normalized = frame.loc[rows, "query"].map(question)
        if normalized.nunique() > 1:
            other = rows[int((normalized != normalized.iloc[0]).to_numpy().argmax())]
            raise LogFormatError(f"{source}, {where(int(other))}, column 'query': query_id {values[0]!r} holds a different question here "
                                 f"than in {where(int(rows[0]))}; one id must name one question (two suites or tasks numbered alike? "
                                 "import them as separate logs, or give their ids a prefix)")


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


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows a model was trained on (order-insensitive)."""
    keyed = frame[["query_id", "prompt_id", "query", "prompt", "reward"]].sort_values(["query_id", "prompt_id"])
    digest = hashlib.sha256(pd.util.hash_pandas_object(keyed, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
