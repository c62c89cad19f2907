"""Choosing the cost-aware policy's weight from a sample of the user's own queries
(``oirl calibrate``): routing on a budget. A search on the user's data, so it lives with
fitting; the record it leaves in the bundle (:class:`~oirl.recommender.bundle.CalibrationSection`)
is part of the bundle format.

The cost-aware policy maximises predicted reward minus lambda x cost, and nobody knows
which lambda to take. Its users know what they can spend instead:

* :class:`ShareCap` — at most ``share`` of the calls go to ``prompt_id``, the dearest
  prompt (RouteLLM's "calibrate the threshold for 30% GPT-4 calls"). Its share can only
  fall as lambda grows (:mod:`oirl.policy.budget`); a cheaper prompt's share may rise as
  well as fall, so a cap on one of those is refused: cap the mean cost instead.
* :class:`Budget` — the mean cost per query at most ``cost``; it too can only fall as
  lambda grows, for any number of prompts.

The sample needs no rewards: its queries are scored once with the bundle, and the
smallest lambda within the target is found exactly
(:func:`oirl.policy.budget.weight_for_limit`) — the cost-aware policy with the most
predicted reward among those within it. The result is the bundle with the cost-aware
policy as its default at that weight, and a record (``policy.calibration``) of
the target and what it gave on the sample. On new queries the share (or mean cost)
varies around the sample's as any sample does: about sqrt(p (1 - p) / n) for a share p
over n calls. The sample should be new queries, as live traffic is: a bundle scores the
questions it was trained on from memory, and a weight fit on those does not carry over
(calibrating warns when the sample holds any).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from oirl.errors import OirlError
from oirl.policy.budget import weight_for_limit
from oirl.recommender.bundle import CalibrationSection

if TYPE_CHECKING:
    from oirl.recommender.recommender import Recommender


@dataclass(frozen=True)
class ShareCap:
    """At most ``share`` of the calls to ``prompt_id``."""

    prompt_id: str
    share: float


@dataclass(frozen=True)
class Budget:
    """A mean cost per query of at most ``cost``."""

    cost: float


def parse_share_cap(text: str) -> ShareCap:
    """``ARM=SHARE`` (the arm id may itself hold ``=``: the last one splits)."""
    arm, sep, share = text.rpartition("=")
    if not sep or not arm.strip():
        raise OirlError(f"--max-share {text!r}: expected ARM=SHARE, e.g. gpt-4-0613:cot=0.3")
    try:
        value = float(share)
    except ValueError:
        raise OirlError(f"--max-share {text!r}: the share {share!r} is not a number") from None
    if not 0 <= value <= 1:
        raise OirlError(f"--max-share {text!r}: the share must be within [0, 1], got {value:g}")
    return ShareCap(arm.strip(), value)


def check_target(rec: Recommender, target: ShareCap | Budget) -> np.ndarray:
    """Refuse a target the bundle cannot meet, before anything is embedded; returns the
    bundle prompts' costs (k,)."""
    missing = [p.prompt_id for p in rec.prompts if rec.costs.get(p.prompt_id) is None]
    if missing:
        raise OirlError(f"the bundle has no cost for prompt(s) {', '.join(missing[:5])}: calibration needs the cost of every prompt "
                        "(train on a log with a 'cost' column)")
    cost = np.array([rec.costs[p.prompt_id] for p in rec.prompts])
    if isinstance(target, Budget):
        if not math.isfinite(target.cost) or target.cost < cost.min():
            raise OirlError(f"--budget {target.cost:g} is below the cheapest prompt's cost ({cost.min():g}): no cost weight meets it")
        return cost
    ids = [p.prompt_id for p in rec.prompts]
    if target.prompt_id not in ids:
        raise OirlError(f"--max-share: unknown prompt {target.prompt_id!r} (the bundle's: {', '.join(ids[:20])})")
    if rec.costs[target.prompt_id] < cost.max():
        raise OirlError(f"--max-share caps the share of the dearest prompt, which only falls as the cost weight grows; "
                        f"{target.prompt_id!r} costs {rec.costs[target.prompt_id]:g}, less than {cost.max():g}: use --budget COST instead")
    return cost


def calibrate(rec: Recommender, queries: list[str], target: ShareCap | Budget, *, source: str) -> Recommender:
    """``rec`` with the cost-aware policy as its default, at the smallest cost weight that
    keeps ``target`` on ``queries`` (scored with the bundle's prompts), and the record."""
    cost = check_target(rec, target)
    if not queries:
        raise OirlError(f"{source}: no calibration queries")
    seen = int(rec.seen_in_training(queries).sum())
    if seen:  # a bundle scores its training questions from memory: a weight fit on them does not carry over to new traffic
        warnings.warn(f"{source}: {seen} of {len(queries)} calibration queries are questions the bundle was trained on; their scores "
                      "are not those of new queries, so the share (or cost) on live traffic may differ: calibrate on new queries",
                      stacklevel=2)
    scores = rec.score(queries)
    context = rec.policy("cost-aware", cost_weight=0.0).context
    ids = list(context.ids)
    if isinstance(target, ShareCap):
        values, limit = (np.arange(len(ids)) == ids.index(target.prompt_id)).astype(float), target.share
    else:
        values, limit = cost, target.cost
    choice = weight_for_limit(scores, context, values, limit)
    counts = np.bincount(choice.picks, minlength=len(ids))
    record: dict[str, Any] = {
        "target": "max_share" if isinstance(target, ShareCap) else "budget",
        "prompt_id": target.prompt_id if isinstance(target, ShareCap) else None,
        "limit": limit, "measured": choice.measured, "queries": len(queries), "source": source,
        "mean_cost": float(cost[choice.picks].mean()), "shares": {p: float(c / len(queries)) for p, c in zip(ids, counts, strict=True)},
        "seen_in_training": seen,
    }
    CalibrationSection.model_validate(record)
    return rec.with_cost_policy(choice.cost_weight, record)
