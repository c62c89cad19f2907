"""Cross-fitting: out-of-fold scores, so that no query instance is scored by a model that saw it.

Folds group query instances by question (``cv_groups="text"``: every held-out question is
new, the regime of a new user's traffic) or by *instance* (``"instance"``: held-out rows
are new samples of questions that may occur in training). For a reward-model candidate,
:func:`cross_fit` gives the out-of-fold scores of every held-out instance with every
prompt, and each fold's prior (the prompts' mean training reward) from that fold's
training rows only. :func:`row_values` values a policy's picks on the held-out rows: the
logged reward with full information, the doubly robust estimate with partial feedback.
:mod:`oirl.learn.selection` chooses among the candidates with these values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oirl.data.matrix import LogMatrix
from oirl.errors import OirlError
from oirl.learn.candidates import ModelSpec
from oirl.ope import estimators as ope
from oirl.policy.policies import PolicyContext, make_policy
from oirl.reward.base import RewardModel, check_predictions

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
        rows = matrix.text_index[test]
        scores[test] = model.predict_grid(matrix.query_vectors[rows], matrix.prompt_vectors, layout, texts=matrix.texts[rows])
        priors[test] = part.prompt_means()
    check_predictions(scores, spec.label)
    return CrossFit(spec, scores, priors, folds)


def fit_on(model: RewardModel, matrix: LogMatrix, layout: str) -> RewardModel:
    """Fit a reward model on the logged cells of ``matrix``."""
    if layout != "concat" and model.get_params().get("dimension", 0) is None:  # its query part is not half of [q, p, q*p]
        model.set_params(dimension=matrix.query_vectors.shape[1])
    return model.fit_matrix(matrix.query_vectors, matrix.text_index, matrix.prompt_vectors, matrix.rewards, layout,
                            sample_weight=matrix.sample_weight, texts=matrix.texts)


# --------------------------------------------------------------------------- selection values


def row_values(picks: np.ndarray, matrix: LogMatrix, reference: np.ndarray) -> np.ndarray:
    """Estimated reward of each instance's pick, shape (n,).

    Full information: the logged reward of the pick. Partial feedback: doubly robust
    (:func:`oirl.ope.estimators.dr`, averaged over the instance's logged rounds) with the
    propensities the matrix carries (logged, or estimated by
    :mod:`oirl.learn.logging_policy`) and ``reference`` (n, m) as its reward model. The
    reference is the same for every option (the fold's prompt means), never the option's
    own predictions: a model that predicts high rewards where it picks would otherwise
    vouch for itself.
    """
    rows = np.arange(len(picks))
    if matrix.full_information and matrix.propensity is None:
        return matrix.rewards[rows, picks]
    if matrix.propensity is None:
        raise OirlError("partial feedback needs propensities, logged or estimated (oirl.learn.logging_policy), to be valued")
    rounds = ope.logged_rounds(matrix.rewards, matrix.propensity)
    terms = ope.dr(rounds, ope.one_hot(picks, matrix.rewards.shape[1]), reference)
    return ope.per_instance(rounds, terms, len(picks))


def reference_rewards(priors: np.ndarray) -> np.ndarray:
    """The doubly robust reference (n, m) from per-instance fold priors: a prompt the
    fold never logged counts at the fold's worst known prompt (it vouches for nothing)."""
    known = np.isfinite(priors)
    floor = np.where(known, priors, np.inf).min(axis=1, keepdims=True)
    return np.where(known, priors, np.where(np.isfinite(floor), floor, 0.0))


def policy_values(fit: CrossFit, matrix: LogMatrix, policy: str, margin: float = 0.0) -> np.ndarray:
    """Per-instance CV value of a policy; each fold uses its own prior (tie-breaks, default), shape (n,)."""
    values = np.empty(len(matrix.query_ids))
    picks = policy_picks(fit, policy, margin)
    for _, test in fit.folds:
        values[test] = row_values(picks[test], matrix.subset(test), reference_rewards(fit.priors[test]))
    return values


def policy_picks(fit: CrossFit, policy: str, margin: float = 0.0) -> np.ndarray:
    """(n,) each instance's out-of-fold pick under ``policy``, with its fold's prior."""
    picks = np.empty(len(fit.scores), dtype=int)
    for _, test in fit.folds:
        context = PolicyContext.of([str(j) for j in range(fit.scores.shape[1])], prior=fit.priors[test[0]])
        picks[test] = make_policy(policy, context, margin=margin).choose(fit.scores[test])
    return picks


def prior_values(fit: CrossFit, matrix: LogMatrix) -> np.ndarray:
    """Per-instance CV value of always using the best training prompt of the fold."""
    return policy_values(fit, matrix, "conservative", float("inf"))
