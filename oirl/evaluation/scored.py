"""Evaluated logs as matrices with a recommender's scores (:class:`ScoredLogs`): what every
report in :mod:`oirl.evaluation` is computed from."""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.matrix import reward_matrix
from oirl.errors import OirlError
from oirl.policy.policies import choose


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
    from oirl.recommender.recommender import Candidate

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
