"""Several logs as one: an evaluation harness's full log with a deployment's exported
decisions, or the decisions of every round so far.

The logs must agree on the optional numeric columns, with one exception that the
feedback loop needs: a full-information log (every prompt logged for every instance)
without propensities next to logs that have them gets its implied ones, uniform over
each instance's logged prompts (1 / m_i), which is what an evaluation harness's log means
to an off-policy estimator. A partial log without propensities cannot be combined with
logs that have them (its logger is unknown). Columns only some logs have (e.g. the
exports' ``candidate_ids``) are empty on the other logs' rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from oirl.data.schema import coverage, validate_logs
from oirl.errors import LogFormatError


def combine_logs(frames: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """Canonical frames (one per log, already validated) as one canonical frame."""
    frames = list(frames)
    if len(frames) == 1:
        return frames[0]
    having = [s for s, f in zip(sources, frames, strict=True) if "cost" in f.columns]
    if having and len(having) != len(frames):
        lacking = next(s for s, f in zip(sources, frames, strict=True) if "cost" not in f.columns)
        raise LogFormatError(f"{having[0]} has a 'cost' column and {lacking} has none; give every log the same optional columns")
    if any("propensity" in f.columns for f in frames):
        frames = [_with_propensities(f, s) for f, s in zip(frames, sources, strict=True)]
    merged = pd.concat(frames, ignore_index=True)
    text = [c for c in merged.columns if c not in ("reward", "cost", "propensity")]
    merged[text] = merged[text].fillna("")  # a column of some logs only
    return validate_logs(merged, source=" + ".join(sources))


def _with_propensities(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` with a propensity on every row: its own, or the implied uniform ones of a full log."""
    if "propensity" in frame.columns:
        return frame
    if coverage(frame) != "full":
        raise LogFormatError(f"{source}: a partial log without a propensity column cannot be combined with logs that have "
                             "one (its logger is unknown); give it the propensities its logger used")
    logged = frame.groupby("query_id")["prompt_id"].transform("nunique")
    return frame.assign(propensity=1.0 / logged)
