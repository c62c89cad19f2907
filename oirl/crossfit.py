"""Cross-fitting and model selection: which reward model and policy a bundle ships with.

Everything here runs on training rows only. Folds group query instances by question
*text* (``cv_groups="text"``: every held-out question is new, the regime of a new
user's traffic) or by *instance* (``"instance"``: held-out rows are new samples of
questions that may also occur in training, the paper's protocol on SVAMP and MAWPS).

For each candidate reward model, :func:`cross_fit` gives out-of-fold scores of every
held-out instance with every prompt, and the per-prompt prior (mean training reward)
of each fold computed on that fold's training rows only. A policy's cross-validated
*selection value* is the expected reward of its picks on the held-out rows (the logged
reward of the pick with full information, the doubly robust estimate with partial
feedback). :func:`select_model` chooses among "the prior alone" (always the best
training prompt), each candidate's argmax and each candidate's conservative policy by
the one-standard-error rule toward the simpler choice, the standard error clustered by
question text (repeated samples of one question are not independent); the prior is left
only for a gain of more than :data:`PRIOR_Z` standard errors (and :data:`MIN_EFFECT`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oirl.errors import OirlError
from oirl.features import LogMatrix
from oirl.names import CV_GROUPS
from oirl.reward import RewardModel, make_reward_model
from oirl.select import choose

MARGIN_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, float("inf"))
NEW_PROMPT_TAU_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)
#: Smallest gain in expected reward worth a more complex choice, whatever its standard
#: error: two policies that differ on a handful of queries have a tiny standard error,
#: and a 2-query win among thousands is not per-query signal.
MIN_EFFECT = 0.002
#: Leaving the prior (always the best training prompt) takes a gain of more than this
#: many clustered standard errors: the best of dozens of options is picked on the same
#: folds that measure it, so its gain is optimistic (measured: a 2.7-standard-error
#: gain on 199 training questions lost 0.7 points on new queries).
PRIOR_Z = 3.0


@dataclass(frozen=True)
class ModelSpec:
    """One reward-model configuration to try: backend, parameters, feature layout."""

    model: str
    params: tuple[tuple[str, Any], ...] = ()
    layout: str | None = None  # None: the backend's default layout
    complexity: int = 1  # lower is simpler (the one-standard-error rule prefers it)

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.model}({params})" if params else self.model

    def make(self) -> RewardModel:
        return make_reward_model(self.model, **dict(self.params))

    def layout_for(self) -> str:
        return self.layout or self.make().default_layout


def spec(model: str, complexity: int = 1, layout: str | None = None, **params: Any) -> ModelSpec:
    return ModelSpec(model, tuple(sorted(params.items())), layout, complexity)


#: ``--model auto``: the neighbour model over its grid, LightGBM pointwise and on
#: per-query-centred rewards, logistic regression and an MLP on a layout where they
#: can personalise. Complexity orders them for the one-standard-error rule.
AUTO_CANDIDATES: tuple[ModelSpec, ...] = (
    *(spec("knn", 1, k=k, query_tau=t, alpha=a) for k in (5, 20, 50) for t in (0.02, 0.05, 0.1) for a in (0.5, 2.0)),
    spec("logistic", 2),
    spec("lightgbm", 3),
    spec("lightgbm-centred", 4),
    spec("mlp", 5),
)


# --------------------------------------------------------------------------- folds and out-of-fold scores


def make_folds(matrix: LogMatrix, n_folds: int, cv_groups: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold; no group on both sides of a fold."""
    from sklearn.model_selection import GroupKFold

    groups = matrix.groups(cv_groups)
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        what = "distinct query texts" if cv_groups == "text" else "query instances"
        raise OirlError(f"cross-validation needs at least {n_folds} {what}, got {n_groups}")
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(groups)), groups=groups)]


@dataclass
class CrossFit:
    """Out-of-fold scores of one candidate: ``scores`` (n, m) and ``priors`` (n, m),
    row i holding the prompt means of the fold that held instance i out."""

    spec: ModelSpec
    scores: np.ndarray
    priors: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def cross_fit(spec: ModelSpec, matrix: LogMatrix, folds: list[tuple[np.ndarray, np.ndarray]]) -> CrossFit:
    """Score every held-out instance with every prompt by a model that never saw its group."""
    n, m = matrix.rewards.shape
    scores, priors = np.empty((n, m)), np.empty((n, m))
    layout = spec.layout_for()
    for train, test in folds:
        part = matrix.subset(train)
        model = fit_on(spec.make(), part, layout)
        scores[test] = model.predict_grid(matrix.query_vectors[matrix.text_index[test]], matrix.prompt_vectors, layout)
        priors[test] = part.prompt_means()
    check_scores(scores, spec.label)
    return CrossFit(spec, scores, priors, folds)


def fit_on(model: RewardModel, matrix: LogMatrix, layout: str) -> RewardModel:
    """Fit a reward model on the logged cells of ``matrix``."""
    model.set_embedding_dimension(matrix.query_vectors.shape[1])
    return model.fit_matrix(matrix.query_vectors, matrix.text_index, matrix.prompt_vectors, matrix.rewards, layout,
                            sample_weight=matrix.sample_weight)


def check_scores(scores: np.ndarray, where: str) -> None:
    """A NaN or infinite predicted reward is a broken model, never a silent pick."""
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise OirlError(f"{where}: the reward model produced a non-finite score ({scores[row, col]}) for query {row}, prompt {col}")


# --------------------------------------------------------------------------- selection values


def row_values(picks: np.ndarray, matrix: LogMatrix, q_hat: np.ndarray) -> np.ndarray:
    """Estimated reward of each instance's pick, shape (n,).

    Full information: the logged reward of the pick. Partial feedback with
    propensities: doubly robust (:func:`oirl.ope.dr`, averaged over the instance's
    logged rounds; ``q_hat`` must be out-of-fold). Without propensities: the direct
    method, ``q_hat[pick]``.
    """
    from oirl import ope

    rows = np.arange(len(picks))
    if matrix.full_information and matrix.propensity is None:
        return matrix.rewards[rows, picks]
    if matrix.propensity is None:
        return q_hat[rows, picks]
    rounds = ope.logged_rounds(matrix.rewards, matrix.propensity)
    terms = ope.dr(rounds, ope.one_hot(picks, matrix.rewards.shape[1]), q_hat)
    return ope.per_instance(rounds, terms, len(picks))


def policy_values(fit: CrossFit, matrix: LogMatrix, policy: str, margin: float = 0.0) -> np.ndarray:
    """Per-instance CV value of a policy; each fold uses its own prior (tie-breaks, default)."""
    values = np.empty(len(matrix.query_ids))
    for _, test in fit.folds:
        prior = fit.priors[test[0]]
        picks = choose(policy, fit.scores[test], prior=prior, margin=margin)
        values[test] = row_values(picks, matrix.subset(test), fit.scores[test])
    return values


def prior_values(fit: CrossFit, matrix: LogMatrix) -> np.ndarray:
    """Per-instance CV value of always using the best training prompt of the fold."""
    return policy_values(fit, matrix, "conservative", float("inf"))


def one_standard_error_choice(
    values: dict[str, np.ndarray], complexity: dict[str, float], clusters: np.ndarray, min_effect: float = MIN_EFFECT,
) -> tuple[str, dict[str, float]]:
    """The simplest option whose mean value is within one standard error of the best.

    ``values[name]`` (n,) are per-instance values on the same rows; the standard error
    of each paired difference to the best is clustered by ``clusters`` (question
    texts) and never taken below ``min_effect``. Ties in complexity go to the higher
    mean. Returns the choice and each option's standard error against the best.
    """
    means = {name: float(v.mean()) for name, v in values.items()}
    best = max(means, key=lambda name: (means[name], -complexity[name]))
    errors = {name: clustered_standard_error(values[best] - v, clusters) for name, v in values.items()}
    eligible = [name for name in values if means[best] - means[name] <= max(errors[name], min_effect) + 1e-12]
    return min(eligible, key=lambda name: (complexity[name], -means[name])), errors


def clustered_standard_error(differences: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of ``differences`` with rows correlated within clusters."""
    n = len(differences)
    if n < 2:
        return 0.0
    _, index = np.unique(clusters, return_inverse=True)
    n_clusters = int(index.max()) + 1
    if n_clusters < 2:
        return 0.0
    residual_sums = np.bincount(index, weights=differences - differences.mean(), minlength=n_clusters)
    return float(np.sqrt(n_clusters / (n_clusters - 1) * np.sum(residual_sums**2)) / n)


def choose_margin(fit: CrossFit, matrix: LogMatrix, grid: tuple[float, ...] = MARGIN_GRID) -> tuple[float, dict[float, float]]:
    """The conservative margin by the one-standard-error rule toward the largest margin.

    Single-sample rewards are noisy, so the best margin on the folds often wins by a
    handful of queries; the rule keeps the most conservative margin whose value is
    within one (clustered) standard error of the best. Returns it and each margin's value.
    """
    per_row = {str(m): policy_values(fit, matrix, "conservative", m) for m in grid}
    complexity = {str(m): -m for m in grid}  # larger margins are simpler
    chosen, _ = one_standard_error_choice(per_row, complexity, matrix.text_index)
    return float(chosen), {m: float(per_row[str(m)].mean()) for m in grid}


# --------------------------------------------------------------------------- model selection


@dataclass
class Selection:
    """What cross-validation chose, and the table it chose from."""

    spec: ModelSpec  # the reward model to fit on all rows
    policy: str  # "argmax" or "conservative" (the prior alone is conservative with margin inf)
    margin: float
    fit: CrossFit  # out-of-fold scores of the chosen model
    table: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # per-instance CV values of each option
    margin_values: dict[float, float] = field(default_factory=dict)  # CV value of each margin, chosen model


def select_model(
    matrix: LogMatrix, candidates: tuple[ModelSpec, ...], *, n_folds: int = 3, cv_groups: str = "text", progress: bool = False,
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None, fitter=cross_fit,
) -> Selection:
    """Cross-fit each candidate and choose a (model, policy) by its selection value.

    ``folds`` (default: :func:`make_folds`) and ``fitter`` (default: :func:`cross_fit`,
    same signature) let another engine produce the out-of-fold scores, e.g. Dask
    (:mod:`oirl.distributed`); the choice is made here either way."""
    from tqdm import tqdm

    if cv_groups not in CV_GROUPS:
        raise OirlError(f"unknown --cv-groups {cv_groups!r} (choose from {', '.join(CV_GROUPS)})")
    if matrix.propensity is None and not matrix.full_information:
        warnings.warn("partial feedback without a propensity column: cross-validated values use the direct method only "
                      "(the reward model's own estimate), which is biased where the logging policy was", stacklevel=2)
    folds = make_folds(matrix, n_folds, cv_groups) if folds is None else folds
    fits, margins, values, complexity, rows = {}, {}, {}, {}, []
    for candidate in tqdm(candidates, desc="model selection", unit="model", disable=not progress):
        fit = fitter(candidate, matrix, folds)
        fits[candidate.label] = fit
        margin, margin_values = margins[candidate.label] = choose_margin(fit, matrix)
        for policy, policy_margin, rank in (("conservative", margin, 2 * candidate.complexity - 1), ("argmax", 0.0, 2 * candidate.complexity)):
            key = f"{candidate.label} {policy}"
            values[key] = policy_values(fit, matrix, policy, policy_margin)
            complexity[key] = rank
            rows.append({"option": key, "model": candidate.model, "params": dict(candidate.params), "layout": candidate.layout_for(),
                         "policy": policy, "margin": None if np.isinf(policy_margin) else policy_margin})
    first = fits[candidates[0].label]
    values["prior"] = prior_values(first, matrix)
    complexity["prior"] = 0
    rows.insert(0, {"option": "prior", "model": None, "params": {}, "layout": None, "policy": "conservative", "margin": None})
    chosen, errors = one_standard_error_choice(values, complexity, matrix.text_index)
    gain = float(values[chosen].mean() - values["prior"].mean())
    if chosen != "prior" and gain <= max(PRIOR_Z * clustered_standard_error(values[chosen] - values["prior"], matrix.text_index), MIN_EFFECT):
        chosen = "prior"
    for row in rows:
        difference = values[row["option"]] - values["prior"]
        row.update(value=float(values[row["option"]].mean()), se_vs_best=errors[row["option"]],
                   gain_over_prior=float(difference.mean()), se_vs_prior=clustered_standard_error(difference, matrix.text_index),
                   chosen=row["option"] == chosen)
    if chosen == "prior":
        # No per-query signal worth its noise: always the best training prompt. The bundle
        # still carries the best model, so rankings and --policy argmax stay informative.
        label = max((r for r in rows[1:]), key=lambda r: r["value"])["option"].rsplit(" ", 1)[0]
        return Selection(fits[label].spec, "conservative", float("inf"), fits[label], rows, values, margins[label][1])
    label, policy = chosen.rsplit(" ", 1)
    margin = next(r["margin"] for r in rows if r["option"] == chosen)
    return Selection(fits[label].spec, policy, float("inf") if margin is None else margin, fits[label], rows, values, margins[label][1])


def choose_new_prompt_tau(matrix: LogMatrix, model: RewardModel, folds, grid: tuple[float, ...] = NEW_PROMPT_TAU_GRID) -> tuple[float, dict[float, float]]:
    """The neighbour model's width for prompts never trained on, by leave-one-prompt-out CV.

    In each fold, each training prompt in turn is dropped from the training rows and
    scored on the held-out rows as if it were new; the width with the lowest Brier
    score on those logged rewards wins. Needs at least two prompts.
    """
    m = len(matrix.prompt_ids)
    if m < 2:
        return model.new_prompt_tau, {}
    errors = {tau: [] for tau in grid}
    for train, test in folds:
        part = matrix.subset(train)
        for j in range(m):
            keep = [c for c in range(m) if c != j]
            sub = LogMatrix(part.query_ids, part.texts, part.text_index, part.query_vectors, [part.prompt_ids[c] for c in keep],
                            [part.prompt_texts[c] for c in keep], part.prompt_vectors[keep], part.rewards[:, keep])
            fitted = fit_on(make_reward_model("knn", **{**model.get_params(), "dimension": None}), sub, "concat")
            truth = matrix.rewards[test, j]
            logged = ~np.isnan(truth)
            for tau in grid:
                fitted.set_params(new_prompt_tau=tau)
                predicted = fitted.predict_grid(matrix.query_vectors[matrix.text_index[test]], matrix.prompt_vectors[[j]])[:, 0]
                errors[tau].append((predicted[logged] - truth[logged]) ** 2)
    brier = {tau: float(np.concatenate(e).mean()) for tau, e in errors.items()}
    return min(brier, key=brier.get), brier
