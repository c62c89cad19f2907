"""Offline evaluation: how well a selector picks prompts, and how good its reward model is.

Selection is scored on logged outcomes: for each query instance, the logged reward of
the prompt a policy picks (only prompts logged for that query are candidates). The
reference points are the best single prompt chosen on *training* data, the oracle
(per-query best logged prompt), and the expected value of a uniformly random pick.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from oirl.errors import OirlError
from oirl.select import POLICIES, choose, policy_value


def reward_matrix(frame: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """Pivot logs to (query ids, prompt ids, rewards of shape (n_q, n_p) with NaN where unlogged)."""
    pivot = frame.pivot(index="query_id", columns="prompt_id", values="reward")
    return list(pivot.index), list(pivot.columns), pivot.to_numpy(dtype=np.float64)


def classification_metrics(rewards: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Reward-model quality on rows: ``rewards`` and predicted ``scores``, both shape (n,).

    A row counts as correct when its reward is >= 0.5 (soft rewards included); the Brier
    score and calibration error compare scores with the rewards themselves.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    y = rewards >= 0.5
    predicted = scores >= 0.5
    both_classes = 0 < y.sum() < len(y)
    return {
        "rows": int(len(y)),
        "accuracy": float(accuracy_score(y, predicted)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, scores)) if both_classes else None,
        "brier": float(np.mean((scores - rewards) ** 2)),
        "calibration_error": expected_calibration_error(rewards, scores),
    }


def expected_calibration_error(rewards: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """Mean |mean score - mean reward| over equal-width score bins, weighted by bin size."""
    bins = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(scores[in_bin].mean() - rewards[in_bin].mean())
    return float(error)


def selection_report(
    scores: np.ndarray,
    rewards: np.ndarray,
    prompt_ids: list[str],
    *,
    prior: np.ndarray,
    in_bundle: np.ndarray,
    margin: float,
    threshold: float,
    cost: np.ndarray | None = None,
    cost_weight: float = 0.0,
) -> dict:
    """Success rate of every policy and of the reference points on one reward matrix.

    ``scores`` and ``rewards`` have shape (n_q, n_p); cells where ``rewards`` is NaN
    (prompt not logged for that query) are not candidates.
    """
    logged = ~np.isnan(rewards)
    filled = np.where(logged, rewards, 0.0)
    per_prompt = {p: float(np.nanmean(rewards[:, j])) for j, p in enumerate(prompt_ids)}

    known = ~np.isnan(prior)
    if known.any():
        best_train = int(np.where(known, prior, -np.inf).argmax())
        best_single_id, best_single = prompt_ids[best_train], per_prompt[prompt_ids[best_train]]
    else:  # no candidate was ever trained on: nothing to choose "on training data"
        best_single_id, best_single = None, float("nan")
    oracle = float(np.nanmax(rewards, axis=1).mean())
    random = float(np.nanmean(rewards, axis=1).mean())

    context = {"prior": prior, "margin": margin, "in_bundle": in_bundle, "threshold": threshold, "cost": cost, "cost_weight": cost_weight}
    names = [name for name in POLICIES if name != "cost-aware" or cost is not None]
    policies = {name: policy_value(choose(name, scores, mask=logged, **context), filled) for name in names}
    gap = oracle - best_single
    return {
        "queries": int(len(rewards)),
        "policies": policies,
        "best_single_prompt": {"prompt_id": best_single_id, "success_rate": best_single, "chosen_on": "training data"},
        "oracle": oracle,
        "random": random,
        "gap_recovered": {name: (value - best_single) / gap if gap > 0 else None for name, value in policies.items()},
        "prompts": per_prompt,
    }


def cost_sweep(scores: np.ndarray, rewards: np.ndarray, cost: np.ndarray, cost_weights: np.ndarray, prior: np.ndarray | None = None) -> pd.DataFrame:
    """The reward-cost curve of the cost-aware policy over ``cost_weights`` (lambda).

    ``scores`` and ``rewards`` (n_q, n_c), ``cost`` (n_c,). Returns one row per lambda
    with the mean logged reward and the mean cost of the chosen candidates.
    """
    logged = ~np.isnan(rewards)
    rows = np.arange(len(rewards))
    out = []
    for weight in cost_weights:
        picks = choose("cost-aware", scores, mask=logged, cost=cost, cost_weight=float(weight), prior=prior)
        out.append({"cost_weight": float(weight), "reward": float(rewards[rows, picks].mean()), "cost": float(cost[picks].mean())})
    return pd.DataFrame(out)


def reward_cost_area(points: pd.DataFrame, cost_range: tuple[float, float]) -> float:
    """Normalised area under a reward-cost curve: the mean, over budgets spread evenly
    across ``cost_range``, of the best reward reached at no more than that cost.

    The curve is the upper-left frontier of the ``points`` (columns ``cost`` and
    ``reward``); below its cheapest point the reward counts as 0. 1.0 would be a
    perfect reward at the lowest cost.
    """
    low, high = cost_range
    budgets = np.linspace(low, high, 512)
    cost, reward = points["cost"].to_numpy(), points["reward"].to_numpy()
    best = np.array([reward[cost <= b + 1e-12].max() if (cost <= b + 1e-12).any() else 0.0 for b in budgets])
    return float(best.mean())


def plot_reward_cost(curves: dict[str, pd.DataFrame], arms: pd.DataFrame, path, title: str) -> None:
    """Reward vs mean cost per query: one line per curve, single arms as labelled points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oirl._plots import save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, curve in curves.items():
        ordered = curve.sort_values("cost")
        ax.plot(ordered["cost"], ordered["reward"], "-o", markersize=3, label=label)
    ax.scatter(arms["cost"], arms["reward"], s=14, c="grey", label="single arms", zorder=3)
    for _, arm in arms.nlargest(6, "reward").iterrows():
        ax.annotate(str(arm["prompt_id"]), (arm["cost"], arm["reward"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("mean cost per query (milli-dollars, symlog)")
    ax.set_ylabel("expected reward")
    save_figure(fig, ax, path, title)


@dataclass
class ScoredLogs:
    """Evaluated logs as matrices with a recommender's scores.

    ``rewards`` and ``scores`` have shape (n_instances, n_prompts), rewards NaN where
    a prompt was not logged for an instance (such cells are never candidates);
    ``texts`` and ``seen`` (n_instances,) hold each instance's question and whether
    that question occurred in training; ``context`` is the policies' context.
    """

    query_ids: list[str]
    texts: np.ndarray
    prompt_ids: list[str]
    rewards: np.ndarray
    scores: np.ndarray
    context: dict[str, Any]
    seen: np.ndarray
    propensity: np.ndarray | None = None  # (n_instances, n_prompts), NaN where not logged

    @property
    def full_information(self) -> bool:
        return bool(self.logged.all())

    @property
    def logged(self) -> np.ndarray:
        return ~np.isnan(self.rewards)

    def picks(self, policy: str, *, mask: np.ndarray | None = None, **overrides: Any) -> np.ndarray:
        """(n,) the column each instance's pick lands on under ``policy`` (among logged
        prompts, and within ``mask`` if given)."""
        available = self.logged if mask is None else self.logged & mask
        return choose(policy, self.scores, mask=available, **{**self.context, **overrides})

    def policy_picks(self, policy: str, **overrides: Any) -> np.ndarray:
        """(n,) the pick among *every* candidate, logged or not (what a deployed policy does;
        off-policy estimators value it)."""
        return choose(policy, self.scores, **{**self.context, **overrides})

    def values(self, policy: str, *, mask: np.ndarray | None = None, **overrides: Any) -> np.ndarray:
        """(n,) the logged reward of each instance's pick."""
        return self.rewards[np.arange(len(self.rewards)), self.picks(policy, mask=mask, **overrides)]


def score_logs(rec, logs: pd.DataFrame, candidates: list | None = None, *, costs: dict[str, float] | None = None) -> ScoredLogs:
    """Score every logged query instance with every prompt of ``logs`` (restricted to
    ``candidates`` if given). Costs come from ``costs``, else the logs' ``cost`` column,
    else the bundle."""
    from oirl.recommender import Candidate

    if candidates is not None:
        keep = {c.prompt_id for c in rec.resolve_candidates(candidates)} | {c.prompt_id for c in candidates}
        logs = logs[logs["prompt_id"].isin(keep)]
        if logs.empty:
            raise OirlError("none of the candidates occur in the evaluated logs")
    query_ids, prompt_ids, rewards = reward_matrix(logs)
    prompt_table = logs.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    eval_candidates = [Candidate(prompt_table[p], p) for p in prompt_ids]
    text_of = logs.drop_duplicates("query_id").set_index("query_id")["query"]
    instance_texts = text_of.loc[query_ids].to_numpy(dtype=str)
    texts, inverse = np.unique(instance_texts, return_inverse=True)
    scores = rec.score(list(texts), eval_candidates)[inverse.ravel()]
    seen = rec.seen_in_training(texts)[inverse.ravel()]
    logged_costs = logs.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in logs.columns else {}
    context = rec.policy_context(eval_candidates, costs={**logged_costs, **(costs or {})})
    propensity = None
    if "propensity" in logs.columns:
        propensity = logs.pivot(index="query_id", columns="prompt_id", values="propensity").loc[query_ids, prompt_ids].to_numpy(dtype=np.float64)
    return ScoredLogs(query_ids, instance_texts, prompt_ids, rewards, scores, context, seen, propensity)


def evaluate_recommender(
    rec, logs: pd.DataFrame, candidates: list | None = None, *, costs: dict[str, float] | None = None,
    cost_weights: list[float] | None = None, source: str = "<logs>", n_boot: int = 1000,
) -> dict[str, Any]:
    """Selection and reward-model metrics of a recommender on logged outcomes.

    Candidates default to the prompts in ``logs``; passed candidates restrict them.
    With costs known for every prompt, ``cost_weights`` sweeps the cost-aware policy
    (``cost_sweep`` in the report, with single prompts as points). The report says how
    many evaluated queries occurred among the training queries (and warns when any
    did: their scores are not those of new queries). Every report carries off-policy
    estimates (``ope``, :func:`ope_report`); on a partial-feedback log they replace the
    full-information figures, which are ``null`` with a ``refused`` note.
    """
    from oirl.bundle import json_safe

    scored = score_logs(rec, logs, candidates, costs=costs)
    warn_if_seen(source, scored.seen)
    rewards, scores, logged, context = scored.rewards, scored.scores, scored.logged, scored.context
    cost = None if np.isnan(context["cost"]).any() else context["cost"]  # a partial cost table cannot rank every candidate
    if scored.full_information:
        report = selection_report(
            scores, rewards, scored.prompt_ids, prior=context["prior"], in_bundle=context["in_bundle"],
            margin=rec.margin, threshold=rec.threshold, cost=cost,
        )
    else:
        report = partial_feedback_report(scored)
    report["feedback"] = "full" if scored.full_information else "partial"
    report["default_policy"] = rec.default_policy
    report["seen_in_training"] = {"query_instances": int(scored.seen.sum()), "of": int(len(scored.seen))}
    report["reward_model"] = classification_metrics(rewards[logged], scores[logged])
    report["conservative_margin"] = None if np.isinf(rec.margin) else rec.margin
    report["ope"] = ope_report(rec, logs, scored, cost_weights=cost_weights if cost is not None else None, n_boot=n_boot)
    report["model_selection"] = rec.metadata.get("metrics", {}).get("model_selection")
    if cost is not None and cost_weights and scored.full_information:
        report["cost_sweep"] = cost_sweep_report(scores, rewards, scored.prompt_ids, cost, cost_weights, context["prior"])
    return json_safe(report)


def warn_if_seen(source: str, seen: np.ndarray) -> None:
    """Warn when evaluated query instances have a question text the model was trained on."""
    if seen.any():
        warnings.warn(f"{source}: {int(seen.sum())} of {len(seen)} evaluated query instances have a question text "
                      "the model was trained on; their success rates measure memory as much as generalisation", stacklevel=3)


def cost_sweep_report(scores: np.ndarray, rewards: np.ndarray, prompt_ids: list[str], cost: np.ndarray,
                      cost_weights: list[float], prior: np.ndarray) -> dict[str, Any]:
    """The cost-aware policy's reward-cost curve over ``cost_weights``, its normalised
    area, and the single prompts as points (full-information logs)."""
    curve = cost_sweep(scores, rewards, cost, np.asarray(cost_weights), prior)
    arms = pd.DataFrame({"prompt_id": prompt_ids, "reward": np.nanmean(rewards, axis=0), "cost": cost})
    span = (float(cost.min()), float(cost.max()))
    return {
        "curve": curve.to_dict(orient="records"),
        "area": reward_cost_area(curve, span),
        "single_prompts": arms.to_dict(orient="records"),
        "single_prompts_area": reward_cost_area(arms, span),
        "cost_range": list(span),
    }


REFUSED_ON_PARTIAL = (
    "a partial-feedback log holds one (or a few) prompts per query: the best logged prompt of a query is not its best "
    "prompt, and a policy's pick is mostly not logged; see the off-policy estimates under 'ope'"
)


def partial_feedback_report(scored: ScoredLogs) -> dict[str, Any]:
    """What can be said without every prompt logged: counts and the logged means only."""
    logged = scored.logged
    known = ~np.isnan(scored.context["prior"])
    best = scored.prompt_ids[int(np.where(known, scored.context["prior"], -np.inf).argmax())] if known.any() else None
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


def ope_report(rec, logs: pd.DataFrame, scored: ScoredLogs, *, cost_weights: list[float] | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Off-policy estimates of every policy oirl can run on the logged rounds (:mod:`oirl.ope`).

    Policies: ``argmax``, ``conservative``, ``fallback``, ``cost-aware@<lambda>`` (with
    costs) and ``prompt:<id>``; each picks among *all* candidates. The reward model
    inside DM and DR is the bundle's when none of the evaluated instances was trained
    on (its predictions are then independent of these rewards), else the bundle's model
    kind cross-fitted on the evaluated log. Intervals resample question texts. A partial
    log without propensities gets the direct method only.
    """
    from oirl import ope

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
    from oirl.crossfit import cross_fit, make_folds, spec
    from oirl.features import LogMatrix

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
