"""``oirl evaluate NEW LOG --against CURRENT``: is the retrained bundle better than the deployed one?

Both bundles' default policies pick for every evaluated decision (each among the
candidates it holds that the decision offered); the log values each pick by the doubly
robust estimate (the logged reward itself with full information), with the same
reference reward model for both, so the per-decision difference is paired; its mean comes
with a 95% interval that resamples questions. ``support`` says on what share of decisions
the log can speak for both picks; where it cannot, the point estimate rests on the reward
model and the interval is the identified set, as in every ``ope`` block (each unsupported
pick's reward anywhere in [0, 1]: ``extrapolated`` with the ``unsupported_share``). The
values are reported within their range ([0, 1], the difference [-1, 1]), with the raw
figures under ``clamped`` when that moved them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from oirl.errors import OirlError
from oirl.evaluation.offpolicy import interval_basis, reference_scores, within_range
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
    rows = np.arange(n)
    supported = np.ones((n, m), dtype=bool) if scored.supported is None else scored.supported
    picks = {"new": new_picks, "current": current_picks}
    on_support = {name: supported[rows, p] for name, p in picks.items()}

    def values(fill: dict[str, float | None]) -> dict[str, np.ndarray]:
        """Per-decision DR values, the unsupported picks' reward set to ``fill[name]`` (None: the model's)."""
        out = {}
        for name, p in picks.items():
            q = q_hat
            if fill[name] is not None:
                q = q_hat.copy()
                q[rows[~on_support[name]], p[~on_support[name]]] = fill[name]
            out[name] = ope.per_instance(rounds, ope.dr(rounds, ope.one_hot(p, m), q), n)
        return out

    point = values({"new": None, "current": None})
    both = on_support["new"] & on_support["current"]
    difference = point["new"] - point["current"]
    mean, low, high = cluster_bootstrap_mean(difference, scored.questions, n_boot=n_boot)
    block: dict[str, Any] = {"value": mean, "ci": [low, high]}
    if not both.all():  # the identified set: each unsupported pick's reward anywhere in [0, 1], as in every ope block
        same = new_picks == current_picks  # one pick, one value: the difference is 0 whatever the reward
        worst, best = values({"new": 0.0, "current": 1.0}), values({"new": 1.0, "current": 0.0})
        low = cluster_bootstrap_mean(np.where(same, difference, worst["new"] - worst["current"]), scored.questions, n_boot=n_boot)[1]
        high = cluster_bootstrap_mean(np.where(same, difference, best["new"] - best["current"]), scored.questions, n_boot=n_boot)[2]
        block = {"value": mean, "ci": [low, high], "extrapolated": True, "unsupported_share": float(1 - both.mean())}
    extrapolated = {name: not on_support[name].all() for name in picks}
    return {
        name: {"default_policy": rec.default_policy,
               **{k: v for k, v in within_range({"value": float(point[name].mean()), "ci": None}).items() if k != "ci"},
               "model_version": rec.fingerprint, **({"extrapolated": True} if extrapolated[name] else {})}
        for name, rec in (("new", new), ("current", current))
    } | {
        "difference": within_range(block, -1.0, 1.0) | {"level": 0.95, "clusters": "questions",
                                                        "rests_on": interval_basis(scored, model_note)},
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

