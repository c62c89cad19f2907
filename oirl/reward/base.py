"""Proxy reward models: r(query, prompt) ~ P(correct), learned from pair features.

Every backend is a scikit-learn regressor of the reward (``RegressorMixin``,
``BaseEstimator``): keyword-only ``__init__`` that only stores parameters,
``fit(X, y, sample_weight=None)`` returning ``self`` and never changing a parameter,
learned state with a trailing underscore, ``predict(X)`` the predicted reward in [0, 1],
shape (n,) (``predict_reward`` is the same), and ``score`` (R^2); so ``clone``, ``get_params``, ``cross_val_score`` and grid searches work on
them. Models that read the features as ``[query, prompt, ...]`` learn where the query
part ends (``dimension_``) from ``dimension`` or, left None, from the width of ``X``
(the ``concat`` layout).

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
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from oirl.errors import BrokenModel, BundleError
from oirl.reward.features import grid_features, pair_features


def store_parameters(estimator: BaseEstimator, values: dict) -> None:
    """``__init__``'s one job in scikit-learn's contract: keep each parameter as given
    (call it with ``locals()``)."""
    for name, value in values.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class RewardModel(RegressorMixin, BaseEstimator, ABC):
    """Base class: ``fit`` / ``predict`` of the reward, plus serialisation to bytes."""

    name: ClassVar[str]
    model_file: ClassVar[str]
    #: Feature layout the model can personalise with (see :mod:`oirl.reward.features`).
    default_layout: ClassVar[str] = "concat"
    #: Whether the model reads the query *texts* too (passed as ``texts`` to
    #: :meth:`fit_matrix` and :meth:`predict_grid`), not only their vectors.
    reads_texts: ClassVar[bool] = False

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> RewardModel: ...

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted reward, P(correct), for each row of X, shape (n,)."""

    def predict_reward(self, X: np.ndarray) -> np.ndarray:
        """The same as :meth:`predict` (the name oirl's code reads best with)."""
        return self.predict(X)



    def fit_matrix(
        self, query_vectors: np.ndarray, text_index: np.ndarray, prompt_vectors: np.ndarray, rewards: np.ndarray,
        layout: str, sample_weight: np.ndarray | None = None, texts: np.ndarray | None = None,
    ) -> RewardModel:
        """Fit on logged cells. ``query_vectors`` (n_texts, d) are the distinct query
        texts (``texts``, (n_texts,), the texts themselves: a model that
        :attr:`reads_texts` needs them), ``text_index`` (n,) maps each query instance to
        its text, ``rewards`` (n, m) holds NaN where prompt j was not logged for instance
        i, and ``sample_weight`` (n, m) optionally weights the logged cells."""
        rows, cols = np.nonzero(~np.isnan(rewards))
        X = pair_features(query_vectors[text_index[rows]], prompt_vectors[cols], layout)
        weight = None if sample_weight is None else sample_weight[rows, cols]
        return self.fit(X, rewards[rows, cols], sample_weight=weight)

    def predict_grid(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, layout: str, texts=None) -> np.ndarray:
        """Scores of every query with every prompt: (n_q, d) and (n_p, d) -> (n_q, n_p)
        (``texts``, the n_q query texts, for a model that :attr:`reads_texts`)."""
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
        check_is_fitted(self)  # scikit-learn's NotFittedError, naming the class


def _fit_data(estimator: RewardModel, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``X`` (n, F) float32, ``y`` (n,) rewards in [0, 1] and ``sample_weight`` (n,) or None,
    checked as scikit-learn checks (finite, 2-D, not empty, not sparse; ``n_features_in_``)."""
    X, y = validate_data(estimator, X, y, dtype=np.float32, y_numeric=True)
    y = np.asarray(y, dtype=np.float64)
    if np.any((y < 0) | (y > 1)):
        raise ValueError("`y` must hold rewards in [0, 1]")
    if sample_weight is not None:
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if not sample_weight.sum() > 0:
            raise ValueError("`sample_weight` sums to zero: no row would count")
    return X, y, sample_weight


def _predict_data(estimator: RewardModel, X) -> np.ndarray:
    """``X`` as float32, checked like the data ``fit`` saw (same width, finite, 2-D)."""
    estimator._check_fitted()
    return validate_data(estimator, X, dtype=np.float32, reset=False)


class ReadsQueryPart:
    """For models that split the features into their query part and the rest: the
    embedding dimension is the ``dimension`` parameter, or half the width of ``X``."""

    def _learn_dimension(self, X: np.ndarray) -> int:
        dimension = self.dimension if self.dimension is not None else X.shape[1] // 2
        if not 0 < dimension < X.shape[1]:
            raise ValueError(f"X has n_features = {X.shape[1]}: too few for a query part of {dimension} and a prompt part "
                             "(pair features are [query vector, prompt vector, ...])")
        self.dimension_ = int(dimension)
        return self.dimension_

    def _query_part(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X[:, : self.dimension_], dtype=np.float32)


class FitsCounts(ReadsQueryPart):
    """For models that learn from aggregated outcomes: reward sums and counts per (distinct
    query, prompt). ``fit`` and ``fit_matrix`` aggregate and call ``fit_counts(query_vectors,
    prompt_vectors, sums, counts)``, which the model defines; ``predict`` scores the distinct
    (query, prompt) vectors of ``X`` with the model's ``predict_grid``."""

    def fit(self, X, y, sample_weight=None):
        X, y, sample_weight = _fit_data(self, X, y, sample_weight)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        d = self._learn_dimension(X)
        queries, qi = _unique_rows(self._query_part(X))
        prompts, pi = _unique_rows(np.asarray(X[:, d : 2 * d], dtype=np.float32))
        sums = np.zeros((len(queries), len(prompts)))
        counts = np.zeros_like(sums)
        np.add.at(sums, (qi, pi), weight * y)
        np.add.at(counts, (qi, pi), weight)
        return self.fit_counts(queries, prompts, sums, counts)

    def fit_matrix(self, query_vectors, text_index, prompt_vectors, rewards, layout, sample_weight=None, texts=None):
        sums, counts = cell_totals(text_index, rewards, sample_weight, len(query_vectors))
        seen = counts.sum(axis=1) > 0  # texts of this fold only
        return self.fit_counts(query_vectors[seen], prompt_vectors, sums[seen], counts[seen])

    def predict(self, X):
        X = _predict_data(self, X)
        queries, qi = _unique_rows(self._query_part(X))
        prompts, pi = _unique_rows(X[:, self.dimension_ : 2 * self.dimension_])
        return self.predict_grid(queries, prompts)[qi, pi]


# --------------------------------------------------------------------------- helpers


def cell_totals(text_index: np.ndarray, rewards: np.ndarray, sample_weight: np.ndarray | None, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """Reward sums and (weighted) counts of the logged cells per distinct text, each (n_texts, m):
    ``rewards`` (n, m) is NaN where not logged, ``text_index`` (n,) maps instances to texts."""
    logged = ~np.isnan(rewards)
    weight = logged.astype(float) if sample_weight is None else np.where(logged, sample_weight, 0.0)
    sums = np.zeros((n_texts, rewards.shape[1]))
    counts = np.zeros_like(sums)
    np.add.at(sums, text_index, weight * np.nan_to_num(rewards))
    np.add.at(counts, text_index, weight)
    return sums, counts


def _unique_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and the index of each row's distinct row: (n_distinct, d), (n,).

    Compares raw bytes (much faster than ``np.unique(axis=0)``'s lexicographic sort).
    """
    vectors = np.ascontiguousarray(vectors)
    keys = vectors.view(np.dtype((np.void, vectors.dtype.itemsize * vectors.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return vectors[first], inverse.ravel()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Arrays as the bytes of an ``.npz`` file (numpy's own format, loaded without pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_arrays(data: bytes, where: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of ``.npz`` bytes, each of ``required`` present; :class:`BundleError` naming ``where`` otherwise."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip, npy-format and pickle-refusal errors all mean "unreadable"
        raise BundleError(f"{where}: not a readable weights file ({type(exc).__name__})") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise BundleError(f"{where}: missing array {missing[0]!r}")
    return arrays


def check_predictions(scores: np.ndarray, where: str) -> None:
    """A NaN or infinite predicted reward is a broken model, never a silent pick."""
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise BrokenModel(f"{where}: the reward model produced a non-finite score ({scores[row, col]}) for query {row}, prompt {col}", where)
