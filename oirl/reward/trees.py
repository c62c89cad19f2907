"""Gradient-boosted trees as reward models: LightGBM (pointwise and centred) and XGBoost.
"""

from __future__ import annotations

import json

import numpy as np

from oirl._threads import configure_openmp, training_threads
from oirl.errors import BundleError
from oirl.reward.base import ReadsQueryPart, RewardModel, _fit_data, _predict_data, _unique_rows, store_parameters


class LightGBMReward(RewardModel):
    """Gradient-boosted trees (LightGBM, cross-entropy objective)."""

    name = "lightgbm"
    model_file = "model.lightgbm.txt"

    def __init__(
        self, *, n_estimators: int = 300, learning_rate: float = 0.03, num_leaves: int = 15, min_child_samples: int = 50,
        colsample: float = 0.3, reg_lambda: float = 1.0, seed: int = 0, n_jobs: int | None = None,
    ):
        store_parameters(self, locals())

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
        X, y, sample_weight = _fit_data(self, X, y, sample_weight)
        self.booster_ = self._train(X, y, sample_weight, "cross_entropy")
        return self

    def predict(self, X):
        X = _predict_data(self, X)
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


class CentredLightGBMReward(ReadsQueryPart, LightGBMReward):
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
        store_parameters(self, locals())

    def fit(self, X, y, sample_weight=None):
        X, y, sample_weight = _fit_data(self, X, y, sample_weight)
        self._learn_dimension(X)
        queries, text_of_row = _unique_rows(self._query_part(X))
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        sums = np.bincount(text_of_row, weights=weight * y, minlength=len(queries))
        counts = np.bincount(text_of_row, weights=weight, minlength=len(queries))
        query_mean = sums / np.maximum(counts, 1e-12)
        self.difficulty_ = self._train(queries, query_mean, counts, "regression")
        self.booster_ = self._train(X, y - query_mean[text_of_row], sample_weight, "regression")
        return self

    def predict(self, X):
        X = _predict_data(self, X)
        difficulty = self.difficulty_.predict(self._query_part(X))
        return np.clip(difficulty + self.booster_.predict(X), 0.0, 1.0)

    def to_bytes(self) -> bytes:
        document = {"format": "oirl-lightgbm-centred/2", "dimension": self.dimension_, "difficulty": self.difficulty_.model_to_string(),
                    "advantage": self.booster_.model_to_string()}
        return json.dumps(document).encode("utf-8")

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        try:
            document = json.loads(data.decode("utf-8"))
            difficulty, advantage, dimension = document["difficulty"], document["advantage"], int(document["dimension"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: not a readable centred LightGBM model ({type(exc).__name__})") from None
        model = cls(**params)
        model.difficulty_, model.booster_ = _lightgbm_booster(difficulty, where), _lightgbm_booster(advantage, where)
        model.dimension_ = dimension
        return model


class XGBoostReward(RewardModel):
    """Gradient-boosted trees (XGBoost, ``binary:logistic``, histogram method)."""

    name = "xgboost"
    model_file = "model.xgboost.json"

    def __init__(
        self, *, n_estimators: int = 300, learning_rate: float = 0.03, max_depth: int = 4, min_child_weight: float = 10.0,
        colsample: float = 0.3, reg_lambda: float = 1.0, seed: int = 0, n_jobs: int | None = None,
    ):
        store_parameters(self, locals())

    def fit(self, X, y, sample_weight=None):
        configure_openmp()
        import xgboost as xgb

        X, y, sample_weight = _fit_data(self, X, y, sample_weight)
        params = {
            "objective": "binary:logistic", "eta": self.learning_rate, "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight, "colsample_bytree": self.colsample, "lambda": self.reg_lambda,
            "tree_method": "hist", "seed": self.seed, "verbosity": 0, "nthread": training_threads(X.shape[0], X.shape[1], self.n_jobs),
        }
        self.booster_ = xgb.train(params, xgb.DMatrix(X, label=y, weight=sample_weight), self.n_estimators)
        return self

    def predict(self, X):
        X = _predict_data(self, X)
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
