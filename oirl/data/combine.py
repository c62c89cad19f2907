"""Several logs as one: an evaluation harness's full log with a deployment's exported
decisions, or the decisions of every round so far.

The logs must agree on the optional numeric columns, with one exception that the
feedback loop needs: a full-information log (every prompt logged for every instance)
without propensities next to logs that have them gets its implied ones, uniform over
each instance's logged prompts (1 / m_i), which is what an evaluation harness's log means
to an off-policy estimator. A partial log without propensities cannot be combined with
logs that have them (its logger is unknown). Columns only some logs have (e.g. the
exports' ``candidate_ids``) are empty on the other logs' rows. Query ids are per log
unless the logs agree on the question (:func:`_ids_apart`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from oirl.data.questions import QuestionKey
from oirl.data.schema import check_rows, coverage
from oirl.errors import LogFormatError


def combine_logs(frames: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """Canonical frames (one per log, already validated) as one canonical frame. Each row's
    cells were parsed when its log was read; only the checks across rows run again, on the
    merge (one id one text, duplicates across logs averaged, propensity sums)."""
    frames = list(frames)
    if len(frames) == 1:
        return frames[0]
    having = [s for s, f in zip(sources, frames, strict=True) if "cost" in f.columns]
    if having and len(having) != len(frames):
        lacking = next(s for s, f in zip(sources, frames, strict=True) if "cost" not in f.columns)
        raise LogFormatError(f"{having[0]} has a 'cost' column and {lacking} has none; give every log the same optional columns")
    frames = _ids_apart(frames, sources)
    if any("propensity" in f.columns for f in frames):
        frames = [_with_propensities(f, s) for f, s in zip(frames, sources, strict=True)]
    merged = pd.concat(frames, ignore_index=True)
    text = [c for c in merged.columns if c not in ("reward", "cost", "propensity")]
    merged[text] = merged[text].fillna("")  # a column of some logs only
    return check_rows(merged, source=" + ".join(sources))


def _ids_apart(frames: list[pd.DataFrame], sources: Sequence[str]) -> list[pd.DataFrame]:
    """Query ids are per log unless the logs agree on the question: a query_id that names
    different questions (up to Unicode form and whitespace) in two logs gets each log's
    name in front (``<log>/<id>``) in every log that has it, with a warning. Tools number
    their cases alike (promptfoo ``test-0``, lm-eval ``doc-0``); merged, two questions'
    rewards would be averaged into one instance. Ids whose question agrees stay shared
    (a harness log and the decisions on the same instances)."""
    firsts = pd.concat([f.drop_duplicates("query_id")[["query_id", "query"]].assign(log=i) for i, f in enumerate(frames)], ignore_index=True)
    shared = firsts[firsts.duplicated("query_id", keep=False)]
    if shared.empty:
        return frames
    question = QuestionKey(casefold=False)
    questions = shared.assign(key=shared["query"].map(question)).groupby("query_id", sort=False)["key"].nunique()
    clashing = questions[questions > 1].index
    if clashing.empty:
        return frames
    stems = [Path(s).stem or f"log{i + 1}" for i, s in enumerate(sources)]
    tags = stems if len(set(stems)) == len(stems) else [f"log{i + 1}" for i in range(len(sources))]
    out = []
    for tag, frame in zip(tags, frames, strict=True):
        hit = frame["query_id"].isin(clashing)
        out.append(frame.assign(query_id=frame["query_id"].where(~hit, tag + "/" + frame["query_id"])) if hit.any() else frame)
    warnings.warn(f"{' + '.join(sources)}: {len(clashing):,} query id(s) name different questions in different logs (e.g. "
                  f"{clashing[0]!r}); each log's are kept apart as '<log>/<id>' (logs: {', '.join(tags)})", stacklevel=3)
    return out


def _with_propensities(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` with a propensity on every row: its own, or the implied uniform ones of a full log."""
    if "propensity" in frame.columns:
        return frame
    if coverage(frame) != "full":
        raise LogFormatError(f"{source}: a partial log without a propensity column cannot be combined with logs that have "
                             "one (its logger is unknown); give it the propensities its logger used")
    logged = frame.groupby("query_id")["prompt_id"].transform("nunique")
    return frame.assign(propensity=1.0 / logged)
