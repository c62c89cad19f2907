"""Offline evaluation: how well a selector picks prompts, and how good its reward model is.

On a full-information log (every candidate logged for every query instance) selection
is scored on logged outcomes: for each instance, the logged reward of the prompt a
policy picks. The reference points are the best single prompt chosen on *training*
data, the oracle (per-query best logged prompt), and the expected value of a uniformly
random pick. A partial-feedback log cannot give those figures; every report carries the
off-policy estimates of :mod:`oirl.evaluation.offpolicy`, which say how much of each
policy the log supports. The candidates are the bundle's prompts and the logged ones,
or what each decision offered (:mod:`oirl.evaluation.scored`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from oirl._json import json_safe
from oirl.evaluation.costs import cost_sweep_report
from oirl.evaluation.offpolicy import ope_report
from oirl.evaluation.routing import routing_report
from oirl.evaluation.scored import ScoredLogs, score_logs
from oirl.policy.policies import POLICIES, Policy, policy_value
from oirl.reward.metrics import classification_metrics


def selection_report(scored: ScoredLogs, policies: dict[str, Policy]) -> dict:
    """Success rate of every policy and of the reference points on a full-information log.

    Each policy picks among the candidates logged (and offered) for each instance."""
    rewards = scored.rewards
    available = scored.logged & scored.available
    filled = np.where(scored.logged, rewards, 0.0)
    prompt_ids = scored.prompt_ids
    per_prompt = {p: float(np.nanmean(rewards[:, j])) for j, p in enumerate(prompt_ids)}
    default = scored.context.default
    if default is not None:
        best_single_id, best_single = prompt_ids[default], per_prompt[prompt_ids[default]]
    else:  # no candidate was ever trained on: nothing to choose "on training data"
        best_single_id, best_single = None, float("nan")
    oracle = float(np.nanmax(np.where(available, rewards, np.nan), axis=1).mean())
    random = float(np.nanmean(np.where(available, rewards, np.nan), axis=1).mean())
    values = {name: policy_value(policy.choose(scored.scores, available), filled) for name, policy in policies.items()}
    gap = oracle - best_single
    return {
        "queries": int(len(rewards)),
        "policies": values,
        "best_single_prompt": {"prompt_id": best_single_id, "success_rate": best_single, "chosen_on": "training data"},
        "oracle": oracle,
        "random": random,
        "gap_recovered": {name: (value - best_single) / gap if gap > 0 else None for name, value in values.items()},
        "prompts": per_prompt,
    }


def evaluate_recommender(
    rec, logs: pd.DataFrame, candidates: list | None = None, *, costs: dict[str, float] | None = None,
    cost_weights: list[float] | None = None, source: str = "<logs>", n_boot: int = 1000,
) -> dict[str, Any]:
    """Selection and reward-model metrics of a recommender on logged outcomes.

    Candidates default to the prompts in ``logs``; passed candidates restrict them.
    With costs known for every prompt, ``cost_weights`` sweeps the cost-aware policy
    (``cost_sweep`` in the report, with single prompts as points), and a full-information
    log gets RouteLLM's router metrics (``routing``: PGR, APGR, CPT(50%), CPT(80%) for
    every pair of arms and the whole set, :mod:`oirl.evaluation.routing`); the
    cost-aware policy runs at the bundle's cost weight (``oirl calibrate``), else 0. The report says how
    many evaluated queries occurred among the training queries (and warns when any
    did: their scores are not those of new queries). Every report carries off-policy
    estimates (``ope``, :func:`ope_report`); on a partial-feedback log they replace the
    full-information figures, which are ``null`` with a ``refused`` note.
    """

    scored = score_logs(rec, logs, candidates, costs=costs)
    warn_if_seen(source, scored.seen)
    report = scored_report(rec, scored, cost_weights=cost_weights)
    cost_known = not np.isnan(scored.context.cost).any()
    report["ope"] = ope_report(rec, logs, scored, cost_weights=cost_weights if cost_known else None, n_boot=n_boot, source=source)
    return json_safe(report)


def scored_report(rec, scored: ScoredLogs, *, cost_weights: list[float] | None = None) -> dict[str, Any]:
    """Every part of the report computed from the scored matrices and the bundle alone (all
    but the off-policy estimates): the one implementation both engines call, so that
    ``oirl evaluate`` and ``oirl evaluate --dask`` value every policy alike (the
    cost-aware one at the bundle's cost weight, else 0)."""
    rewards, scores, logged = scored.rewards, scored.scores, scored.logged
    cost = None if np.isnan(scored.context.cost).any() else scored.context.cost  # a partial cost table cannot rank every candidate
    if scored.full_information:
        names = [name for name in POLICIES if name != "cost-aware" or cost is not None]
        report = selection_report(scored, {name: scored.policy(name, cost_weight=rec.cost_weight or 0.0) for name in names})
    else:
        report = partial_feedback_report(scored)
    report["feedback"] = "full" if scored.full_information else "partial"
    report["candidates"] = {"set": scored.candidate_set, "ids": scored.prompt_ids,
                            "never_logged": [p for j, p in enumerate(scored.prompt_ids) if not logged[:, j].any()]}
    report["default_policy"] = rec.default_policy
    report["seen_in_training"] = {"query_instances": int(scored.seen.sum()), "of": int(len(scored.seen))}
    report["reward_model"] = classification_metrics(rewards[logged], scores[logged])
    report["conservative_margin"] = None if np.isinf(rec.margin) else rec.margin
    report["model_selection"] = rec.metadata.get("metrics", {}).get("model_selection")
    if cost is not None and cost_weights and scored.full_information:
        report["cost_sweep"] = cost_sweep_report(scores, rewards, scored.context, cost_weights)
    if cost is not None and scored.full_information:  # RouteLLM's router metrics (oirl.evaluation.routing)
        report["routing"] = routing_report(scores, rewards, scored.context, cost_weight=rec.cost_weight)
    return report


def warn_if_seen(source: str, seen: np.ndarray) -> None:
    """Warn when evaluated query instances have a question text the model was trained on."""
    if seen.any():
        warnings.warn(f"{source}: {int(seen.sum())} of {len(seen)} evaluated query instances have a question text "
                      "the model was trained on; their success rates measure memory as much as generalisation", stacklevel=3)


REFUSED_ON_PARTIAL = (
    "a partial-feedback log holds one (or a few) prompts per query: the best logged prompt of a query is not its best "
    "prompt, and a policy's pick is mostly not logged; see the off-policy estimates under 'ope'"
)


def partial_feedback_report(scored: ScoredLogs) -> dict[str, Any]:
    """What can be said without every prompt logged: counts and the logged means only."""
    logged = scored.logged
    default = scored.context.default
    best = None if default is None else scored.prompt_ids[default]
    return {
        "queries": int(len(scored.rewards)),
        "rounds": int(logged.sum()),
        "policies": None,
        "best_single_prompt": {"prompt_id": best, "success_rate": None, "chosen_on": "training data"},
        "oracle": None,
        "random": None,
        "gap_recovered": None,
        "prompts": {p: {"logged": int(logged[:, j].sum()), "mean_logged_reward": float(np.nanmean(scored.rewards[:, j])) if logged[:, j].any() else None}
                    for j, p in enumerate(scored.prompt_ids)},
        "refused": {key: REFUSED_ON_PARTIAL for key in ("policies", "best_single_prompt.success_rate", "oracle", "random", "gap_recovered")},
    }
