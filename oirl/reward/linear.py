"""scikit-learn models kept as weights and scored by a numpy forward pass: logistic
regression and a small MLP.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod

import numpy as np

from oirl.errors import CannotFit, one_line
from oirl.reward.base import RewardModel, _fit_data, _predict_data, npz_arrays, npz_bytes, store_parameters

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
        X, y, sample_weight = _fit_data(self, X, y, sample_weight)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.mean_ = np.average(X, axis=0, weights=weight)  # weighted: a weight of 2 is the same row twice
        self.scale_ = np.sqrt(np.average((X - self.mean_) ** 2, axis=0, weights=weight)) + 1e-6
        Xs = (X - self.mean_) / self.scale_
        X2 = np.vstack([Xs, Xs])
        y2 = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
        w2 = np.concatenate([weight * y, weight * (1.0 - y)])
        keep = w2 > 0
        if len(np.unique(y2[keep])) < 2:
            raise CannotFit("the training rewards are all 0 or all 1; a reward model needs both outcomes")
        estimator = self._fit_estimator(X2[keep], y2[keep], w2[keep])
        self.weights_ = self._weights_from(estimator)
        self.n_iter_ = int(np.max(estimator.n_iter_))
        return self

    def _fit_estimator(self, X, y, weight):
        return self._make_estimator().fit(X, y, sample_weight=weight)

    def predict(self, X):
        X = _predict_data(self, X)
        Xs = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        return 1.0 / (1.0 + np.exp(-np.clip(self._logit(Xs), -50, 50)))

    def to_bytes(self) -> bytes:
        return npz_bytes(mean=self.mean_, scale=self.scale_, **self.weights_)

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        arrays = npz_arrays(data, where, ("mean", "scale"))
        model = cls(**params)
        model.mean_, model.scale_ = arrays.pop("mean"), arrays.pop("scale")
        model.weights_ = arrays
        return model


class LogisticReward(_NumpyForwardReward):
    """L2-regularised logistic regression on standardised features."""

    name = "logistic"

    def __init__(self, *, C: float = 0.05, max_iter: int = 500):
        store_parameters(self, locals())

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
        store_parameters(self, locals())

    def _make_estimator(self):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=tuple(self.hidden_layer_sizes), alpha=self.alpha, max_iter=self.max_iter,
                             early_stopping=True, random_state=self.seed)

    def _fit_estimator(self, X, y, weight):

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # early stopping decides; max_iter is only a cap
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                return self._make_estimator().fit(X, y, sample_weight=weight)
            except ValueError as exc:
                # Early stopping holds out a stratified tenth of the rows: on a tiny log that
                # is fewer rows than outcomes (scikit-learn's "test_size = 1 should be ...").
                # The data were checked before, so this is the rows being too few.
                raise CannotFit(f"too few training rows ({len(y):,}) for its early-stopping split ({one_line(exc)})") from exc

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
