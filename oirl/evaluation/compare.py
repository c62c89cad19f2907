"""``oirl evaluate NEW LOG --against CURRENT``: is the retrained bundle better than the deployed one?

Both bundles' default policies pick for every evaluated decision (each among the
candidates it holds that the decision offered); the log values each pick by the doubly
robust estimate (the logged reward itself with full information), with the same
reference reward model for both, so the per-decision difference is paired; its mean comes
with a 95% interval that resamples questions. ``support`` says on what share of decisions
the log can speak for both picks; where it cannot, the difference rests on the reward model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from oirl.errors import OirlError
from oirl.evaluation.offpolicy import reference_scores
from oirl.evaluation.scored import ScoredLogs, score_logs
from oirl.ope import estimators as ope
from oirl.ope.bootstrap import cluster_bootstrap_mean
from oirl.recommender.recommender import Candidate, Recommender


def compare_bundles(new: Recommender, current: Recommender, logs: pd.DataFrame, *, n_boot: int = 2000) -> dict[str, Any]:
    """The off-policy difference (new - current) of the two default policies on ``logs``."""
    scored = score_logs(new, logs)
    new_picks = scored.policy_picks(new.default_policy)
    current_picks = picks_of(current, scored)
    q_hat, model_note = reference_scores(new, logs, scored)
    rounds = ope.logged_rounds(scored.rewards, scored.propensity)
    n, m = scored.rewards.shape
    values = {}
    for name, picks in (("new", new_picks), ("current", current_picks)):
        terms = ope.dr(rounds, ope.one_hot(picks, m), q_hat)
        values[name] = ope.per_instance(rounds, terms, n)
    supported = np.ones((n, m), dtype=bool) if scored.supported is None else scored.supported
    rows = np.arange(n)
    both = supported[rows, new_picks] & supported[rows, current_picks]
    mean, low, high = cluster_bootstrap_mean(values["new"] - values["current"], scored.questions, n_boot=n_boot)
    return {
        "new": {"default_policy": new.default_policy, "value": float(values["new"].mean()), "model_version": new.fingerprint},
        "current": {"default_policy": current.default_policy, "value": float(values["current"].mean()),
                    "model_version": current.fingerprint},
        "difference": {"value": mean, "ci": [low, high], "level": 0.95, "clusters": "questions"},
        "decisions": int(n), "picks_differ": int((new_picks != current_picks).sum()), "support": float(both.mean()),
        "estimator": "logged reward of the pick (full information)" if scored.full_information and scored.propensity is None else "dr",
        "reward_model": model_note, "propensities": scored.propensity_source,
    }


def picks_of(rec: Recommender, scored: ScoredLogs) -> np.ndarray:
    """(n,) the column ``rec``'s default policy picks per instance, among the candidates it
    holds that each decision offered."""
    if scored.prompt_texts is None:
        raise OirlError("the scored logs carry no prompt texts to match the deployed bundle's prompts by")
    held = {p.prompt: p.prompt_id for p in rec.prompts}
    order = {p.prompt: i for i, p in enumerate(rec.prompts)}  # its own order: exact ties go to its first prompt
    texts = scored.prompt_texts
    columns = sorted((j for j, text in enumerate(texts) if text in held), key=lambda j: order[texts[j]])
    if not columns:
        raise OirlError("--against: the deployed bundle holds none of the evaluated candidates")
    candidates = [Candidate(texts[j], held[texts[j]]) for j in columns]
    unique, inverse = np.unique(scored.texts, return_inverse=True)
    scores = rec.score(list(unique), candidates)[inverse.ravel()]
    chosen = rec.policy(None, candidates).choose(scores, scored.available[:, columns])
    return np.asarray(columns)[chosen]

