"""Learning between retrains: what the feedback so far says about each prompt.

A bundle's reward model is fixed until the next ``oirl train``; the service's own
traffic says, meanwhile, how each prompt actually does. :class:`OnlineOffsets` turns
the acknowledged feedback of the decisions served by one model version into one offset
per prompt, added to the model's scores before the policy (and its exploration)
chooses: the prompt's mean residual (reward - the score it was served with), shrunk
toward the mean residual of every prompt.

The residuals are weighted by 1 / propensity (self-normalised importance weights), so
that the mean is over all queries, not only over those the policy chose the prompt
for. Unweighted, it would be the winner's curse: a model serves a prompt where it
over-predicts it most, so the prompt's raw residuals are negative and the offset would
push it down everywhere (measured: the MAWPS loop's stream fell from .698 to .681 a
round with raw residuals). Exploration's draws, served with small propensities, carry
the weight; without exploration (every propensity 1) the weights are equal. Shrinkage:

    offset_j = pooled + n_j / (n_j + strength) x (mean_j - pooled)

with ``n_j`` the effective sample size of prompt j's weights, (sum w)^2 / sum w^2, and
``pooled`` the weighted mean residual of every prompt (a prompt never served gets it).
Shrinking toward the common residual, not toward 0, matters on a cold start: a cold
bundle scores every prompt 0.5, so its offsets are shrunk success rates, and shrunk
toward 0 the default (served most, so shrunk least) would look better than a prompt
with few but better outcomes. From the first hundreds of decisions the served prompt
moves to the best so far, and exploration keeps going around it.

The state *is* the decision store: it is consistent across ``--workers`` (one SQLite
file), survives a restart, and a ``kill -9`` loses nothing acknowledged. A process
re-reads the counts after feedback it recorded itself (:meth:`OnlineOffsets.invalidate`)
and at most every ``refresh_seconds`` otherwise (feedback taken by another worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_STRENGTH = 20.0
DEFAULT_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class OnlineState:
    """Offsets per prompt id and how much feedback they rest on (recorded with each decision)."""

    offsets: dict[str, float]
    counts: dict[str, int]
    pooled: float = 0.0  # the common residual: the offset of a prompt never served

    @property
    def feedback(self) -> int:
        return int(sum(self.counts.values()))

    def for_candidates(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """(n_candidates,) the offset of each candidate (``pooled`` for a prompt never served)."""
        return np.array([self.offsets.get(p, self.pooled) for p in prompt_ids])

    def record(self, prompt_ids: Sequence[str]) -> dict:
        """What a decision records: the feedback counted and the offsets of its candidates."""
        return {"feedback": self.feedback, "offsets": {p: round(self.offsets.get(p, self.pooled), 6) for p in prompt_ids}}


def offsets_from(outcomes: dict, strength: float) -> OnlineState:
    """The state from :meth:`oirl.decisions.store.DecisionStore.arm_outcomes`' sums."""
    weight = sum(o.weight for o in outcomes.values())
    pooled = sum(o.weighted_residual for o in outcomes.values()) / weight if weight > 0 else 0.0
    offsets = {}
    for prompt_id, o in outcomes.items():
        mean = o.weighted_residual / o.weight
        effective = o.weight**2 / o.weight_squared
        offsets[prompt_id] = pooled + effective / (effective + strength) * (mean - pooled)
    return OnlineState(offsets=offsets, counts={p: o.count for p, o in outcomes.items()}, pooled=pooled)


class OnlineOffsets:
    """Per-prompt offsets from a decision store (``store.arm_outcomes(model_version)``)."""

    def __init__(self, store, *, strength: float = DEFAULT_STRENGTH, refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        if not strength > 0:
            raise ValueError(f"strength must be > 0, got {strength}")
        self.store, self.strength, self.refresh_seconds, self._clock = store, float(strength), float(refresh_seconds), clock
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, OnlineState]] = {}

    def state(self, model_version: str) -> OnlineState:
        """The offsets of ``model_version``'s decisions, read afresh if older than ``refresh_seconds``."""
        now = self._clock()
        with self._lock:
            cached = self._cached.get(model_version)
            if cached is not None and now - cached[0] < self.refresh_seconds:
                return cached[1]
        state = offsets_from(self.store.arm_outcomes(model_version), self.strength)
        with self._lock:
            self._cached = {model_version: (now, state)}  # one version is served at a time; a reload starts afresh
        return state

    def invalidate(self) -> None:
        """Forget the cached counts (this process just recorded feedback): the next state is read afresh."""
        with self._lock:
            self._cached = {}
