"""Proxy reward models: r(query, prompt) ~ P(correct), learned from pair features.

Every backend is a scikit-learn estimator (``BaseEstimator``): keyword-only
``__init__`` that only stores parameters, ``fit(X, y, sample_weight=None)`` returning
``self``, learned state with a trailing underscore, ``predict_proba(X)`` of shape
(n, 2); so ``clone``, ``get_params`` and grid searches work on them.
``predict_reward(X)`` is the second column, shape (n,).

Pair features start with ``[query vector, prompt vector]`` (:mod:`oirl.features`).
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
import json
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from oirl._threads import configure_openmp, training_threads
from oirl.errors import BundleError, OirlError
from oirl.features import grid_features, pair_features


class RewardModel(BaseEstimator, ABC):
    """Base class: ``fit`` / ``predict_reward`` plus serialisation to bytes."""

    name: ClassVar[str]
    model_file: ClassVar[str]
    #: Feature layout the model can personalise with (see :mod:`oirl.features`).
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


class LightGBMReward(RewardModel):
    """Gradient-boosted trees (LightGBM, cross-entropy objective)."""

    name = "lightgbm"
    model_file = "model.lightgbm.txt"

    def __init__(
        self, *, n_estimators: int = 300, learning_rate: float = 0.03, num_leaves: int = 15, min_child_samples: int = 50,
        colsample: float = 0.3, reg_lambda: float = 1.0, seed: int = 0, n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.seed = seed
        self.n_jobs = n_jobs

    def _train(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, objective: str):
        configure_openmp()
        import lightgbm as lgb

        params = {
            "objective": objective, "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples, "feature_fraction": self.colsample, "lambda_l2": self.reg_lambda,
            "seed": self.seed, "deterministic": True, "verbosity": -1,
            "num_threads": training_threads(X.shape[0], X.shape[1], self.n_jobs),
        }
        return lgb.train(params, lgb.Dataset(X, label=y, weight=weight, free_raw_data=True), num_boost_round=self.n_estimators)

    def fit(self, X, y, sample_weight=None):
        X, y = _check_training_data(X, y, sample_weight)
        self.booster_ = self._train(X, y, sample_weight, "cross_entropy")
        return self

    def predict_reward(self, X):
        self._check_fitted()
        return np.asarray(self.booster_.predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return self.booster_.model_to_string().encode("utf-8")

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        model = cls(**params)
        model.booster_ = _lightgbm_booster(data, where)
        return model


def _lightgbm_booster(data: bytes | str, where: str):
    configure_openmp()
    import lightgbm as lgb

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return lgb.Booster(model_str=text)
    except (UnicodeDecodeError, lgb.basic.LightGBMError) as exc:
        raise BundleError(f"{where}: not a readable LightGBM model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class CentredLightGBMReward(_ReadsQueryPart, LightGBMReward):
    """Two LightGBM models: how hard a query is, and which prompt wins on it.

    r(q, p) = d(q) + a(q, p): ``d`` regresses each query text's mean reward on the
    query vector; ``a`` regresses the per-query *centred* reward (reward minus that
    query's mean over its logged prompts) on the pair features. A pointwise model
    spends most of its trees on difficulty, which never changes the pick; here the
    advantage model's capacity all goes to the difference between prompts.
    """

    name = "lightgbm-centred"
    model_file = "model.lightgbm-centred.json"

    def __init__(
        self, *, n_estimators: int = 300, learning_rate: float = 0.03, num_leaves: int = 15, min_child_samples: int = 50,
        colsample: float = 0.3, reg_lambda: float = 1.0, seed: int = 0, n_jobs: int | None = None, dimension: int | None = None,
    ):
        super().__init__(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                         min_child_samples=min_child_samples, colsample=colsample, reg_lambda=reg_lambda, seed=seed, n_jobs=n_jobs)
        self.dimension = dimension

    def fit(self, X, y, sample_weight=None):
        X, y = _check_training_data(X, y, sample_weight)
        queries, text_of_row = _unique_rows(_query_part(X, self.dimension, self.name))
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        sums = np.bincount(text_of_row, weights=weight * y, minlength=len(queries))
        counts = np.bincount(text_of_row, weights=weight, minlength=len(queries))
        query_mean = sums / np.maximum(counts, 1e-12)
        self.difficulty_ = self._train(queries, query_mean, counts, "regression")
        self.booster_ = self._train(X, y - query_mean[text_of_row], sample_weight, "regression")
        return self

    def predict_reward(self, X):
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        difficulty = self.difficulty_.predict(_query_part(X, self.dimension, self.name))
        return np.clip(difficulty + self.booster_.predict(X), 0.0, 1.0)

    def to_bytes(self) -> bytes:
        document = {"format": "oirl-lightgbm-centred/1", "difficulty": self.difficulty_.model_to_string(),
                    "advantage": self.booster_.model_to_string()}
        return json.dumps(document).encode("utf-8")

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        try:
            document = json.loads(data.decode("utf-8"))
            difficulty, advantage = document["difficulty"], document["advantage"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(f"{where}: not a readable centred LightGBM model ({type(exc).__name__})") from None
        model = cls(**params)
        model.difficulty_, model.booster_ = _lightgbm_booster(difficulty, where), _lightgbm_booster(advantage, where)
        return model


class XGBoostReward(RewardModel):
    """Gradient-boosted trees (XGBoost, ``binary:logistic``, histogram method)."""

    name = "xgboost"
    model_file = "model.xgboost.json"

    def __init__(
        self, *, n_estimators: int = 300, learning_rate: float = 0.03, max_depth: int = 4, min_child_weight: float = 10.0,
        colsample: float = 0.3, reg_lambda: float = 1.0, seed: int = 0, n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(self, X, y, sample_weight=None):
        configure_openmp()
        import xgboost as xgb

        X, y = _check_training_data(X, y, sample_weight)
        params = {
            "objective": "binary:logistic", "eta": self.learning_rate, "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight, "colsample_bytree": self.colsample, "lambda": self.reg_lambda,
            "tree_method": "hist", "seed": self.seed, "verbosity": 0, "nthread": training_threads(X.shape[0], X.shape[1], self.n_jobs),
        }
        self.booster_ = xgb.train(params, xgb.DMatrix(X, label=y, weight=sample_weight), self.n_estimators)
        return self

    def predict_reward(self, X):
        self._check_fitted()
        return np.asarray(self.booster_.inplace_predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return bytes(self.booster_.save_raw(raw_format="json"))

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        configure_openmp()
        import xgboost as xgb

        model = cls(**params)
        model.booster_ = xgb.Booster()
        try:
            model.booster_.load_model(bytearray(data))
        except xgb.core.XGBoostError as exc:
            raise BundleError(f"{where}: not a readable XGBoost model: {str(exc).splitlines()[0]}") from None
        return model


# --------------------------------------------------------------------------- scikit-learn models as weights


class _NumpyForwardReward(RewardModel):
    """scikit-learn models kept as weights: fit with scikit-learn, score with numpy.

    Inputs are standardised (mean/scale saved with the weights). Soft rewards become
    row pairs: (x, 1) with weight r and (x, 0) with weight 1 - r. They personalise only
    with query-prompt interaction features (``concat-product``): a linear model on
    ``[q, p]`` scores sigma(w.q + v.p + b), whose best prompt never depends on q.
    """

    model_file = "model.weights.npz"
    default_layout = "concat-product"

    @abstractmethod
    def _make_estimator(self): ...

    @abstractmethod
    def _weights_from(self, estimator) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _logit(self, Xs: np.ndarray) -> np.ndarray: ...

    def fit(self, X, y, sample_weight=None):
        X, y = _check_training_data(X, y, sample_weight)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        Xs = (X - self.mean_) / self.scale_
        X2 = np.vstack([Xs, Xs])
        y2 = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
        w2 = np.concatenate([weight * y, weight * (1.0 - y)])
        keep = w2 > 0
        if len(np.unique(y2[keep])) < 2:
            raise OirlError("the training rewards are all 0 or all 1; a reward model needs both outcomes")
        self.weights_ = self._weights_from(self._fit_estimator(X2[keep], y2[keep], w2[keep]))
        return self

    def _fit_estimator(self, X, y, weight):
        return self._make_estimator().fit(X, y, sample_weight=weight)

    def predict_reward(self, X):
        self._check_fitted()
        Xs = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        return 1.0 / (1.0 + np.exp(-np.clip(self._logit(Xs), -50, 50)))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean_, scale=self.scale_, **self.weights_)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        arrays = _load_npz(data, where)
        model = cls(**params)
        try:
            model.mean_, model.scale_ = arrays.pop("mean"), arrays.pop("scale")
        except KeyError as exc:
            raise BundleError(f"{where}: missing array {exc}") from None
        model.weights_ = arrays
        return model


class LogisticReward(_NumpyForwardReward):
    """L2-regularised logistic regression on standardised features."""

    name = "logistic"

    def __init__(self, *, C: float = 0.05, max_iter: int = 500):
        self.C = C
        self.max_iter = max_iter

    def _make_estimator(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def _weights_from(self, estimator):
        return {"coef": estimator.coef_.ravel(), "intercept": estimator.intercept_.ravel()}

    def _logit(self, Xs):
        return Xs @ self.weights_["coef"] + self.weights_["intercept"][0]


class MLPReward(_NumpyForwardReward):
    """A small ReLU network (scikit-learn ``MLPClassifier``) with early stopping."""

    name = "mlp"

    def __init__(self, *, hidden_layer_sizes: tuple[int, ...] = (64,), alpha: float = 1e-2, max_iter: int = 100, seed: int = 0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed

    def _make_estimator(self):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=tuple(self.hidden_layer_sizes), alpha=self.alpha, max_iter=self.max_iter,
                             early_stopping=True, random_state=self.seed)

    def _fit_estimator(self, X, y, weight):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # early stopping decides; max_iter is only a cap
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._make_estimator().fit(X, y, sample_weight=weight)

    def _weights_from(self, estimator):
        layers = {f"coef_{i}": w for i, w in enumerate(estimator.coefs_)}
        layers.update({f"intercept_{i}": b for i, b in enumerate(estimator.intercepts_)})
        return layers

    def _logit(self, Xs):
        n_layers = sum(1 for k in self.weights_ if k.startswith("coef_"))
        h = Xs
        for i in range(n_layers):
            h = h @ self.weights_[f"coef_{i}"] + self.weights_[f"intercept_{i}"]
            if i < n_layers - 1:
                h = np.maximum(h, 0.0)
        return h.ravel()


# --------------------------------------------------------------------------- neighbours


_NEIGHBOUR_CELLS = 8_000_000  # query x training-query cosines per block in NeighbourReward.neighbours


class NeighbourReward(_ReadsQueryPart, RewardModel):
    """Kernel-weighted nearest-neighbour estimate of P(correct | query, prompt).

    For a query q and prompt p, the estimate pools the logged rewards of the ``k``
    training queries most similar to q (cosine), each weighted by
    ``exp((cos - 1) / query_tau)``, over the training prompts weighted by ``v_j``, and
    shrinks it toward the prompt's mean training reward with ``alpha``
    pseudo-observations:

        r(q, p) = (sum_ij w_i v_j S_ij + alpha * sum_j v_j m_j) / (sum_ij w_i v_j C_ij + alpha)

    where S and C are reward sums and counts per (training query text, prompt). For a
    training prompt ``v`` is one-hot (``prompt_tau = 0``: a prompt's scores depend on
    its own rows only) or a softmax over the training prompts' cosines with width
    ``prompt_tau``. A prompt never seen in training borrows from the training prompts
    by similarity: ``v = softmax((cos - 1) / new_prompt_tau)``, normalised to sum to
    one so the borrowed estimate keeps its query dependence however far the prompt is.

    It reads the features as ``[query, prompt, ...]``: call
    :meth:`set_embedding_dimension` (the recommender does) or pass ``dimension``.
    """

    name = "knn"
    model_file = "model.neighbours.npz"

    def __init__(
        self, *, k: int = 20, query_tau: float = 0.05, prompt_tau: float = 0.0, new_prompt_tau: float = 0.05,
        alpha: float = 2.0, dimension: int | None = None,
    ):
        self.k = k
        self.query_tau = query_tau
        self.prompt_tau = prompt_tau
        self.new_prompt_tau = new_prompt_tau
        self.alpha = alpha
        self.dimension = dimension

    def fit(self, X, y, sample_weight=None):
        X, y = _check_training_data(X, y, sample_weight)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        queries, qi = _unique_rows(_query_part(X, self.dimension, self.name))
        prompts, pi = _unique_rows(np.asarray(X[:, self.dimension : 2 * self.dimension], dtype=np.float32))
        sums = np.zeros((len(queries), len(prompts)))
        counts = np.zeros((len(queries), len(prompts)))
        np.add.at(sums, (qi, pi), weight * y)
        np.add.at(counts, (qi, pi), weight)
        return self.fit_counts(queries, prompts, sums, counts)

    def fit_matrix(self, query_vectors, text_index, prompt_vectors, rewards, layout, sample_weight=None):
        logged = ~np.isnan(rewards)
        weight = logged.astype(float) if sample_weight is None else np.where(logged, sample_weight, 0.0)
        sums = np.zeros((len(query_vectors), rewards.shape[1]))
        counts = np.zeros_like(sums)
        np.add.at(sums, text_index, weight * np.nan_to_num(rewards))
        np.add.at(counts, text_index, weight)
        seen = counts.sum(axis=1) > 0  # texts of this fold only
        return self.set_embedding_dimension(query_vectors.shape[1]).fit_counts(query_vectors[seen], prompt_vectors, sums[seen], counts[seen])

    def fit_counts(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> NeighbourReward:
        """Fit from aggregated logs: reward sums and counts of shape (n_queries, n_prompts)."""
        self.queries_ = np.asarray(query_vectors, dtype=np.float32)
        self.prompts_ = np.asarray(prompt_vectors, dtype=np.float32)
        self.sums_, self.counts_ = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
        return self

    def neighbours(self, query_vectors: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar training queries of each query: (indices, cosines), best first."""
        self._check_fitted()
        k = min(k or self.k, len(self.queries_))
        indices = np.empty((len(query_vectors), k), dtype=np.int64)
        cosines = np.empty((len(query_vectors), k), dtype=np.float32)
        # Bounded memory: a block of cosines and their argpartition (int64) hold about
        # 14 bytes x _NEIGHBOUR_CELLS, whatever the number of training queries.
        step = max(1, min(2048, _NEIGHBOUR_CELLS // max(1, len(self.queries_))))
        for start in range(0, len(query_vectors), step):
            cos = np.asarray(query_vectors[start : start + step], dtype=np.float32) @ self.queries_.T
            idx = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(cos, idx, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            indices[start : start + step] = np.take_along_axis(idx, order, axis=1)
            cosines[start : start + step] = np.take_along_axis(top, order, axis=1)
        return indices, cosines

    def prompt_weights(self, prompt_vectors: np.ndarray) -> np.ndarray:
        """(n_prompts, n_train_prompts) weights ``v`` of the training prompts, rows summing to one."""
        cos = np.asarray(prompt_vectors, dtype=np.float32) @ self.prompts_.T
        exact = cos > 1 - 1e-5
        known = exact.any(axis=1, keepdims=True)
        tau = np.where(known, self.prompt_tau, self.new_prompt_tau)
        logits = (cos.astype(np.float64) - 1) / np.maximum(tau, 1e-6)
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        soft /= soft.sum(axis=1, keepdims=True)
        one_hot = exact / np.maximum(exact.sum(axis=1, keepdims=True), 1)
        return np.where(known & (tau <= 0), one_hot, soft)

    def predict_grid(self, query_vectors, prompt_vectors, layout="concat", neighbours=None):
        """Scores of every query with every prompt: (n_q, d) and (n_p, d) -> (n_q, n_p).

        ``neighbours`` (from :meth:`neighbours`, at least ``k`` wide) saves the search
        when several parameter settings score the same queries.
        """
        self._check_fitted()
        idx, cos = neighbours if neighbours is not None else self.neighbours(query_vectors)
        idx, cos = idx[:, : self.k], cos[:, : self.k]
        w = np.exp((cos.astype(np.float64) - 1) / self.query_tau)
        sums = np.einsum("nk,nkp->np", w, self.sums_[idx])
        counts = np.einsum("nk,nkp->np", w, self.counts_[idx])
        v = self.prompt_weights(prompt_vectors)
        prompt_means = self.sums_.sum(axis=0) / np.maximum(self.counts_.sum(axis=0), 1e-12)
        return (sums @ v.T + self.alpha * (v @ prompt_means)[None, :]) / (counts @ v.T + self.alpha)

    def predict_reward(self, X):
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        queries, qi = _unique_rows(_query_part(X, self.dimension, self.name))
        prompts, pi = _unique_rows(X[:, self.dimension : 2 * self.dimension])
        return self.predict_grid(queries, prompts)[qi, pi]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, queries=self.queries_, prompts=self.prompts_, sums=self.sums_, counts=self.counts_)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        arrays = _load_npz(data, where)
        model = cls(**params)
        try:
            model.queries_, model.prompts_, model.sums_, model.counts_ = (arrays[k] for k in ("queries", "prompts", "sums", "counts"))
        except KeyError as exc:
            raise BundleError(f"{where}: missing array {exc}") from None
        n_q, n_p = len(model.queries_), len(model.prompts_)
        if model.sums_.shape != (n_q, n_p) or model.counts_.shape != (n_q, n_p):
            raise BundleError(f"{where}: sums/counts of shape {model.sums_.shape}, expected {(n_q, n_p)}")
        return model


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


#: Backends by name; the keys are the CLI's ``--model`` choices (besides ``auto``).
REWARD_MODELS: dict[str, type[RewardModel]] = {
    cls.name: cls for cls in (LightGBMReward, CentredLightGBMReward, XGBoostReward, LogisticReward, MLPReward, NeighbourReward)
}


def make_reward_model(name: str, **params) -> RewardModel:
    if name not in REWARD_MODELS:
        raise OirlError(f"unknown reward model {name!r} (choose from {', '.join(REWARD_MODELS)})")
    try:
        return REWARD_MODELS[name](**params)
    except TypeError as exc:
        raise OirlError(f"bad parameters for the {name} reward model: {exc}") from None
