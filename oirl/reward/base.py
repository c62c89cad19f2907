"""Proxy reward models: r(query, prompt) ~ P(correct), learned from pair features.

Every backend is a scikit-learn estimator (``BaseEstimator``): keyword-only
``__init__`` that only stores parameters, ``fit(X, y, sample_weight=None)`` returning
``self``, learned state with a trailing underscore, ``predict_proba(X)`` of shape
(n, 2); so ``clone``, ``get_params`` and grid searches work on them.
``predict_reward(X)`` is the second column, shape (n,).

Pair features start with ``[query vector, prompt vector]`` (:mod:`oirl.reward.features`).
Rewards may be fractions in [0, 1] (soft labels): LightGBM trains with its
``cross_entropy`` objective and XGBoost with ``binary:logistic``, both of which take
probabilities as labels; the scikit-learn models see each row twice, as a positive
with weight ``r`` and a negative with weight ``1 - r``.

Two entry points besides ``fit``/``predict_reward`` take the data as matrices, which
is how training and serving hold it: :meth:`RewardModel.fit_matrix` (distinct query
vectors, prompt vectors, a reward matrix with NaN where a prompt was not logged) and
:meth:`RewardModel.predict_grid` (every query with every prompt). The neighbour model
overrides both to work on aggregated counts instead of feature rows.

A model serialises to bytes in its library's own format (LightGBM text, XGBoost JSON,
``.npz`` weights scored by a numpy forward pass), so loading never unpickles, fitted
and loaded models give identical scores, and a bundle can fingerprint exactly the
bytes it loaded.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from oirl.errors import BundleError, OirlError
from oirl.reward.features import grid_features, pair_features


class RewardModel(BaseEstimator, ABC):
    """Base class: ``fit`` / ``predict_reward`` plus serialisation to bytes."""

    name: ClassVar[str]
    model_file: ClassVar[str]
    #: Feature layout the model can personalise with (see :mod:`oirl.reward.features`).
    default_layout: ClassVar[str] = "concat"

    def set_embedding_dimension(self, dimension: int) -> RewardModel:
        """Told before ``fit`` how long the query and prompt vectors are. Models that
        read the features as an opaque vector ignore it."""
        return self

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> RewardModel: ...

    @abstractmethod
    def predict_reward(self, X: np.ndarray) -> np.ndarray:
        """Predicted P(correct) for each row of X, shape (n,)."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.predict_reward(X)
        return np.column_stack([1.0 - p, p])

    def fit_matrix(
        self, query_vectors: np.ndarray, text_index: np.ndarray, prompt_vectors: np.ndarray, rewards: np.ndarray,
        layout: str, sample_weight: np.ndarray | None = None,
    ) -> RewardModel:
        """Fit on logged cells. ``query_vectors`` (n_texts, d) are the distinct query
        texts, ``text_index`` (n,) maps each query instance to its text, ``rewards``
        (n, m) holds NaN where prompt j was not logged for instance i, and
        ``sample_weight`` (n, m) optionally weights the logged cells."""
        rows, cols = np.nonzero(~np.isnan(rewards))
        X = pair_features(query_vectors[text_index[rows]], prompt_vectors[cols], layout)
        weight = None if sample_weight is None else sample_weight[rows, cols]
        return self.fit(X, rewards[rows, cols], sample_weight=weight)

    def predict_grid(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, layout: str) -> np.ndarray:
        """Scores of every query with every prompt: (n_q, d) and (n_p, d) -> (n_q, n_p)."""
        out = np.empty((len(query_vectors), len(prompt_vectors)))
        step = max(1, 65_536 // max(1, len(prompt_vectors)))  # bounded feature memory
        for start in range(0, len(query_vectors), step):
            block = query_vectors[start : start + step]
            out[start : start + len(block)] = self.predict_reward(grid_features(block, prompt_vectors, layout)).reshape(len(block), -1)
        return out

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The fitted model in its library's own format."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes, params: dict, *, where: str = "model file") -> RewardModel:
        """Rebuild a fitted model; raises :class:`BundleError` naming ``where``."""

    def _check_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise OirlError(f"this {type(self).__name__} is not fitted yet; call fit first")


def _check_training_data(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"`X` must be 2D and `y` 1D of the same length, got {X.shape} and {y.shape}")
    if len(y) == 0:
        raise OirlError("no training rows")
    if np.any((y < 0) | (y > 1)) or np.isnan(y).any():
        raise ValueError("`y` must hold rewards in [0, 1]")
    if sample_weight is not None and len(sample_weight) != len(y):
        raise ValueError(f"`sample_weight` has length {len(sample_weight)}, expected {len(y)}")
    return X, y


# --------------------------------------------------------------------------- gradient-boosted trees


class _ReadsQueryPart:
    """For models that split the features into their query part and the rest: they keep
    the embedding dimension they are told (``dimension``, also a constructor parameter)."""

    def set_embedding_dimension(self, dimension):
        self.dimension = dimension
        return self


# --------------------------------------------------------------------------- helpers


def _query_part(X: np.ndarray, dimension: int | None, model: str) -> np.ndarray:
    if dimension is None:
        raise OirlError(f"the {model} reward model needs the embedding dimension (set_embedding_dimension)")
    return np.asarray(X[:, :dimension], dtype=np.float32)


def _unique_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and the index of each row's distinct row: (n_distinct, d), (n,).

    Compares raw bytes (much faster than ``np.unique(axis=0)``'s lexicographic sort).
    """
    vectors = np.ascontiguousarray(vectors)
    keys = vectors.view(np.dtype((np.void, vectors.dtype.itemsize * vectors.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return vectors[first], inverse.ravel()


def _load_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip, npy-format and pickle-refusal errors all mean "unreadable"
        raise BundleError(f"{where}: not a readable weights file ({type(exc).__name__})") from None


def check_scores(scores: np.ndarray, where: str) -> None:
    """A NaN or infinite predicted reward is a broken model, never a silent pick."""
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise OirlError(f"{where}: the reward model produced a non-finite score ({scores[row, col]}) for query {row}, prompt {col}")
