"""Router metrics on a full-information log with costs, as RouteLLM defines them
(Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference Data", section 4).

Two arms, a cheap one and an expensive one with mean rewards ``r_cheap < r_exp`` on the
evaluated log. A router that sends a share ``x`` of the calls to the expensive arm and
reaches the mean reward ``r(x)`` recovers the **performance gap**

    PGR(x) = (r(x) - r_cheap) / (r_exp - r_cheap)

(0 for the cheap arm alone, 1 for the expensive arm alone, above 1 when routing beats
the expensive arm). oirl's router is the cost-aware policy: the expensive arm when its
predicted reward beats the cheap arm's by more than ``lambda x (cost_exp - cost_cheap)``.
As the cost weight lambda sweeps every real number (:func:`oirl.policy.budget.cost_weight_path`:
lambda < 0 continues past argmax, as RouteLLM's threshold runs from no call of the strong
model to all), ``x`` runs from 1 to 0 and the points ``(x, PGR)`` trace the curve,
taken as linear between them (a random mix of two neighbouring weights). Then

* **APGR** = the integral of PGR(x) over x from 0 to 1: the mean gap recovered over
  every share of expensive calls (the trapezoid rule on the exact points; RouteLLM takes
  10 thresholds). A router that ignores the query (a random share x) scores 0.5.
* **CPT(p)** = the smallest share x of calls to the expensive arm at which the curve
  reaches PGR = p: CPT(50%) and CPT(80%), the calls needed to recover half and 80% of
  the gap. ``None`` if it never does.

**The whole set** (more than two arms): the cheap arm is the cheapest (ties: the better
mean reward), the expensive one the best single arm (the highest mean reward, ties: the
cheaper; for two arms, the dearer one when it is the better), and ``x`` is the
**normalised cost**, ``(C - cost_cheap) / (cost_exp - cost_cheap)`` for a mean cost per
query ``C``: 0 costs what the cheap arm costs, 1 what the best arm costs. The cost-aware
policy over all arms traces the curve; APGR integrates it over x in [0, 1] and CPT may
pass 1 (the policy reaches that share of the gap only by spending more than the best arm).
For two arms the normalised cost is the share of expensive calls, and both agree. With
many arms a fixed mix of cheap good arms already recovers much of the gap without
looking at any query: ``query_blind_apgr`` (:func:`blind_apgr`, 0.5 for two arms, as
RouteLLM's random router) is that baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from oirl.policy.budget import cost_weight_path
from oirl.policy.policies import CostAware, PolicyContext

FRACTIONS = (0.5, 0.8)
CURVE_POINTS = 60  # points of the whole set's curve kept in a report (every point enters the metrics)


@dataclass(frozen=True)
class RouterCurve:
    """The cost-aware router's curve, every array (p,), ordered by ``x`` ascending (lambda
    descending): ``cost_weight`` the lowest lambda of each point's interval (-inf for the
    first point of the sweep, the dearest picks), the mean ``cost`` and ``reward`` per
    query, the normalised cost ``x`` and the ``pgr``."""

    cost_weight: np.ndarray
    cost: np.ndarray
    reward: np.ndarray
    x: np.ndarray
    pgr: np.ndarray


def router_curve(scores: np.ndarray, rewards: np.ndarray, context: PolicyContext, cheap: int, expensive: int) -> RouterCurve:
    """The curve of the cost-aware policy over the candidates of ``context`` (scores and
    rewards (n, k), every reward logged), normalised by the ``cheap`` and ``expensive`` columns."""
    path = cost_weight_path(scores, context.cost, context.prior)
    cost, reward = path.means(context.cost)[::-1], path.means(rewards)[::-1]
    base, top = rewards[:, cheap].mean(), rewards[:, expensive].mean()
    low, high = context.cost[cheap], context.cost[expensive]
    return RouterCurve(path.lower[::-1], cost, reward, (cost - low) / (high - low), (reward - base) / (top - base))


def area_under(x: np.ndarray, y: np.ndarray, low: float = 0.0, high: float = 1.0) -> float:
    """The integral over [low, high] of the piecewise-linear curve through (x, y), x
    non-decreasing (a vertical step adds nothing); outside the points the curve is flat."""
    x = np.concatenate([[min(low, x[0])], x, [max(high, x[-1])]])
    y = np.concatenate([[y[0]], y, [y[-1]]])
    a, b = np.clip(x[:-1], low, high), np.clip(x[1:], low, high)
    width = x[1:] - x[:-1]
    slope = np.divide(y[1:] - y[:-1], width, out=np.zeros_like(width), where=width > 0)
    ya, yb = y[:-1] + slope * (a - x[:-1]), y[:-1] + slope * (b - x[:-1])
    return float(((ya + yb) / 2 * (b - a)).sum())


def first_reaching(x: np.ndarray, y: np.ndarray, level: float) -> float | None:
    """The smallest x at which the piecewise-linear curve through (x, y) reaches ``level``."""
    if y[0] >= level:
        return float(x[0])
    for i in np.flatnonzero((y[1:] >= level) & (y[:-1] < level)):
        return float(x[i] + (level - y[i]) / (y[i + 1] - y[i]) * (x[i + 1] - x[i]))
    return None


def curve_metrics(curve: RouterCurve) -> dict[str, Any]:
    """APGR and CPT(50%), CPT(80%) of a curve (see the module docstring)."""
    return {"apgr": area_under(curve.x, curve.pgr),
            **{f"cpt{round(p * 100)}": first_reaching(curve.x, curve.pgr, p) for p in FRACTIONS}}


def blind_apgr(rewards: np.ndarray, cost: np.ndarray, cheap: int, expensive: int) -> float:
    """APGR of the best router that ignores the query: a fixed mix of arms, whose (cost,
    reward) is any point of the arms' upper concave hull. 0.5 for two arms (the straight
    line of RouteLLM's random router); with more, cheap good arms lift it, and a router
    is worth what it adds above it. ``rewards`` (n, k), ``cost`` (k,)."""
    mean = rewards.mean(axis=0)
    x = (cost - cost[cheap]) / (cost[expensive] - cost[cheap])
    y = (mean - mean[cheap]) / (mean[expensive] - mean[cheap])
    hull: list[int] = []
    for j in np.lexsort((-y, x)):  # by cost, the better first among equals: the upper hull, left to right
        if hull and x[j] == x[hull[-1]]:
            continue
        while len(hull) >= 2 and (x[hull[-1]] - x[hull[-2]]) * (y[j] - y[hull[-2]]) >= (y[hull[-1]] - y[hull[-2]]) * (x[j] - x[hull[-2]]):
            hull.pop()  # the last point lies on or below the chord: no mix needs it
        hull.append(int(j))
    return area_under(x[hull], y[hull])


def reference_arms(rewards: np.ndarray, cost: np.ndarray) -> tuple[int, int]:
    """The cheap arm (the cheapest; ties: the better mean reward) and the expensive one
    (the best mean reward; ties: the cheaper), as columns of ``rewards`` (n, k)."""
    mean = rewards.mean(axis=0)
    cheap = int(np.lexsort((-mean, cost))[0])
    best = int(np.lexsort((cost, -mean))[0])
    return cheap, best


def routing_report(scores: np.ndarray, rewards: np.ndarray, context: PolicyContext, *, cost_weight: float | None = None) -> dict[str, Any] | None:
    """The router metrics of the module docstring for every pair of arms of different
    cost (``pairs``, cheap before expensive) and for the whole set (``all_arms``, with its
    curve and, given the bundle's ``cost_weight``, where its cost-aware policy stands).

    ``scores`` and ``rewards`` (n, k); the arms are the candidates with a cost logged
    for every instance (None when fewer than two)."""
    arms = np.flatnonzero(np.isfinite(context.cost) & ~np.isnan(rewards).any(axis=0))
    if len(arms) < 2:
        return None
    scores, rewards, context = scores[:, arms], rewards[:, arms], context.subset(arms)
    mean = rewards.mean(axis=0)
    pairs = []
    for a, b in combinations(np.argsort(context.cost, kind="stable"), 2):
        if context.cost[a] == context.cost[b]:
            continue  # nothing to trade between arms of one price
        entry = {"cheap": context.ids[a], "expensive": context.ids[b], "cost": [context.cost[a], context.cost[b]], "reward": [mean[a], mean[b]]}
        if mean[b] <= mean[a]:
            pairs.append(entry | {"apgr": None, "cpt50": None, "cpt80": None, "note": "the dearer arm is not better: no gap to recover"})
            continue
        columns = [int(a), int(b)]
        curve = router_curve(scores[:, columns], rewards[:, columns], context.subset(columns), 0, 1)
        pairs.append(entry | curve_metrics(curve))
    return {"pairs": pairs, "all_arms": whole_set(scores, rewards, context, cost_weight)}


def whole_set(scores: np.ndarray, rewards: np.ndarray, context: PolicyContext, cost_weight: float | None) -> dict[str, Any]:
    """The whole set's reference arms, metrics, curve (thinned to :data:`CURVE_POINTS`) and
    the bundle's operating point."""
    cheap, best = reference_arms(rewards, context.cost)
    mean = rewards.mean(axis=0)
    out: dict[str, Any] = {"arms": len(context.ids), "cheap": context.ids[cheap], "expensive": context.ids[best],
                           "cost": [context.cost[cheap], context.cost[best]], "reward": [mean[cheap], mean[best]]}
    if context.cost[best] <= context.cost[cheap] or mean[best] <= mean[cheap]:
        return out | {"apgr": None, "cpt50": None, "cpt80": None, "note": "the cheapest arm is also the best: no gap to recover"}
    curve = router_curve(scores, rewards, context, cheap, best)
    keep = np.unique(np.linspace(0, len(curve.x) - 1, min(CURVE_POINTS, len(curve.x))).round().astype(int))
    points = [{"cost_weight": curve.cost_weight[i], "cost": curve.cost[i], "reward": curve.reward[i], "normalised_cost": curve.x[i],
               "pgr": curve.pgr[i]} for i in keep]
    out |= curve_metrics(curve) | {"query_blind_apgr": blind_apgr(rewards, context.cost, cheap, best), "curve": points}
    if cost_weight is not None:  # the bundle's own cost weight, e.g. from `oirl calibrate`
        picks = CostAware(context, cost_weight).choose(scores)
        reward, cost = rewards[np.arange(len(picks)), picks].mean(), context.cost[picks].mean()
        out["at_bundle_cost_weight"] = {
            "cost_weight": cost_weight, "cost": cost, "reward": reward,
            "normalised_cost": (cost - context.cost[cheap]) / (context.cost[best] - context.cost[cheap]),
            "pgr": (reward - mean[cheap]) / (mean[best] - mean[cheap]),
            "shares": {context.ids[j]: float((picks == j).mean()) for j in np.unique(picks)}}
    return out
