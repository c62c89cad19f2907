"""Reward models by name: the ``--model`` choices.
"""

from __future__ import annotations

from oirl.errors import OirlError
from oirl.reward.base import RewardModel
from oirl.reward.lexical import LexicalReward
from oirl.reward.linear import LogisticReward, MLPReward
from oirl.reward.lowrank import LowRankReward
from oirl.reward.neighbours import NeighbourReward
from oirl.reward.trees import CentredLightGBMReward, LightGBMReward, XGBoostReward

#: Backends by name; the keys are the CLI's ``--model`` choices (besides ``auto``).
REWARD_MODELS: dict[str, type[RewardModel]] = {
    cls.name: cls for cls in (LightGBMReward, CentredLightGBMReward, XGBoostReward, LogisticReward, MLPReward, NeighbourReward, LexicalReward,
                LowRankReward)
}


def make_reward_model(name: str, **params) -> RewardModel:
    if name not in REWARD_MODELS:
        raise OirlError(f"unknown reward model {name!r} (choose from {', '.join(REWARD_MODELS)})")
    try:
        return REWARD_MODELS[name](**params)
    except TypeError as exc:
        raise OirlError(f"bad parameters for the {name} reward model: {exc}") from None
