"""The logging policy of a partial log that has no propensity column, estimated.

A deployed system logs the one prompt it used for each query, often without the
probability of having used it. Off-policy values need that probability: without it a
model could only be valued by its own predictions, and a model that predicts high
rewards everywhere would vouch for itself. So oirl estimates it: a multinomial logistic
regression of the logged prompt on the query vector, cross-fitted over question folds
(an instance's propensity comes from a model that never saw its question), its
regularisation chosen by log-loss on those folds, and clipped from below at
:data:`PROPENSITY_FLOOR` (importance weights of at most 1 / floor). Support comes from the
estimate before clipping: a prompt the estimated logger gives less than the floor is
unsupported there. The diagnostics say how much the estimate can be trusted: the smallest
and largest propensity of a logged prompt, the effective sample size of the
inverse-propensity weights, and the share of instances on which the estimated logger is
near-deterministic (one prompt at 1 - floor or more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oirl.data.matrix import LogMatrix
from oirl.learn.crossfit import make_folds

#: Estimated propensities below this count as this: no logged round weighs more than 20.
PROPENSITY_FLOOR = 0.05
#: Inverse regularisation strengths tried (on standardised query vectors).
C_GRID = (0.003, 0.03, 0.3)
ESTIMATOR = "multinomial logistic regression of the logged prompt on the query vector, cross-fitted over question folds"


@dataclass(frozen=True)
class LoggingPolicyEstimate:
    """``probabilities`` (n, m): the estimated chance that the logger chose prompt j for
    instance i (rows sum to one; 0 for a prompt the training folds never logged), and the
    propensities of the logged cells, clipped at ``floor`` (n, m, NaN where not logged)."""

    probabilities: np.ndarray
    propensity: np.ndarray
    floor: float
    C: float

    def supported(self, logged: np.ndarray) -> np.ndarray:
        """(n, m) where the estimated logger could have played the prompt: a logged cell, or
        one it gives at least ``floor`` *before* clipping. Below the floor the clipped
        propensity would be a figure oirl made up, and a logistic fit is never exactly 0:
        "above 0" would call a deterministic logger's every prompt supported."""
        return logged | (self.probabilities >= self.floor)

    def near_deterministic(self) -> np.ndarray:
        """(n,) instances where the estimated logger plays one prompt with probability at
        least 1 - ``floor``: every other prompt there is unsupported."""
        return self.probabilities.max(axis=1) >= 1 - self.floor

    def diagnostics(self, logged: np.ndarray) -> dict[str, Any]:
        """Smallest and largest logged propensity, and the effective sample size of the
        inverse-propensity weights, (sum w)^2 / sum w^2, of the logged rounds."""
        p = self.propensity[logged]
        weights = 1.0 / p
        return {
            "source": "estimated", "estimator": ESTIMATOR, "C": self.C, "floor": self.floor, "rounds": int(logged.sum()),
            "min": float(p.min()), "max": float(p.max()), "clipped_rounds": int((self.probabilities[logged] < self.floor).sum()),
            "near_deterministic_share": float(self.near_deterministic().mean()),
            "effective_sample_size": float(weights.sum() ** 2 / (weights**2).sum()),
        }


def estimate_logging_policy(matrix: LogMatrix, folds: list[tuple[np.ndarray, np.ndarray]], *, floor: float = PROPENSITY_FLOOR,
                            grid: tuple[float, ...] = C_GRID) -> LoggingPolicyEstimate:
    """Cross-fitted estimate of which prompt the logger chose, from the query vector alone.

    ``folds`` are (train rows, held-out rows) of the matrix's instances, grouped by
    question; every logged cell is one observation of the logger's choice."""
    n, m = matrix.rewards.shape
    X = matrix.query_vectors[matrix.text_index].astype(np.float64)
    rows, cols = np.nonzero(matrix.logged)
    held_out = np.empty(n, dtype=int)
    for k, (_, test) in enumerate(folds):
        held_out[test] = k
    by_C = {C: _cross_fitted(X, rows, cols, held_out, len(folds), m, C) for C in grid}
    log_loss = {C: -np.mean(np.log(np.maximum(probs[rows, cols], 1e-12))) for C, probs in by_C.items()}
    C = min(log_loss, key=log_loss.get)
    probabilities = by_C[C]
    propensity = np.where(matrix.logged, np.maximum(probabilities, floor), np.nan)
    return LoggingPolicyEstimate(probabilities, propensity, floor, C)


def _cross_fitted(X: np.ndarray, rows: np.ndarray, cols: np.ndarray, held_out: np.ndarray, n_folds: int, m: int, C: float) -> np.ndarray:
    """(n, m) out-of-fold class probabilities of a logistic regression with strength ``C``."""
    from sklearn.linear_model import LogisticRegression

    probabilities = np.zeros((len(X), m))
    for k in range(n_folds):
        fit_rows = held_out[rows] != k
        test = np.flatnonzero(held_out == k)
        classes = np.unique(cols[fit_rows])
        if len(classes) == 1:  # the logger only ever used one prompt here
            probabilities[np.ix_(test, classes)] = 1.0
            continue
        train_X = X[rows[fit_rows]]
        mean, scale = train_X.mean(axis=0), train_X.std(axis=0) + 1e-6
        model = LogisticRegression(C=C, max_iter=500).fit((train_X - mean) / scale, cols[fit_rows])
        probabilities[np.ix_(test, model.classes_)] = model.predict_proba((X[test] - mean) / scale)
    return probabilities


def logged_propensity_diagnostics(matrix: LogMatrix) -> dict[str, Any]:
    """The same diagnostics for propensities the log itself carries."""
    p = matrix.propensity[matrix.logged]
    weights = 1.0 / p
    return {"source": "logged", "rounds": int(len(p)), "min": float(p.min()), "max": float(p.max()),
            "effective_sample_size": float(weights.sum() ** 2 / (weights**2).sum())}


def with_propensities(matrix: LogMatrix, n_folds: int) -> tuple[LogMatrix, dict[str, Any] | None]:
    """A partial-feedback matrix with the propensities its values need, and their
    diagnostics: the logged ones, else an estimate (:func:`estimate_logging_policy`, folds
    by question). A full-information matrix comes back as it is, with None."""
    if matrix.full_information and matrix.propensity is None:
        return matrix, None
    if matrix.propensity is not None:
        return matrix, logged_propensity_diagnostics(matrix)
    estimate = estimate_logging_policy(matrix, make_folds(matrix, n_folds, "text"))
    return matrix.with_propensity(estimate.propensity, "estimated"), estimate.diagnostics(matrix.logged)


def describe(diagnostics: dict[str, Any]) -> str:
    """One line for stderr: where the propensities come from and how far to trust them."""
    where = "estimated from the queries (no propensity column)" if diagnostics["source"] == "estimated" else "logged"
    return (f"partial feedback: propensities {where}: {diagnostics['rounds']:,} logged rounds, propensity "
            f"{diagnostics['min']:.3g} to {diagnostics['max']:.3g}, effective sample size {diagnostics['effective_sample_size']:,.0f}"
            + (f" ({diagnostics['clipped_rounds']:,} rounds clipped at {diagnostics['floor']})" if diagnostics["source"] == "estimated" else "")
            + (near_deterministic_note(diagnostics) or ""))


def near_deterministic_note(diagnostics: dict[str, Any]) -> str | None:
    """What to say when an estimated logger is near-deterministic on some instances (None: it is not)."""
    share = diagnostics.get("near_deterministic_share") or 0.0
    if not share:
        return None
    return (f"; the estimated logger is near-deterministic (one prompt at probability >= {1 - diagnostics['floor']:g}) on "
            f"{share:.0%} of instances: the other prompts there are unsupported, and their values rest on the reward model")
