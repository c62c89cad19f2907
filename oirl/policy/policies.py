"""Best-of-N selection: a score matrix plus a policy picks one candidate per query.

Every policy takes ``scores`` of shape (n_queries, n_candidates), finite predicted
rewards, and an optional boolean ``mask`` of the same shape saying which candidates
are available for which query (e.g. only the prompts logged for it); it returns the
chosen column per query, shape (n_queries,). No policy looks inside a reward model. A
NaN or infinite score is an error, never a silent pick.

* ``argmax``: the highest predicted reward.
* ``conservative``: keep the *default* candidate (the best training prompt on average,
  among those available) unless another candidate's predicted reward beats the
  default's by more than ``margin``. The margin is chosen by cross-validation on
  training queries (:func:`oirl.learn.selection.choose_margin`); a margin of ``inf`` is the best single
  prompt, so the conservative policy only departs from it where the folds show a gain.
* ``fallback``: the paper's rule for prompts never trained on: use the bundle's
  training prompts unless the best predicted reward among them is below
  ``threshold``; then choose among the candidates that are not bundle prompts.
* ``cost-aware``: maximise predicted reward minus ``cost_weight`` (lambda) x the
  candidate's cost; lambda = 0 is argmax.

Exploration (:func:`exploration_probabilities`, :func:`draw`) turns a policy's picks
into a distribution to sample from, so that a deployed service logs what off-policy
evaluation needs: the prompt it used and the probability of having used it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from oirl.errors import OirlError

DEFAULT_THRESHOLD = 0.5
DEFAULT_POLICY = "argmax"


def _available(scores: np.ndarray) -> np.ndarray:
    return np.isfinite(scores)


def _masked_argmax(scores: np.ndarray, mask: np.ndarray, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Argmax over ``mask``ed columns per row; also whether the row had any such column.

    Exact ties (common with tree models, which may never split on the prompt features
    that separate two good prompts) go to the candidate with the better training
    ``prior``, then to the first: never silently to whichever column comes first.
    """
    masked = np.where(mask & _available(scores), scores, -np.inf)
    has_any = np.isfinite(masked).any(axis=1)
    if prior is None:
        return masked.argmax(axis=1), has_any
    n = len(prior)
    order = np.lexsort((-np.arange(n), np.where(np.isnan(prior), -np.inf, prior)))  # by prior, then earlier column
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    tied = np.isfinite(masked) & (masked >= masked.max(axis=1, keepdims=True))
    return np.where(tied, rank[None, :], -1).argmax(axis=1), has_any


def argmax_policy(scores: np.ndarray, *, prior: np.ndarray | None = None, **_: object) -> np.ndarray:
    """The candidate with the highest predicted reward, per query (ties: better prior)."""
    return _masked_argmax(scores, np.ones_like(scores, dtype=bool), prior)[0]


def conservative_policy(scores: np.ndarray, *, prior: np.ndarray, margin: float, **_: object) -> np.ndarray:
    """Default to the best-prior candidate; switch only when another beats it by > margin.

    ``prior`` (n_candidates,): each candidate's mean training reward, NaN where unknown
    (a prompt never trained on). Rows with no known candidate fall back to argmax.
    """
    best = argmax_policy(scores, prior=prior)
    prior_scores = np.where(np.isnan(prior), -np.inf, prior)[None, :].repeat(len(scores), axis=0)
    prior_scores = np.where(_available(scores), prior_scores, -np.inf)
    default = prior_scores.argmax(axis=1)
    has_default = np.isfinite(prior_scores).any(axis=1)
    rows = np.arange(len(scores))
    switch = scores[rows, best] - scores[rows, default] > margin
    return np.where(has_default & ~switch, default, best)


def fallback_policy(
    scores: np.ndarray, *, in_bundle: np.ndarray, threshold: float = DEFAULT_THRESHOLD, prior: np.ndarray | None = None, **_: object
) -> np.ndarray:
    """Training prompts first; below ``threshold`` pick among the non-bundle candidates.

    ``in_bundle`` (n_candidates,): True for the bundle's training prompts.
    """
    in_bundle = np.broadcast_to(np.asarray(in_bundle, dtype=bool), scores.shape)
    bundle_best, has_bundle = _masked_argmax(scores, in_bundle, prior)
    other_best, has_other = _masked_argmax(scores, ~in_bundle, prior)
    rows = np.arange(len(scores))
    confident = has_bundle & (scores[rows, bundle_best] >= threshold)
    use_other = has_other & ~confident
    return np.where(use_other, other_best, np.where(has_bundle, bundle_best, argmax_policy(scores, prior=prior)))


def cost_aware_policy(
    scores: np.ndarray, *, cost: np.ndarray | None = None, cost_weight: float = 0.0, prior: np.ndarray | None = None, **_: object
) -> np.ndarray:
    """Maximise predicted reward minus ``cost_weight`` x cost; ``cost`` (n_candidates,).

    Every candidate needs a finite cost: an unknown (NaN) or infinite cost is an error,
    never a free prompt.
    """
    cost = None if cost is None else np.asarray(cost, dtype=np.float64)
    if cost is None or not np.isfinite(cost).all():
        missing = "no costs" if cost is None else f"candidate(s) {', '.join(map(str, np.flatnonzero(~np.isfinite(cost))[:10]))}"
        raise OirlError(f"the cost-aware policy needs a finite cost for every candidate ({missing})")
    if not np.isfinite(cost_weight) or cost_weight < 0:
        raise OirlError(f"the cost weight must be a finite number >= 0, got {cost_weight}")
    return argmax_policy(scores - cost_weight * cost[None, :], prior=prior)


#: Policies by name; the keys are the CLI's ``--policy`` choices.
POLICIES: dict[str, Callable[..., np.ndarray]] = {
    "argmax": argmax_policy,
    "conservative": conservative_policy,
    "fallback": fallback_policy,
    "cost-aware": cost_aware_policy,
}


def choose(policy: str, scores: np.ndarray, *, mask: np.ndarray | None = None, **context: object) -> np.ndarray:
    """Apply a named policy; ``context`` holds ``prior``, ``margin``, ``in_bundle``,
    ``threshold``, ``cost``, ``cost_weight``. ``mask`` (n_q, n_c) marks available candidates."""
    if policy not in POLICIES:
        raise OirlError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        row, col = np.argwhere(~np.isfinite(scores))[0]
        raise OirlError(f"non-finite score {scores[row, col]} for query {row}, candidate {col}: mark unavailable candidates with a mask")
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), scores.shape)
        if not mask.any(axis=1).all():
            raise OirlError(f"query {int(np.argmin(mask.any(axis=1)))} has no available candidate")
        scores = np.where(mask, scores, -np.inf)
    return POLICIES[policy](scores, **context)


def policy_value(choices: np.ndarray, rewards: np.ndarray) -> float:
    """Mean logged reward of the chosen candidates; ``rewards`` (n_q, n_c)."""
    return float(rewards[np.arange(len(choices)), choices].mean())
