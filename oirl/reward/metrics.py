"""Reward-model quality on logged rows: accuracy, ROC AUC, Brier score, calibration.
"""

from __future__ import annotations

import numpy as np


def classification_metrics(rewards: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Reward-model quality on rows: ``rewards`` and predicted ``scores``, both shape (n,).

    A row counts as correct when its reward is >= 0.5 (soft rewards included); the Brier
    score and calibration error compare scores with the rewards themselves.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    y = rewards >= 0.5
    predicted = scores >= 0.5
    both_classes = 0 < y.sum() < len(y)
    return {
        "rows": int(len(y)),
        "accuracy": float(accuracy_score(y, predicted)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, scores)) if both_classes else None,
        "brier": float(np.mean((scores - rewards) ** 2)),
        "calibration_error": expected_calibration_error(rewards, scores),
    }


def expected_calibration_error(rewards: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """Mean |mean score - mean reward| over equal-width score bins, weighted by bin size."""
    bins = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(scores[in_bin].mean() - rewards[in_bin].mean())
    return float(error)
