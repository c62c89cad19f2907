"""Proxy reward models: r(query, prompt) ~ P(correct), learned from pair features.

Every backend follows the scikit-learn estimator contract: keyword-only ``__init__``
that only stores parameters, ``fit(X, y, sample_weight=None)`` returning ``self``,
learned state with a trailing underscore, ``predict_proba(X)`` of shape (n, 2).
``predict_reward(X)`` is its second column, shape (n,).

Rewards may be fractions in [0, 1] (soft labels): LightGBM trains with its
``cross_entropy`` objective and XGBoost with ``binary:logistic``, both of which take
probabilities as labels; the scikit-learn models see each row twice, as a positive
with weight ``r`` and a negative with weight ``1 - r``.

Saving writes each library's own format (LightGBM text, XGBoost JSON) or, for the
scikit-learn models, their weights in a ``.npz`` scored by a numpy forward pass, so
loading never unpickles and fitted and loaded models give identical scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from oirl._atomic import atomic_path
from oirl.errors import BundleError, OirlError


class RewardModel(ABC):
    """Base class: ``fit`` / ``predict_proba`` plus save/load in a bundle directory."""

    name: ClassVar[str]
    model_file: ClassVar[str]
    _param_names: ClassVar[tuple[str, ...]]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (saved in the bundle, passed back on load)."""
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params: Any) -> RewardModel:
        """Change constructor parameters (scikit-learn style); returns ``self``."""
        unknown = set(params) - set(self._param_names)
        if unknown:
            raise OirlError(f"unknown parameter(s) {', '.join(sorted(unknown))} for {self.name} (known: {', '.join(self._param_names)})")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def set_embedding_dimension(self, dimension: int) -> RewardModel:
        """Told before ``fit`` how long the query and prompt vectors are (pair features
        start with ``[query, prompt]``). Models that read features as an opaque vector
        ignore it."""
        return self

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> RewardModel: ...

    @abstractmethod
    def predict_reward(self, X: np.ndarray) -> np.ndarray:
        """Predicted P(correct) for each row of X, shape (n,)."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.predict_reward(X)
        return np.column_stack([1.0 - p, p])

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the fitted model as ``directory / self.model_file``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> RewardModel: ...

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


class LightGBMReward(RewardModel):
    """Gradient-boosted trees (LightGBM, cross-entropy objective). The default."""

    name = "lightgbm"
    model_file = "model.lightgbm.txt"
    _param_names = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples", "colsample", "reg_lambda", "seed")

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.03,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        colsample: float = 0.3,
        reg_lambda: float = 1.0,
        seed: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        import lightgbm as lgb

        X, y = _check_training_data(X, y, sample_weight)
        params = {
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.colsample,
            "lambda_l2": self.reg_lambda,
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        data = lgb.Dataset(X, label=y, weight=sample_weight, free_raw_data=True)
        self.booster_ = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict_reward(self, X):
        self._check_fitted()
        return np.asarray(self.booster_.predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def save(self, directory):
        with atomic_path(directory / self.model_file) as tmp:
            tmp.write_text(self.booster_.model_to_string(), encoding="utf-8")

    @classmethod
    def load(cls, directory, params):
        import lightgbm as lgb

        path = directory / cls.model_file
        model = cls(**params)
        try:
            model.booster_ = lgb.Booster(model_str=_read_model_text(path))
        except lgb.basic.LightGBMError as exc:
            raise BundleError(f"{path}: not a readable LightGBM model: {str(exc).splitlines()[0]}") from None
        return model


class XGBoostReward(RewardModel):
    """Gradient-boosted trees (XGBoost, ``binary:logistic``, histogram method)."""

    name = "xgboost"
    model_file = "model.xgboost.json"
    _param_names = ("n_estimators", "learning_rate", "max_depth", "min_child_weight", "colsample", "reg_lambda", "seed")

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.03,
        max_depth: int = 4,
        min_child_weight: float = 10.0,
        colsample: float = 0.3,
        reg_lambda: float = 1.0,
        seed: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        import xgboost as xgb

        X, y = _check_training_data(X, y, sample_weight)
        params = {
            "objective": "binary:logistic",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "colsample_bytree": self.colsample,
            "lambda": self.reg_lambda,
            "tree_method": "hist",
            "seed": self.seed,
            "verbosity": 0,
        }
        self.booster_ = xgb.train(params, xgb.DMatrix(X, label=y, weight=sample_weight), self.n_estimators)
        return self

    def predict_reward(self, X):
        self._check_fitted()
        return np.asarray(self.booster_.inplace_predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def save(self, directory):
        with atomic_path(directory / self.model_file) as tmp:
            self.booster_.save_model(str(tmp))  # the ".json" suffix selects XGBoost's JSON format

    @classmethod
    def load(cls, directory, params):
        import xgboost as xgb

        path = directory / cls.model_file
        _read_model_text(path)  # a clear error for a missing file
        model = cls(**params)
        model.booster_ = xgb.Booster()
        try:
            model.booster_.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            raise BundleError(f"{path}: not a readable XGBoost model: {str(exc).splitlines()[0]}") from None
        return model


class _NumpyForwardReward(RewardModel):
    """scikit-learn models kept as weights: fit with scikit-learn, score with numpy.

    Inputs are standardised (mean/scale saved with the weights). Soft rewards become
    row pairs: (x, 1) with weight r and (x, 0) with weight 1 - r.
    """

    model_file = "model.weights.npz"

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
        estimator = self._make_estimator().fit(X2[keep], y2[keep], sample_weight=w2[keep])
        self.weights_ = self._weights_from(estimator)
        return self

    def predict_reward(self, X):
        self._check_fitted()
        Xs = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        return 1.0 / (1.0 + np.exp(-np.clip(self._logit(Xs), -50, 50)))

    def save(self, directory):
        with atomic_path(directory / self.model_file) as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, mean=self.mean_, scale=self.scale_, **self.weights_)

    @classmethod
    def load(cls, directory, params):
        path = directory / cls.model_file
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise BundleError(f"{path}: missing model file") from None
        except Exception as exc:
            raise BundleError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
        model = cls(**params)
        model.mean_, model.scale_ = arrays.pop("mean"), arrays.pop("scale")
        model.weights_ = arrays
        return model


class LogisticReward(_NumpyForwardReward):
    """L2-regularised logistic regression on standardised features."""

    name = "logistic"
    _param_names = ("C", "max_iter")

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
    _param_names = ("hidden_layer_sizes", "alpha", "max_iter", "seed")

    def __init__(self, *, hidden_layer_sizes: tuple[int, ...] = (128,), alpha: float = 1e-2, max_iter: int = 200, seed: int = 0):
        self.hidden_layer_sizes = tuple(hidden_layer_sizes)
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed

    def _make_estimator(self):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(
            hidden_layer_sizes=self.hidden_layer_sizes,
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=True,
            random_state=self.seed,
        )

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


class NeighbourReward(RewardModel):
    """Kernel-weighted nearest-neighbour estimate of P(correct | query, prompt).

    For a query q and prompt p, the estimate pools the logged rewards of the ``k``
    training queries most similar to q (cosine), each weighted by
    ``exp((cos - 1) / query_tau)``, over the training prompts weighted by their
    similarity to p (``prompt_tau = 0``: the same prompt only), and shrinks it toward
    that prompt's mean training reward with ``alpha`` pseudo-observations:

        r(q, p) = (sum_ij w_i v_j S_ij + alpha * m_p) / (sum_ij w_i v_j C_ij + alpha)

    where S and C are reward sums and counts per (training query text, prompt). With
    ``prompt_tau = 0`` a prompt's scores depend on that prompt's rows alone, so one fit
    serves every subset of the training prompts. A prompt never seen in training
    borrows from the training prompts by similarity (``new_prompt_tau``).

    It reads the features as ``[query, prompt, ...]``: call
    :meth:`set_embedding_dimension` (the recommender does) or pass ``dimension``.
    """

    name = "knn"
    model_file = "model.neighbours.npz"
    _param_names = ("k", "query_tau", "prompt_tau", "new_prompt_tau", "alpha", "dimension")

    def __init__(
        self,
        *,
        k: int = 20,
        query_tau: float = 0.05,
        prompt_tau: float = 0.0,
        new_prompt_tau: float = 0.05,
        alpha: float = 1.0,
        dimension: int | None = None,
    ):
        self.k = k
        self.query_tau = query_tau
        self.prompt_tau = prompt_tau
        self.new_prompt_tau = new_prompt_tau
        self.alpha = alpha
        self.dimension = dimension

    def set_embedding_dimension(self, dimension: int) -> NeighbourReward:
        self.dimension = dimension
        return self

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.dimension is None:
            raise OirlError("the knn reward model needs the embedding dimension (set_embedding_dimension)")
        d = self.dimension
        return np.asarray(X[:, :d], dtype=np.float32), np.asarray(X[:, d : 2 * d], dtype=np.float32)

    def fit(self, X, y, sample_weight=None):
        X, y = _check_training_data(X, y, sample_weight)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        q, p = self._split(X)
        queries, qi = np.unique(q, axis=0, return_inverse=True)
        prompts, pi = np.unique(p, axis=0, return_inverse=True)
        sums = np.zeros((len(queries), len(prompts)))
        counts = np.zeros((len(queries), len(prompts)))
        np.add.at(sums, (qi.ravel(), pi.ravel()), weight * y)
        np.add.at(counts, (qi.ravel(), pi.ravel()), weight)
        return self.fit_grid(queries, prompts, sums, counts)

    def fit_grid(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> NeighbourReward:
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
        for start in range(0, len(query_vectors), 2048):  # bounded memory for large batches
            cos = np.asarray(query_vectors[start : start + 2048], dtype=np.float32) @ self.queries_.T
            idx = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(cos, idx, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            indices[start : start + 2048] = np.take_along_axis(idx, order, axis=1)
            cosines[start : start + 2048] = np.take_along_axis(top, order, axis=1)
        return indices, cosines

    def _prompt_weights(self, prompts: np.ndarray) -> np.ndarray:
        """(n_prompts, n_train_prompts) weights of the training prompts for each prompt."""
        cos = prompts @ self.prompts_.T
        if self.prompt_tau > 0:
            return np.exp((cos - 1) / self.prompt_tau)
        exact = cos > 1 - 1e-5
        soft = np.exp((cos - 1) / max(self.new_prompt_tau, 1e-6))
        return np.where(exact.any(axis=1, keepdims=True), exact.astype(float), soft)

    def predict_grid(
        self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
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
        v = self._prompt_weights(np.asarray(prompt_vectors, dtype=np.float32))
        prior = (v @ self.sums_.sum(axis=0)) / np.maximum(v @ self.counts_.sum(axis=0), 1e-12)
        return (sums @ v.T + self.alpha * prior[None, :]) / (counts @ v.T + self.alpha)

    def predict_reward(self, X):
        self._check_fitted()
        q, p = self._split(np.asarray(X))
        queries, qi = np.unique(q, axis=0, return_inverse=True)
        prompts, pi = np.unique(p, axis=0, return_inverse=True)
        return self.predict_grid(queries, prompts)[qi.ravel(), pi.ravel()]

    def save(self, directory):
        with atomic_path(directory / self.model_file) as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, queries=self.queries_, prompts=self.prompts_, sums=self.sums_, counts=self.counts_)

    @classmethod
    def load(cls, directory, params):
        path = directory / cls.model_file
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("queries", "prompts", "sums", "counts")}
        except FileNotFoundError:
            raise BundleError(f"{path}: missing model file") from None
        except Exception as exc:
            raise BundleError(f"{path}: not a readable neighbours file ({type(exc).__name__})") from None
        model = cls(**params)
        model.queries_, model.prompts_, model.sums_, model.counts_ = (arrays[k] for k in ("queries", "prompts", "sums", "counts"))
        return model


#: Backends by name; the keys are the CLI's ``--model`` choices.
REWARD_MODELS: dict[str, type[RewardModel]] = {
    cls.name: cls for cls in (LightGBMReward, XGBoostReward, LogisticReward, MLPReward, NeighbourReward)
}
DEFAULT_MODEL = "lightgbm"


def make_reward_model(name: str = DEFAULT_MODEL, **params: Any) -> RewardModel:
    if name not in REWARD_MODELS:
        raise OirlError(f"unknown reward model {name!r} (choose from {', '.join(REWARD_MODELS)})")
    return REWARD_MODELS[name](**params)


def _read_model_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing model file") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise BundleError(f"{path}: unreadable model file ({type(exc).__name__})") from None
