"""Best-of-N selection: a score matrix plus a policy object picks one candidate per query.

A policy is built for one candidate set (its :class:`PolicyContext`: each candidate's id,
training prior, bundle membership and cost) and takes ``scores`` of shape (n_queries,
n_candidates), finite predicted rewards, with an optional boolean ``mask`` of the same
shape saying which candidates are available for which query. :meth:`Policy.choose`
returns the chosen column per query, shape (n_queries,); :meth:`Policy.probabilities`
the distribution it draws from (one-hot for these deterministic policies; the explorers
of :mod:`oirl.policy.explore` spread it); :meth:`Policy.explain` says why a pick is not
the top-scored candidate. No policy looks inside a reward model. A NaN or infinite score
is an error, never a silent pick. The CLI, the service, evaluation and the off-policy
code all use these objects.

* :class:`Argmax`: the highest predicted reward.
* :class:`Conservative`: keep the *default* candidate (the best training prompt on
  average, among those available) unless another candidate's predicted reward beats the
  default's by more than ``margin``. The margin is chosen by cross-validation on training
  queries (:func:`oirl.learn.selection.choose_margin`); a margin of ``inf`` is the best
  single prompt, so the policy only departs from it where the folds show a gain.
* :class:`Fallback`: the paper's rule for prompts never trained on: use the bundle's
  training prompts unless the best predicted reward among them is below ``threshold``;
  then choose among the candidates that are not bundle prompts.
* :class:`CostAware`: maximise predicted reward minus ``cost_weight`` (lambda) x the
  candidate's cost; lambda = 0 is argmax.

Exact score ties go to the candidate with the better training prior, then to the first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from oirl.errors import OirlError

DEFAULT_THRESHOLD = 0.5
DEFAULT_POLICY = "argmax"


@dataclass(frozen=True, eq=False)
class PolicyContext:
    """What the policies know about a candidate set, each array of shape (n_candidates,):
    ``prior`` the mean training reward (NaN for a prompt never trained on), ``in_bundle``
    whether it is a bundle (training) prompt, ``cost`` of one call (NaN where unknown)."""

    ids: tuple[str, ...]
    prior: np.ndarray
    in_bundle: np.ndarray
    cost: np.ndarray

    @classmethod
    def of(cls, ids: Sequence[str], prior: Sequence[float] | None = None, in_bundle: Sequence[bool] | None = None,
           cost: Sequence[float] | None = None) -> PolicyContext:
        """A context with defaults: unknown priors and costs, every candidate a bundle prompt."""
        k = len(ids)
        return cls(tuple(ids), np.full(k, np.nan) if prior is None else np.asarray(prior, dtype=np.float64),
                   np.ones(k, dtype=bool) if in_bundle is None else np.asarray(in_bundle, dtype=bool),
                   np.full(k, np.nan) if cost is None else np.asarray(cost, dtype=np.float64))

    def subset(self, columns: Sequence[int]) -> PolicyContext:
        """The context of some of the candidates, in the given order."""
        columns = list(columns)
        return PolicyContext(tuple(self.ids[c] for c in columns), self.prior[columns], self.in_bundle[columns], self.cost[columns])

    @property
    def default(self) -> int | None:
        """The column of the candidate with the best known prior (None if no prior is known)."""
        known = np.isfinite(self.prior)
        return int(np.where(known, self.prior, -np.inf).argmax()) if known.any() else None


def check_scores(scores: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as floats, finite everywhere, and the ``mask`` (n_q, n_c) of available
    candidates (all by default); every query needs one."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise OirlError(f"`scores` must be a 2-D array (n_queries, n_candidates), got shape {scores.shape}")
    if not np.isfinite(scores).all():
        row, col = np.argwhere(~np.isfinite(scores))[0]
        raise OirlError(f"non-finite score {scores[row, col]} for query {row}, candidate {col}: mark unavailable candidates with a mask")
    mask = np.ones(scores.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), scores.shape)
    if not mask.any(axis=1).all():
        raise OirlError(f"query {int(np.argmin(mask.any(axis=1)))} has no available candidate")
    return scores, mask


def best_of(scores: np.ndarray, mask: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) the highest-scoring candidate within ``mask`` per row, exact ties to the better
    ``prior`` (NaN ranks last), then to the first column; and (n,) whether the row had any.

    Ties are common with tree models, which may never split on the prompt features that
    separate two good prompts: they must never go silently to whichever column is first."""
    masked = np.where(mask, scores, -np.inf)
    has_any = mask.any(axis=1)
    n = len(prior)
    order = np.lexsort((-np.arange(n), np.where(np.isnan(prior), -np.inf, prior)))  # by prior, then earlier column
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    tied = mask & (masked >= masked.max(axis=1, keepdims=True))
    return np.where(tied, rank[None, :], -1).argmax(axis=1), has_any


class Policy(ABC):
    """A rule from a score matrix to one candidate per query, for one candidate set."""

    name: ClassVar[str]
    context: PolicyContext

    def choose(self, scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(n_q,) the chosen column per query among the ``mask``ed candidates."""
        scores, mask = check_scores(scores, mask)
        self._check_width(scores)
        return self._choose(scores, mask)

    def probabilities(self, scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(n_q, n_c) the probability of serving each candidate (one-hot here)."""
        picks = self.choose(scores, mask)
        out = np.zeros(np.shape(scores))
        out[np.arange(len(picks)), picks] = 1.0
        return out

    def explain(self, scores: np.ndarray, pick: int) -> str | None:
        """Why ``pick`` is not the top-scored candidate of one row of ``scores`` (None when it is)."""
        return None

    def _check_width(self, scores: np.ndarray) -> None:
        if scores.shape[1] != len(self.context.ids):
            raise OirlError(f"the {self.name} policy was built for {len(self.context.ids)} candidates, got scores for {scores.shape[1]}")

    @abstractmethod
    def _choose(self, scores: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Argmax(Policy):
    """The candidate with the highest predicted reward (ties: the better prior)."""

    context: PolicyContext
    name: ClassVar[str] = "argmax"

    def _choose(self, scores, mask):
        return best_of(scores, mask, self.context.prior)[0]


@dataclass(frozen=True, eq=False)
class Conservative(Policy):
    """The best-prior candidate unless another is predicted better by more than ``margin``.

    Rows with no candidate of known prior fall back to argmax."""

    context: PolicyContext
    margin: float
    name: ClassVar[str] = "conservative"

    def _choose(self, scores, mask):
        best = best_of(scores, mask, self.context.prior)[0]
        prior = np.where(np.isnan(self.context.prior), -np.inf, self.context.prior)
        prior_scores = np.where(mask, prior[None, :], -np.inf)
        default = prior_scores.argmax(axis=1)
        has_default = np.isfinite(prior_scores).any(axis=1)
        rows = np.arange(len(scores))
        switch = scores[rows, best] - scores[rows, default] > self.margin
        return np.where(has_default & ~switch, default, best)

    def explain(self, scores, pick):
        top = int(np.argmax(scores))
        if scores[pick] >= scores[top]:
            return None
        return (f"conservative: kept the default prompt {self.context.ids[pick]!r}; {self.context.ids[top]!r} is predicted "
                f"{scores[top] - scores[pick]:.3f} better, not more than the margin {self.margin:g}")


@dataclass(frozen=True, eq=False)
class Fallback(Policy):
    """Bundle prompts first; below ``threshold`` the best of the other candidates."""

    context: PolicyContext
    threshold: float = DEFAULT_THRESHOLD
    name: ClassVar[str] = "fallback"

    def _choose(self, scores, mask):
        in_bundle = mask & self.context.in_bundle[None, :]
        bundle_best, has_bundle = best_of(scores, in_bundle, self.context.prior)
        other_best, has_other = best_of(scores, mask & ~in_bundle, self.context.prior)
        rows = np.arange(len(scores))
        confident = has_bundle & (scores[rows, bundle_best] >= self.threshold)
        use_other = has_other & ~confident
        return np.where(use_other, other_best, np.where(has_bundle, bundle_best, best_of(scores, mask, self.context.prior)[0]))

    def explain(self, scores, pick):
        top = int(np.argmax(scores))
        if scores[pick] >= scores[top]:
            return None
        if self.context.in_bundle[pick]:
            return (f"fallback: a bundle prompt is predicted at least {self.threshold:g} ({scores[pick]:.3f}), so the new "
                    f"prompt {self.context.ids[top]!r} is not used")
        return f"fallback: no bundle prompt is predicted {self.threshold:g} or more; the best new prompt is used"


@dataclass(frozen=True, eq=False)
class CostAware(Policy):
    """Maximise predicted reward minus ``cost_weight`` x cost. Every candidate needs a
    finite cost: an unknown (NaN) or infinite cost is an error, never a free prompt."""

    context: PolicyContext
    cost_weight: float = 0.0
    name: ClassVar[str] = "cost-aware"

    def __post_init__(self) -> None:
        cost = self.context.cost
        if not np.isfinite(cost).all():
            missing = [self.context.ids[j] for j in np.flatnonzero(~np.isfinite(cost))[:10]]
            raise OirlError(f"the cost-aware policy needs a cost for every candidate; none known for: {', '.join(missing)}")
        if not np.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise OirlError(f"the cost weight must be a finite number >= 0, got {self.cost_weight}")

    def _choose(self, scores, mask):
        return best_of(scores - self.cost_weight * self.context.cost[None, :], mask, self.context.prior)[0]

    def explain(self, scores, pick):
        top = int(np.argmax(scores))
        if scores[pick] >= scores[top]:
            return None
        extra = self.context.cost[top] - self.context.cost[pick]
        return (f"cost-aware: {self.context.ids[top]!r} is predicted {scores[top] - scores[pick]:.3f} better but costs "
                f"{extra:.3g} more (cost weight {self.cost_weight:g})")


#: Policies by name; the keys are the CLI's ``--policy`` choices and a bundle's default.
POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (Argmax, Conservative, Fallback, CostAware)}


def make_policy(name: str, context: PolicyContext, *, margin: float = float("inf"), threshold: float = DEFAULT_THRESHOLD,
                cost_weight: float = 0.0) -> Policy:
    """The named policy for a candidate set; each takes the parameters it needs."""
    if name not in POLICIES:
        raise OirlError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    parameters = {"conservative": (margin,), "fallback": (threshold,), "cost-aware": (cost_weight,)}
    return POLICIES[name](context, *parameters.get(name, ()))


def policy_value(choices: np.ndarray, rewards: np.ndarray) -> float:
    """Mean logged reward of the chosen candidates; ``rewards`` (n_q, n_c)."""
    return float(rewards[np.arange(len(choices)), choices].mean())
