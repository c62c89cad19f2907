"""Exploration: a policy's picks turned into a distribution to draw from, with the exact
probability of each draw (what off-policy evaluation needs).
"""

from __future__ import annotations

import numpy as np

from oirl.errors import OirlError

EXPLORATION_METHODS = ("epsilon", "softmax")


def exploration_probabilities(scores: np.ndarray, picks: np.ndarray, method: str, parameter: float) -> np.ndarray:
    """(n_q, n_c) probability of serving each candidate, rows summing to one.

    ``epsilon`` (parameter epsilon in [0, 1]): the policy's pick has probability
    1 - epsilon + epsilon / K and every other candidate epsilon / K. ``softmax``
    (parameter temperature > 0): probability proportional to exp(score / temperature),
    whatever the policy would have picked.
    """
    n, k = scores.shape
    if method == "epsilon":
        if not 0.0 <= parameter <= 1.0:
            raise OirlError(f"epsilon must be in [0, 1], got {parameter}")
        probabilities = np.full((n, k), parameter / k)
        probabilities[np.arange(n), picks] += 1.0 - parameter
        return probabilities
    if method == "softmax":
        if not (parameter > 0 and np.isfinite(parameter)):
            raise OirlError(f"the softmax temperature must be a finite number > 0, got {parameter}")
        scores = np.asarray(scores, dtype=np.float64)
        with np.errstate(over="ignore"):  # a tiny temperature sends the losers to -inf: exp gives their 0 exactly
            weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / parameter)  # shift first: no inf - inf
        return weights / weights.sum(axis=1, keepdims=True)
    raise OirlError(f"unknown exploration method {method!r} (choose from {', '.join(EXPLORATION_METHODS)})")


def draw(probabilities: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One candidate per row drawn from ``probabilities`` (n_q, n_c): (choices, their probabilities)."""
    cumulative = np.cumsum(probabilities, axis=1)
    u = rng.random((len(probabilities), 1)) * cumulative[:, -1:]
    choices = np.minimum((u >= cumulative).sum(axis=1), probabilities.shape[1] - 1)
    return choices, probabilities[np.arange(len(choices)), choices]


def parse_exploration(text: str) -> tuple[str, float]:
    """``epsilon:0.1`` or ``softmax:0.05`` -> (method, parameter); checked."""
    method, _, value = text.partition(":")
    try:
        parameter = float(value)
    except ValueError:
        raise OirlError(f"bad exploration {text!r}: expected epsilon:EPSILON or softmax:TEMPERATURE") from None
    exploration_probabilities(np.zeros((1, 1)), np.zeros(1, dtype=int), method, parameter)  # validates
    return method, parameter
