"""Exploration: policies that serve a random candidate, with the exact probability of each draw.

A deployed service that always serves its best guess never learns what the other
prompts would have done; an explorer spreads its choice over the candidates and reports
the probability of what it served (the propensity), which is what off-policy evaluation
and learning from the service's own traffic need. Each explorer is a
:class:`~oirl.policy.policies.Policy`: ``choose`` is its greedy pick (the mode, used for
rankings), ``probabilities`` the distribution it draws from, and :func:`draw` samples it.

* :class:`EpsilonGreedy` (``epsilon:E``): the base policy's pick with probability
  1 - E + E / K, every other available candidate E / K.
* :class:`Softmax` (``softmax:T``): probability proportional to exp(score / T), whatever
  the base policy would pick.
* :class:`InverseGap` (``squarecb:G``, SquareCB's inverse gap weighting, Foster and
  Rakhlin 2020): every other candidate gets 1 / (K + G x its predicted gap to the base
  policy's pick), the pick the rest. A candidate the model thinks close gets explored
  often, one it thinks far behind rarely; equal scores (a cold bundle) explore
  uniformly, and the larger G the more greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from oirl.errors import OirlError
from oirl.policy.policies import Argmax, Policy, PolicyContext, check_scores


class Explorer(Policy):
    """An exploring policy around ``base``: its mode (``choose``) and its explanations are
    the base policy's; :meth:`probabilities` spreads the mass."""

    base: Policy

    @property
    def context(self) -> PolicyContext:  # type: ignore[override]
        return self.base.context

    def _choose(self, scores, mask):
        return self.base.choose(scores, mask)

    def explain(self, scores, pick):
        return self.base.explain(scores, pick)


@dataclass(frozen=True, eq=False)
class EpsilonGreedy(Explorer):
    """Explore around ``base``'s pick: 1 - epsilon + epsilon / K for it, epsilon / K for
    each other available candidate (K of them in the row)."""

    base: Policy
    epsilon: float
    name: ClassVar[str] = "epsilon-greedy"

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise OirlError(f"epsilon must be in [0, 1], got {self.epsilon}")

    def probabilities(self, scores, mask=None):
        scores, mask = check_scores(scores, mask)
        picks = self.base.choose(scores, mask)
        available = mask.sum(axis=1, keepdims=True)
        out = np.where(mask, self.epsilon / available, 0.0)
        out[np.arange(len(picks)), picks] += 1.0 - self.epsilon
        return out


@dataclass(frozen=True, eq=False)
class Softmax(Explorer):
    """Draw a candidate with probability proportional to exp(score / temperature)."""

    base: Policy
    temperature: float
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise OirlError(f"the softmax temperature must be a finite number > 0, got {self.temperature}")

    def probabilities(self, scores, mask=None):
        scores, mask = check_scores(scores, mask)
        shifted = np.where(mask, scores, -np.inf)
        shifted = shifted - shifted.max(axis=1, keepdims=True)  # shift first: no inf - inf
        with np.errstate(over="ignore", divide="ignore"):  # a tiny temperature sends the losers to -inf: exp gives their 0 exactly
            weights = np.exp(shifted / self.temperature)
        return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class InverseGap(Explorer):
    """SquareCB's inverse gap weighting around ``base``'s pick ``b``: each other available
    candidate ``a`` gets 1 / (K + gamma (s_b - s_a)), ``b`` the rest (K candidates in the row)."""

    base: Policy
    gamma: float
    name: ClassVar[str] = "squarecb"

    def __post_init__(self) -> None:
        if not (self.gamma >= 0 and np.isfinite(self.gamma)):
            raise OirlError(f"the squarecb gamma must be a finite number >= 0, got {self.gamma}")

    def probabilities(self, scores, mask=None):
        scores, mask = check_scores(scores, mask)
        picks = self.base.choose(scores, mask)
        rows = np.arange(len(picks))
        available = mask.sum(axis=1, keepdims=True)
        gap = np.maximum(scores[rows, picks][:, None] - scores, 0.0)  # the base pick may not be the top score (conservative)
        out = np.where(mask, 1.0 / (available + self.gamma * gap), 0.0)
        out[rows, picks] = 0.0
        out[rows, picks] = 1.0 - out.sum(axis=1)
        return out


#: Explorers by the name ``--explore METHOD:PARAMETER`` gives them.
EXPLORERS: dict[str, type[Explorer]] = {"epsilon": EpsilonGreedy, "softmax": Softmax, "squarecb": InverseGap}


def explorer(method: str, parameter: float, base: Policy) -> Policy:
    """The named exploration around ``base`` (see :data:`EXPLORERS`)."""
    if method in EXPLORERS:
        return EXPLORERS[method](base, parameter)
    raise OirlError(f"unknown exploration method {method!r} (choose from {', '.join(EXPLORERS)})")


def draw(probabilities: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One candidate per row drawn from ``probabilities`` (n_q, n_c) by inverse CDF:
    (choices, their probabilities), each (n_q,). The one sampler of oirl."""
    cumulative = np.cumsum(probabilities, axis=1)
    u = rng.random((len(probabilities), 1)) * cumulative[:, -1:]
    choices = np.minimum((u >= cumulative).sum(axis=1), probabilities.shape[1] - 1)
    return choices, probabilities[np.arange(len(choices)), choices]


def parse_exploration(text: str) -> tuple[str, float]:
    """``epsilon:0.1``, ``softmax:0.05`` or ``squarecb:50`` -> (method, parameter); checked."""
    method, _, value = text.partition(":")
    try:
        parameter = float(value)
    except ValueError:
        raise OirlError(f"bad exploration {text!r}: expected epsilon:EPSILON, softmax:TEMPERATURE or squarecb:GAMMA") from None
    explorer(method, parameter, Argmax(PolicyContext.of(["x"])))  # validates
    return method, parameter
