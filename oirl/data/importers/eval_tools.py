"""What the importers of eval-tool outputs share: rows to a log, arm names, grades, versions, output.

promptfoo, lm-evaluation-harness and Inspect AI each write the matrix oirl learns
from (every prompt or model on every test case, with a grade). Their importers
(:mod:`oirl.data.importers.promptfoo`, :mod:`oirl.data.importers.lm_eval`,
:mod:`oirl.data.importers.inspect_logs`) only parse; this module turns their rows into a
canonical log, names arms after what distinguishes them, maps grades to rewards,
checks the tool version a file records, and writes the log without clobbering a file
that oirl did not write (:mod:`oirl._outputs`). Nothing here imports the tools themselves: a user may have
only the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from oirl._outputs import check_replaceable, is_oirl_parquet
from oirl.data.logs import log_format, validate_logs, write_logs
from oirl.errors import OirlError

_VERSION = re.compile(r"^(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Arm:
    """One arm: named parts (e.g. model, prompt) and the text each contributes to the prompt.

    ``parts`` maps a part's name to a short label (its id); ``texts`` maps it to what
    the reward model should read about it (a template, a solver plan). Parts that are
    the same for every arm of an import are left out of both (see :func:`arm_names`).
    """

    parts: tuple[tuple[str, str], ...]
    texts: tuple[tuple[str, str], ...] = field(default=())


def arm_names(arms: Iterable[Arm]) -> dict[Arm, tuple[str, str]]:
    """arm -> (prompt_id, prompt text), built from the parts that differ between arms.

    The id joins the labels of the varying parts with ``:`` (``mock-high:plain``); the
    text is the one varying part's text, or one ``name: text`` paragraph per varying part,
    so arms that differ only in their model still get different prompt texts (the
    reward model reads the text, not the id). With a single arm its last part names it.
    """
    arms = list(dict.fromkeys(arms))
    names = [name for name, _ in arms[0].parts] if arms else []
    varying = [n for n in names if len({dict(a.parts)[n] for a in arms}) > 1 or len({dict(a.texts).get(n) for a in arms}) > 1]
    varying = varying or names[-1:]
    out = {}
    for arm in arms:
        labels, texts = dict(arm.parts), dict(arm.texts)
        prompt_id = ":".join(labels[n] for n in varying)
        if len(varying) == 1:
            text = texts.get(varying[0], labels[varying[0]])
        else:
            text = "\n\n".join(f"{n}: {texts.get(n, labels[n])}" for n in varying)
        out[arm] = (prompt_id, text)
    return out


def content_key(value: object) -> str:
    """A stable hash of any JSON value (dict keys sorted): what "the same document" means."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def readable_query_ids(keys: Sequence[tuple[str, str]]) -> dict[str, str]:
    """content key -> query id, from ``(natural id, content key)`` pairs in order of appearance.

    A query keeps its natural id (a sample id, a doc id) when no other content claims
    that id; otherwise the id gets the first 8 hex digits of its content key, so two
    datasets that both number their items from 0 never merge.
    """
    first_natural: dict[str, str] = {}
    contents_per_natural: dict[str, set[str]] = {}
    for natural, key in keys:
        first_natural.setdefault(key, natural)
        contents_per_natural.setdefault(natural, set()).add(key)
    return {key: natural if len(contents_per_natural[natural]) == 1 else f"{natural}-{key[:8]}" for key, natural in first_natural.items()}


# --------------------------------------------------------------------------- grades


def parse_score_range(text: str | None) -> tuple[float, float] | None:
    """``LO:HI`` -> (lo, hi), the range a numeric score is scaled from."""
    if text is None:
        return None
    try:
        low, high = (float(p) for p in text.split(":"))
    except ValueError:
        raise OirlError(f"--score-range: expected LO:HI (two numbers), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise OirlError(f"--score-range: expected finite LO < HI, got {text!r}")
    return low, high


def scale_scores(scores: pd.Series, score_range: tuple[float, float] | None, source: str) -> pd.Series:
    """Numeric scores -> rewards in [0, 1].

    Scores already in [0, 1] are kept as they are. Otherwise they are scaled from
    ``score_range`` (LO -> 0, HI -> 1; a score outside it is an error), or, without one,
    from the smallest to the largest score seen, with a warning naming that range.
    """
    if score_range is None:
        if scores.between(0.0, 1.0).all():
            return scores
        low, high = float(scores.min()), float(scores.max())
        if low == high:
            raise OirlError(f"{source}: every score is {low:g}, outside [0, 1]; give the scale with --score-range LO:HI")
        warnings.warn(f"{source}: scores run from {low:g} to {high:g}, outside [0, 1]; scaled from that range "
                      "(give the scorer's own range with --score-range LO:HI)", stacklevel=2)
    else:
        low, high = score_range
        outside = scores[(scores < low) | (scores > high)]
        if len(outside):
            raise OirlError(f"{source}: score {outside.iloc[0]:g} is outside --score-range {low:g}:{high:g}")
    return (scores - low) / (high - low)


def number(value: object) -> float | None:
    """A JSON number or boolean as a float (booleans as 1/0); None for anything else or a non-finite number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


# --------------------------------------------------------------------------- versions


def version_tuple(text: str) -> tuple[int, ...] | None:
    """'0.4.13' -> (0, 4, 13), '0.3.46.dev2' -> (0, 3, 46); None when the text does not start with a number."""
    found = _VERSION.match(str(text).strip().lstrip("v"))
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


def check_tool_version(tool: str, found: str | None, tested: tuple[str, str], source: str) -> None:
    """Warn when a file was written by a version of ``tool`` outside the ``tested`` range (oldest, newest).

    A newer patch release of the newest tested minor version counts as tested. The
    format itself is checked by each importer: a file it cannot read is an error,
    whatever its version.
    """
    if found is None:
        return
    parsed, oldest, newest = version_tuple(found), version_tuple(tested[0]) or (), version_tuple(tested[1]) or ()
    if parsed is None:
        warnings.warn(f"{source}: unrecognised {tool} version {found!r}; read as {tested[1]} would write it", stacklevel=2)
    elif parsed < oldest:
        warnings.warn(f"{source}: written by {tool} {found}, older than the versions this importer was tested with "
                      f"({tested[0]} to {tested[1]}); importing anyway", stacklevel=2)
    elif parsed[:2] > newest[:2]:
        warnings.warn(f"{source}: written by {tool} {found}, newer than the versions this importer was tested with "
                      f"({tested[0]} to {tested[1]}); importing anyway", stacklevel=2)


# --------------------------------------------------------------------------- output


def to_log(rows: list[dict], source: str) -> pd.DataFrame:
    """Rows of Python values (reward, cost as floats) -> the validated canonical frame."""
    if not rows:
        raise OirlError(f"{source}: no graded results to import")
    frame = pd.DataFrame(rows)
    for column in ("reward", "cost"):
        if column in frame.columns:
            frame[column] = frame[column].map(repr)  # validate_logs parses every value from text
    return validate_logs(frame.astype(str), source=source)


def check_output_file(path: Path, *, force: bool = False) -> Path:
    """Where an imported log may be written, checked before any parsing: a new file, or one
    oirl wrote (a marked Parquet log), or anything with ``force`` (:mod:`oirl._outputs`)."""
    log_format(path)  # a bad extension fails here, in one line
    return check_replaceable(path, is_oirl_parquet, force=force)


def write_import(frame: pd.DataFrame, out: Path, summary: dict, *, force: bool = False) -> dict:
    """Write the log atomically (under the rule of :func:`check_output_file`) and return the summary with its counts."""
    write_logs(frame, out, force=force)
    arms = frame.groupby("prompt_id", sort=False)["reward"].agg(["size", "mean"])
    return {"file": str(out), "rows": int(len(frame)), "queries": int(frame["query_id"].nunique()), "arms": int(len(arms)),
            **summary, "mean_reward": {str(a): round(float(m), 6) for a, m in arms["mean"].items()}}
