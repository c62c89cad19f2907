"""The cost-aware policy at every cost weight at once, and the weight that meets a budget.

The cost-aware policy (:class:`oirl.policy.policies.CostAware`) picks, per query, the
candidate maximising ``score - lambda * cost``. As lambda grows each query's pick moves,
at a few breakpoints, to cheaper candidates and never back (at a breakpoint the line of
a cheaper candidate overtakes the current one, and a line of smaller slope -cost stays
ahead from then on). So the mean cost per query, and the share of calls to the dearest
candidate, can only fall as lambda grows; the mean reward need not.

:func:`cost_weight_path` finds every breakpoint of every query exactly (the upper
envelope of the lines ``score_j - lambda * cost_j``), for lambda over all reals: at
lambda -> -inf every query takes its dearest candidate, at +inf its cheapest. A negative
lambda is not a policy anyone deploys; it continues the curve to the dearest candidate,
as RouteLLM's threshold runs from no call of the strong model to all of them.
:func:`weight_for_limit` uses the path to find the smallest lambda >= 0 that keeps a
mean (a share of calls, a cost per query) within a limit: the cost-aware policy with
the most predicted reward among those within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oirl.errors import OirlError
from oirl.policy.policies import CostAware, PolicyContext, best_of, check_scores

#: Breakpoints closer than this (relative) are one: three lines meeting in a point are
#: computed with rounding, and must not leave an interval of one ulp between them.
SAME_WEIGHT = 1e-12


@dataclass(frozen=True)
class CostWeightPath:
    """The cost-aware policy's picks for every cost weight, over ``n`` queries.

    ``start`` (n,) are the picks for lambda below the first breakpoint. Each switch is
    one query moving to a cheaper candidate: ``query``, ``before`` and ``after`` (m,)
    columns, at ``weight`` (m,), ascending. ``breaks`` (g,) are the distinct weights and
    ``ends`` (g,) the index one past each one's last switch: interval ``t`` of the
    ``g + 1`` runs from ``breaks[t - 1]`` (-inf for t = 0) to ``breaks[t]`` (+inf at the
    end), and its picks are ``start`` with the first ``ends[t - 1]`` switches applied.
    """

    start: np.ndarray
    query: np.ndarray
    before: np.ndarray
    after: np.ndarray
    weight: np.ndarray
    breaks: np.ndarray
    ends: np.ndarray

    @property
    def lower(self) -> np.ndarray:
        """(g + 1,) each interval's lowest cost weight (-inf for the first)."""
        return np.concatenate([[-np.inf], self.breaks])

    @property
    def upper(self) -> np.ndarray:
        """(g + 1,) each interval's highest cost weight (+inf for the last)."""
        return np.concatenate([self.breaks, [np.inf]])

    def means(self, values: np.ndarray) -> np.ndarray:
        """(g + 1,) the mean over queries of ``values[i, pick_i]`` in each interval;
        ``values`` (n, k), or (k,) for a value per candidate (a cost, an indicator)."""
        values = np.asarray(values, dtype=np.float64)
        n = len(self.start)
        if values.ndim == 1:
            values = np.broadcast_to(values, (n, len(values)))
        total = values[np.arange(n), self.start].sum()
        steps = np.cumsum(values[self.query, self.after] - values[self.query, self.before])
        return np.concatenate([[total], total + steps[self.ends - 1]]) / n if len(self.ends) else np.array([total / n])

    def picks(self, interval: int) -> np.ndarray:
        """(n,) the picks in one interval (0 .. g)."""
        picks = self.start.copy()
        done = self.ends[interval - 1] if interval > 0 else 0
        picks[self.query[:done]] = self.after[:done]  # a query's switches come in order: its last one wins
        return picks


def cost_weight_path(scores: np.ndarray, cost: np.ndarray, prior: np.ndarray | None = None) -> CostWeightPath:
    """Every pick of the cost-aware policy for lambda from -inf to +inf (see the module
    docstring). ``scores`` (n, k) finite predicted rewards, ``cost`` (k,) finite costs,
    ``prior`` (k,) for ties (as the policies: the better prior, then the first column)."""
    scores, _ = check_scores(scores, None)
    cost = np.asarray(cost, dtype=np.float64)
    if cost.shape != (scores.shape[1],) or not np.isfinite(cost).all():
        raise OirlError(f"the cost path needs a finite cost for each of the {scores.shape[1]} candidates")
    n, k = scores.shape
    prior = np.full(k, np.nan) if prior is None else np.asarray(prior, dtype=np.float64)
    rows = np.arange(n)
    # lambda -> -inf: the dearest candidate; among equally dear ones the best score
    start = best_of(scores, np.broadcast_to(cost == cost.max(), scores.shape), prior)[0]
    pick = start.copy()
    at = np.full(n, -np.inf)
    switches: list[tuple[np.ndarray, ...]] = []
    for _ in range(k):  # every switch goes to a strictly cheaper candidate: at most k - 1 per query
        cheaper = cost[None, :] < cost[pick][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = (scores[rows, pick][:, None] - scores) / (cost[pick][:, None] - cost[None, :])
        crossing = np.where(cheaper, crossing, np.inf)
        nearest = crossing.min(axis=1)
        moving = np.isfinite(nearest)
        if not moving.any():
            break
        # past a crossing shared by several candidates the cheapest stays ahead (its line falls slowest)
        tied = cheaper & (crossing == nearest[:, None])
        cheapest_tied = tied & (cost[None, :] == np.where(tied, cost[None, :], np.inf).min(axis=1, keepdims=True))
        after = best_of(scores, cheapest_tied | ~moving[:, None], prior)[0]
        nearest = np.maximum(nearest, at)  # rounding must not put a query's later switch before an earlier one
        switches.append((rows[moving], pick[moving], after[moving], nearest[moving]))
        pick = np.where(moving, after, pick)
        at = np.where(moving, nearest, at)
    return _assemble(start, switches)


def _assemble(start: np.ndarray, switches: list[tuple[np.ndarray, ...]]) -> CostWeightPath:
    """Order the switches by weight and group weights that are one breakpoint."""
    if not switches:
        empty = np.zeros(0, dtype=int)
        return CostWeightPath(start, empty, empty, empty, np.zeros(0), np.zeros(0), empty)
    query, before, after, weight = (np.concatenate(parts) for parts in zip(*switches, strict=True))
    order = np.argsort(weight, kind="stable")  # stable: a query's switches stay in the order found
    query, before, after, weight = query[order], before[order], after[order], weight[order]
    gap = np.diff(weight) > SAME_WEIGHT * np.maximum(1.0, np.abs(weight[1:]))
    ends = np.concatenate([np.flatnonzero(gap) + 1, [len(weight)]])
    return CostWeightPath(start, query, before, after, weight, weight[ends - 1], ends)


@dataclass(frozen=True)
class WeightChoice:
    """The chosen cost weight and the mean it gives on the scored queries (by the policy itself)."""

    cost_weight: float
    measured: float
    picks: np.ndarray  # (n,)


def weight_for_limit(scores: np.ndarray, context: PolicyContext, values: np.ndarray, limit: float) -> WeightChoice:
    """The smallest cost weight lambda >= 0 at which the mean over queries of ``values``
    (k,) at the cost-aware policy's picks is at most ``limit``.

    ``values`` must fall as lambda grows for this to be a search: a candidate's cost
    (the mean cost per query), or an indicator of the dearest candidate (its share of
    calls). lambda = 0 when argmax is already within the limit; otherwise a weight inside
    the first interval of the path within it (its midpoint: rounding at a breakpoint,
    where two candidates tie, cannot tip it), checked by running the policy there.
    Raises OirlError when even lambda -> inf (every query's cheapest candidate) exceeds it.
    """
    values = np.asarray(values, dtype=np.float64)

    def measure(weight: float) -> WeightChoice:
        picks = CostAware(context, weight).choose(scores)
        return WeightChoice(weight, float(values[picks].mean()), picks)

    at_zero = measure(0.0)
    if at_zero.measured <= limit:
        return at_zero
    path = cost_weight_path(scores, context.cost, context.prior)
    means, lower, upper = path.means(values), path.lower, path.upper
    within = np.flatnonzero((means <= limit) & (upper > 0))
    if not len(within):
        raise OirlError(f"no cost weight keeps it within {limit:g}: even the cheapest candidates give {means[-1]:.6g}")
    first = int(within[0])
    low = max(float(lower[first]), 0.0)
    weight = (low + float(upper[first])) / 2 if np.isfinite(upper[first]) else (2 * low if low > 0 else 1e-9)
    chosen = measure(weight)
    if chosen.measured > limit:  # the path and the policy disagree: a bug, never a silent miss of the target
        raise OirlError(f"cost weight {weight:g} gives {chosen.measured:.6g}, over the limit {limit:g}, though the path said {means[first]:.6g}")
    return chosen
