"""What model selection chooses among: reward-model configurations (:class:`ModelSpec`),
the ``--model auto`` grid, and the cross-validation groupings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oirl.reward.base import RewardModel
from oirl.reward.registry import make_reward_model

AUTO = "auto"
#: How cross-validation groups query instances: by question ``text`` (every held-out
#: question is new) or by ``instance`` (held-out rows are new samples of questions that
#: may occur in training).
CV_GROUPS = ("text", "instance")


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


#: ``--model auto``: the neighbour model over its grid, the lexical model (ridge heads on
#: the query's words) over its penalty, the low-rank factorisation of the outcomes over
#: the query vectors, LightGBM pointwise and on per-query-centred
#: rewards, logistic regression and an MLP on a layout where they can personalise.
#: Complexity orders them for the one-standard-error rule.
AUTO_CANDIDATES: tuple[ModelSpec, ...] = (
    *(spec("knn", 1, k=k, query_tau=t, alpha=a) for k in (5, 20, 50) for t in (0.02, 0.05, 0.1) for a in (0.5, 2.0)),
    *(spec("lexical", 2, alpha=a) for a in (10.0, 30.0, 100.0, 300.0)),
    *(spec("lowrank", 3, rank=4, alpha=a) for a in (10.0, 30.0, 100.0)),
    spec("logistic", 4),
    spec("lightgbm", 5),
    spec("lightgbm-centred", 6),
    spec("mlp", 7),
)
