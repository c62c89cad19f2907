"""Off-policy estimates of every policy in an evaluation report (:mod:`oirl.ope.estimators`).

Each policy's block says how much of it the log can speak for: ``support``, the share
of evaluated decisions whose pick the logger could have played (a positive logging
probability among the candidates offered). Where support is below one, the log holds
nothing about the unsupported picks: IPS and SNIPS would silently count them as zero,
so they are refused (``null`` with the reason); DM and DR fill them in with the reward
model (``"extrapolated": true`` with the ``unsupported_share``), and their interval is
the identified set widened by what the log cannot tell: each unsupported pick's reward
anywhere in [0, 1]. No estimate is certain about a prompt that was never played.
Estimates and intervals are reported within [0, 1]; where that moved a figure, its block
says so (``clamped``, with the raw figures).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.matrix import LogMatrix
from oirl.errors import OirlError
from oirl.evaluation.scored import ScoredLogs
from oirl.learn.candidates import spec
from oirl.learn.crossfit import cross_fit, make_folds
from oirl.learn.logging_policy import near_deterministic_note
from oirl.ope import estimators as ope

REFUSED_WITHOUT_SUPPORT = "the logger never played this policy's pick on some decisions (support < 1): IPS and SNIPS would count them as zero"
#: Estimators that read nothing but the logged rounds (no reward model to extrapolate with).
ROUND_ONLY = ("ips", "snips")


def ope_report(rec, logs: pd.DataFrame, scored: ScoredLogs, *, cost_weights: list[float] | None = None, n_boot: int = 1000,
               source: str = "<logs>") -> dict[str, Any]:
    """Off-policy estimates of every policy oirl can run on the logged rounds.

    Policies: ``argmax``, ``conservative``, ``fallback``, ``cost-aware@<lambda>`` (with
    costs) and ``prompt:<id>``; each picks among the candidates each decision offered.
    The reward model inside DM and DR is the bundle's when none of the evaluated
    instances was trained on (its predictions are then independent of these rewards),
    else the bundle's model kind cross-fitted on the evaluated log. Intervals resample
    questions, and are reported within the reward's range [0, 1].
    """
    n, m = scored.rewards.shape
    policies = {name: scored.policy_picks(name) for name in ("argmax", "conservative", "fallback")}
    for weight in cost_weights or []:
        policies[f"cost-aware@{weight:g}"] = scored.policy_picks("cost-aware", cost_weight=float(weight))
    policies.update({f"prompt:{p}": np.full(n, j) for j, p in enumerate(scored.prompt_ids) if scored.available[:, j].all()})
    q_hat, model_note = reference_scores(rec, logs, scored)
    rounds = ope.logged_rounds(scored.rewards, scored.propensity)
    clusters = scored.questions[rounds.instance]
    supported = np.ones((n, m), dtype=bool) if scored.supported is None else scored.supported
    estimates: dict[str, dict[str, Any]] = {}
    for name, picks in policies.items():
        on_support = supported[np.arange(n), picks]
        estimates[name] = policy_estimates(picks, rounds, q_hat, on_support, clusters, n_boot)
    low = {name: block["support"] for name, block in estimates.items() if block["support"] < 1}
    if low:
        shown = ", ".join(f"{name} {share:.3f}" for name, share in list(low.items())[:4]) + (" …" if len(low) > 4 else "")
        warnings.warn(f"{source}: {len(low)} policies pick prompts the logger never played on some decisions (support {shown}); "
                      "their IPS and SNIPS are refused and DM/DR extrapolate with the reward model", stacklevel=3)
    note = near_deterministic_note(scored.logger) if scored.logger else None
    if note:
        warnings.warn(f"{source}: propensities estimated from the queries{note}", stacklevel=3)
    logger = None if scored.logger is None else {**scored.logger, "near_deterministic": note[2:] if note else None}
    return {"rounds": int(len(rounds.reward)), "reward_model": model_note, "dr_rests_on": interval_basis(scored, model_note),
            "clusters": "questions (oirl.data.questions)",
            "candidates": scored.candidate_set, "propensities": scored.propensity_source, "logger": logger, "estimates": estimates}


def policy_estimates(picks: np.ndarray, rounds: ope.Rounds, q_hat: np.ndarray, on_support: np.ndarray, clusters: np.ndarray,
                     n_boot: int) -> dict[str, Any]:
    """One deterministic policy's estimates: ``picks`` (n,), ``on_support`` (n,) whether the
    logger could have played each pick; see the module docstring."""
    n, m = q_hat.shape
    dist = {"policy": ope.one_hot(picks, m)}
    found = ope.evaluate_policies(dist, rounds, q_hat, clusters=clusters, n_boot=n_boot)["policy"]
    support = float(on_support.mean())
    block: dict[str, Any] = {"support": support}
    if support >= 1:
        return block | {name: within_range(value) for name, value in found.items()}
    unsupported = np.flatnonzero(~on_support)
    bounds = []
    for fill in (0.0, 1.0):  # the unsupported picks' rewards at either end of [0, 1]
        filled = q_hat.copy()
        filled[unsupported, picks[unsupported]] = fill
        bounds.append(ope.evaluate_policies(dist, rounds, filled, clusters=clusters, n_boot=n_boot)["policy"])
    for name, value in found.items():
        if name in ROUND_ONLY:
            block[name] = {"value": None, "ci": None, "refused": REFUSED_WITHOUT_SUPPORT}
        else:
            ci = [bounds[0][name]["ci"][0], bounds[1][name]["ci"][1]]
            block[name] = within_range({"value": value["value"], "ci": ci}) | {"extrapolated": True, "unsupported_share": 1 - support}
    return block


def within_range(estimate: dict[str, Any], low: float = 0.0, high: float = 1.0) -> dict[str, Any]:
    """An estimate and its interval reported within the range its quantity can take (a mean
    reward within [0, 1]: IPS and DR on a few rounds with small propensities can pass 1).
    Never silently: when a clamp moved anything, ``clamped`` keeps the raw figures."""
    ci, value = estimate["ci"], estimate["value"]
    finite_value = value is not None and np.isfinite(value)
    finite_ci = ci is not None and np.isfinite(ci).all()
    out = {**estimate,
           "value": float(np.clip(value, low, high)) if finite_value else value,
           "ci": [float(np.clip(ci[0], low, high)), float(np.clip(ci[1], low, high))] if finite_ci else ci}
    if (finite_value and out["value"] != value) or (finite_ci and out["ci"] != [float(ci[0]), float(ci[1])]):
        out["clamped"] = {"into": [low, high], "value": float(value) if finite_value else value,
                          "ci": [float(ci[0]), float(ci[1])] if finite_ci else ci}
    return out


def reference_scores(rec, logs: pd.DataFrame, scored: ScoredLogs) -> tuple[np.ndarray, str]:
    """The reward model inside DM and DR, (n, k), and what it rests on: the note names how
    many evaluated instances have a question the model was trained on (other samples of
    the same question: its predictions there draw on that question's training outcomes)."""
    if rec.model is None:
        return scored.scores, "the bundle's prior (it has no reward model)"
    if rec.trained_on_instances(scored.query_ids).any():
        return cross_fitted_scores(rec, logs, scored), "the bundle's model kind, cross-fitted on the evaluated log (3 folds by question)"
    seen, n = int(scored.seen.sum()), len(scored.seen)
    if not seen:
        return scored.scores, "the bundle's model, trained on other questions (none of the evaluated ones)"
    return scored.scores, (f"the bundle's model, trained on other rows of the same questions for {seen} of the {n} evaluated "
                           "query instances: its predictions there draw on those questions' training outcomes, not on these rows")


def interval_basis(scored: ScoredLogs, model_note: str) -> str:
    """What a DR estimate and its interval rest on, in words for the report."""
    if scored.full_information and scored.propensity is None:
        return "the logged rewards of the picks (full information); the interval resamples questions"
    return (f"the logged rewards weighted by the {scored.propensity_source} propensities, corrected by the reward model "
            f"({model_note}), held fixed while the interval resamples questions; on decisions the log does not support, "
            "the reward model alone, and the interval is widened to the identified set")


def cross_fitted_scores(rec, logs: pd.DataFrame, scored: ScoredLogs, n_folds: int = 3) -> np.ndarray:
    """Out-of-fold predictions (n_instances, n_candidates) of the bundle's model kind fit on
    ``logs``; candidates the log never holds keep the bundle's scores."""
    params = rec.model.get_params()
    matrix = LogMatrix.from_logs(logs[logs["prompt_id"].isin(scored.prompt_ids)], rec.query_embedder.embed, question_key=rec.question_key)
    try:
        folds = make_folds(matrix, n_folds, "text")
    except OirlError as exc:
        raise OirlError(f"off-policy estimates on rows the bundle was trained on need its model cross-fitted on the evaluated "
                        f"log: {exc}") from None
    fit = cross_fit(spec(rec.model.name, 1, rec.layout, **params), matrix, folds)
    rows = pd.Index(matrix.query_ids).get_indexer(scored.query_ids)
    cols = pd.Index(matrix.prompt_ids).get_indexer(scored.prompt_ids)
    out = scored.scores.copy()
    known = cols >= 0
    out[:, known] = fit.scores[np.ix_(rows, cols[known])]
    return out
