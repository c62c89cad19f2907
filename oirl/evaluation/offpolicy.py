"""Off-policy estimates of every policy in an evaluation report (:mod:`oirl.ope.estimators`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from oirl.errors import OirlError
from oirl.evaluation.scored import ScoredLogs


def ope_report(rec, logs: pd.DataFrame, scored: ScoredLogs, *, cost_weights: list[float] | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Off-policy estimates of every policy oirl can run on the logged rounds (:mod:`oirl.ope.estimators`).

    Policies: ``argmax``, ``conservative``, ``fallback``, ``cost-aware@<lambda>`` (with
    costs) and ``prompt:<id>``; each picks among *all* candidates. The reward model
    inside DM and DR is the bundle's when none of the evaluated instances was trained
    on (its predictions are then independent of these rewards), else the bundle's model
    kind cross-fitted on the evaluated log. Intervals resample question texts. A partial
    log without propensities gets the direct method only.
    """
    from oirl.ope import estimators as ope

    n, m = scored.rewards.shape
    policies = {name: scored.policy_picks(name) for name in ("argmax", "conservative", "fallback")}
    for weight in cost_weights or []:
        policies[f"cost-aware@{weight:g}"] = scored.policy_picks("cost-aware", cost_weight=float(weight))
    policies.update({f"prompt:{p}": np.full(n, j) for j, p in enumerate(scored.prompt_ids)})
    dists = {name: ope.one_hot(picks, m) for name, picks in policies.items()}
    trained_on = rec.trained_on_instances(scored.query_ids)
    if trained_on.any():
        q_hat, model_note = cross_fitted_scores(rec, logs, scored), "the bundle's model kind, cross-fitted on the evaluated log (3 folds by question text)"
    else:
        q_hat, model_note = scored.scores, "the bundle's model (trained on other rows)"
    has_propensities = scored.propensity is not None or scored.full_information
    estimators = tuple(ope.ESTIMATORS) if has_propensities else ("dm",)
    rounds = ope.logged_rounds(scored.rewards, scored.propensity)
    clusters = scored.texts[rounds.instance]
    estimates = ope.evaluate_policies(dists, rounds, q_hat, estimators=estimators, clusters=clusters, n_boot=n_boot)
    block: dict[str, Any] = {"rounds": int(len(rounds.reward)), "reward_model": model_note, "clusters": "question texts",
                             "propensities": "logged" if scored.propensity is not None else
                             ("implied: uniform over each query's logged prompts (full information)" if scored.full_information else None),
                             "estimates": estimates}
    if not has_propensities:
        warnings.warn("partial feedback without a propensity column: only the direct method (dm), which is biased where "
                      "the reward model is", stacklevel=3)
        block["refused"] = {"ips, snips, dr, switch-dr, dr-os": "the log has no propensity column"}
    return block


def cross_fitted_scores(rec, logs: pd.DataFrame, scored: ScoredLogs, n_folds: int = 3) -> np.ndarray:
    """Out-of-fold predictions (n_instances, n_prompts) of the bundle's model kind fit on ``logs``."""
    from oirl.data.matrix import LogMatrix
    from oirl.learn.candidates import spec
    from oirl.learn.crossfit import cross_fit, make_folds

    params = {k: v for k, v in rec.model.get_params().items() if k != "dimension"}
    matrix = LogMatrix.from_logs(logs[logs["prompt_id"].isin(scored.prompt_ids)], rec.query_embedder.embed)
    try:
        folds = make_folds(matrix, n_folds, "text")
    except OirlError as exc:
        raise OirlError(f"off-policy estimates on rows the bundle was trained on need its model cross-fitted on the evaluated "
                        f"log: {exc}") from None
    fit = cross_fit(spec(rec.model.name, 1, rec.layout, **params), matrix, folds)
    rows = pd.Index(matrix.query_ids).get_indexer(scored.query_ids)
    cols = pd.Index(matrix.prompt_ids).get_indexer(scored.prompt_ids)
    return fit.scores[np.ix_(rows, cols)]
