"""Reward against cost: the cost-aware policy's curve over cost weights, its area, a plot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from oirl._plots import save_figure
from oirl.policy.policies import CostAware, PolicyContext


def cost_sweep(scores: np.ndarray, rewards: np.ndarray, context: PolicyContext, cost_weights: np.ndarray) -> pd.DataFrame:
    """The reward-cost curve of the cost-aware policy over ``cost_weights`` (lambda).

    ``scores`` and ``rewards`` (n_q, n_c), the candidates' costs in ``context``. Returns
    one row per lambda with the mean logged reward and the mean cost of the picks.
    """
    logged = ~np.isnan(rewards)
    rows = np.arange(len(rewards))
    out = []
    for weight in cost_weights:
        picks = CostAware(context, float(weight)).choose(scores, logged)
        out.append({"cost_weight": float(weight), "reward": float(rewards[rows, picks].mean()), "cost": float(context.cost[picks].mean())})
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


def plot_reward_cost(curves: dict[str, pd.DataFrame], arms: pd.DataFrame, path, title: str, *, unit: str | None = None) -> dict[str, Any]:
    """Reward vs mean cost per query: one line per curve, single arms as labelled points.
    ``unit`` names the costs' unit on the axis (None: the unit they were given in, unnamed).
    Returns what the cost axis shows (label, scale, ticks), for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, curve in curves.items():
        ordered = curve.sort_values("cost")
        ax.plot(ordered["cost"], ordered["reward"], "-o", markersize=3, label=label)
    ax.scatter(arms["cost"], arms["reward"], s=14, c="grey", label="single arms", zorder=3)
    for _, arm in arms.nlargest(6, "reward").iterrows():
        ax.annotate(str(arm["prompt_id"]), (arm["cost"], arm["reward"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    axis = cost_axis(ax, arms["cost"].to_numpy(dtype=float), unit)
    ax.set_ylabel("expected reward")
    save_figure(fig, ax, path, title)
    return axis


def cost_axis(ax, costs: np.ndarray, unit: str | None) -> dict[str, Any]:
    """Set the cost axis of ``ax`` for arms of ``costs``: linear when they span less than a
    decade (a log axis would show one decade tick, or none), else logarithmic (symlog,
    linear below the cheapest positive cost, when some arm is free) with ticks at 1, 2
    and 5 per decade, or at each decade past four. The label names ``unit`` when known:
    oirl never knows what unit a cost column or ``--costs`` file is in."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    positive = costs[costs > 0]
    label = f"mean cost per query ({unit})" if unit else "mean cost per query (in the unit of the costs given)"
    if len(positive) == 0 or positive.max() / positive.min() < 10:
        ax.set_xlabel(label)
        return {"x_label": label, "x_scale": "linear", "x_ticks": None}
    low, high = float(positive.min()), float(positive.max())
    if (costs <= 0).any():
        ax.set_xscale("symlog", linthresh=low)
    else:
        ax.set_xscale("log")
    decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
    steps = (1.0,) if len(decades) > 5 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0 ** d for d in decades for m in steps if low * (1 - 1e-9) <= m * 10.0 ** d <= high * (1 + 1e-9)]
    ticks = ([0.0] if (costs <= 0).any() else []) + ticks  # a decade or more: at least three ticks
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    label += ", log scale"
    ax.set_xlabel(label)
    return {"x_label": label, "x_scale": ax.get_xscale(), "x_ticks": [float(f"{t:.3g}") for t in ticks]}


def cost_sweep_report(scores: np.ndarray, rewards: np.ndarray, context: PolicyContext, cost_weights: list[float]) -> dict[str, Any]:
    """The cost-aware policy's reward-cost curve over ``cost_weights``, its normalised
    area, and the single prompts as points (full-information logs; arrays (n_q, n_c))."""
    cost = context.cost
    curve = cost_sweep(scores, rewards, context, np.asarray(cost_weights))
    arms = pd.DataFrame({"prompt_id": list(context.ids), "reward": np.nanmean(rewards, axis=0), "cost": cost})
    span = (float(cost.min()), float(cost.max()))
    return {
        "curve": curve.to_dict(orient="records"),
        "area": reward_cost_area(curve, span),
        "single_prompts": arms.to_dict(orient="records"),
        "single_prompts_area": reward_cost_area(arms, span),
        "cost_range": list(span),
    }
