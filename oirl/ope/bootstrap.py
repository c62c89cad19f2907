"""Cluster bootstrap: intervals that resample whole clusters (question texts), never rows.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 256  # bootstrap draws per matrix product: bounds memory at 256 x n_clusters


def ratio_intervals(
    numerators: np.ndarray, denominators: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int, level: float
) -> np.ndarray:
    """Percentile interval (n_series, 2) of sum(num) / sum(den) per column of ``numerators``
    and ``denominators`` (n_rounds, n_series), resampling whole ``clusters`` (n_rounds,)."""
    if n_boot == 0:
        return np.full((numerators.shape[1], 2), np.nan)
    _, index = np.unique(clusters, return_inverse=True)
    n_clusters = int(index.max()) + 1
    cluster_num = np.zeros((n_clusters, numerators.shape[1]))
    cluster_den = np.zeros_like(cluster_num)
    np.add.at(cluster_num, index, numerators)
    np.add.at(cluster_den, index, denominators)
    rng = np.random.default_rng(seed)
    uniform = np.full(n_clusters, 1.0 / n_clusters)
    ratios = np.empty((n_boot, numerators.shape[1]))
    for start in range(0, n_boot, _CHUNK):
        draws = rng.multinomial(n_clusters, uniform, size=min(_CHUNK, n_boot - start)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start : start + len(draws)] = (draws @ cluster_num) / (draws @ cluster_den)
    intervals = np.full((numerators.shape[1], 2), np.nan)
    for j in range(numerators.shape[1]):
        defined = ratios[np.isfinite(ratios[:, j]), j]
        if defined.size:
            intervals[j] = np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])
    return intervals


def clustered_standard_error(differences: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of ``differences`` with rows correlated within clusters."""
    n = len(differences)
    if n < 2:
        return 0.0
    _, index = np.unique(clusters, return_inverse=True)
    n_clusters = int(index.max()) + 1
    if n_clusters < 2:
        return 0.0
    residual_sums = np.bincount(index, weights=differences - differences.mean(), minlength=n_clusters)
    return float(np.sqrt(n_clusters / (n_clusters - 1) * np.sum(residual_sums**2)) / n)


def cluster_bootstrap_mean(values: np.ndarray, clusters: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float, float]:
    """The mean of per-row ``values`` (n,) with a percentile interval that resamples whole
    ``clusters`` (n,): (mean, low, high). Rows of one question are not independent."""
    values = np.asarray(values, dtype=np.float64)
    (low, high), = ratio_intervals(values[:, None], np.ones((len(values), 1)), np.asarray(clusters), n_boot, seed, level)
    return float(values.mean()), float(low), float(high)
