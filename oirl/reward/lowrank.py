"""The low-rank model: a factorisation of the outcome matrix over the query vectors.

In the manner of RouteLLM's matrix-factorisation router and EmbedLLM: each training
prompt j has a bias ``b_j`` and a learned ``rank``-dimensional embedding ``e_j``; a query
vector q is projected to the same space by a matrix ``U`` shared by every prompt, and

    r(q, j) = sigmoid(b_j + w . q + (U q) . e_j)

so what the prompts have in common (which directions of q matter at all) is learned
once from every prompt's outcomes, instead of once per prompt. It fits by L-BFGS on the
log-likelihood of the aggregated outcomes (reward sums and counts per distinct query and
prompt, so soft rewards count as fractions) with an L2 penalty ``alpha`` on ``U``, ``w``
and ``e``. A prompt never trained on borrows the embeddings and biases of the training
prompts by vector similarity (:func:`oirl.reward.prompts.borrowed_weights`). The fitted
state is an ``.npz`` of the weights.
"""

from __future__ import annotations

import numpy as np

from oirl.errors import BundleError, OirlError
from oirl.reward.base import (
    FitsCounts,
    RewardModel,
    npz_arrays,
    npz_bytes,
    store_parameters,
)
from oirl.reward.prompts import borrowed_weights


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


class LowRankReward(FitsCounts, RewardModel):
    """Logistic matrix factorisation: per-prompt biases and embeddings, a shared query projection."""

    name = "lowrank"
    model_file = "model.lowrank.npz"

    def __init__(self, *, rank: int = 4, alpha: float = 1.0, max_iter: int = 300, new_prompt_tau: float = 0.05, seed: int = 0,
                 dimension: int | None = None):
        store_parameters(self, locals())

    # ------------------------------------------------------------------ fitting

    def fit_counts(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> LowRankReward:
        """Fit from reward sums and counts (n_queries, n_prompts) of distinct query vectors."""
        from scipy.optimize import minimize

        Q = np.asarray(query_vectors, dtype=np.float64)
        n, d = Q.shape
        m, r = sums.shape[1], self.rank
        if n == 0 or counts.sum() <= 0:
            raise OirlError("the low-rank reward model needs at least one logged outcome")
        total = counts.sum()
        means = (sums.sum(axis=0) + 0.5) / (counts.sum(axis=0) + 1.0)  # start at each prompt's (smoothed) mean
        rng = np.random.default_rng(self.seed)
        # Factors start small but not tiny: at U = E = 0 the gradient of each factor is
        # proportional to the other, so a start near zero sits at a saddle and L-BFGS stops.
        start = np.concatenate([np.log(means / (1 - means)), np.zeros(d), 0.1 * rng.standard_normal(d * r), 0.1 * rng.standard_normal(m * r)])

        def unpack(theta):
            b, w = theta[:m], theta[m : m + d]
            U = theta[m + d : m + d + d * r].reshape(d, r)
            E = theta[m + d + d * r :].reshape(m, r)
            return b, w, U, E

        def loss(theta):
            b, w, U, E = unpack(theta)
            P = Q @ U  # (n, r)
            p = _sigmoid(b[None, :] + (Q @ w)[:, None] + P @ E.T)
            # Negative log-likelihood of the aggregated outcomes, per logged cell on average.
            nll = -(sums * np.log(p + 1e-12) + (counts - sums) * np.log(1 - p + 1e-12)).sum() / total
            residual = (counts * p - sums) / total  # d nll / d logit
            penalty = 0.5 * self.alpha / total * (w @ w + (U * U).sum() + (E * E).sum())
            grad_b = residual.sum(axis=0)
            grad_w = Q.T @ residual.sum(axis=1) + self.alpha / total * w
            grad_U = Q.T @ (residual @ E) + self.alpha / total * U
            grad_E = residual.T @ P + self.alpha / total * E
            return nll + penalty, np.concatenate([grad_b, grad_w, grad_U.ravel(), grad_E.ravel()])

        # Tolerances far below the defaults: the loss is a per-cell average, so its gradients are small.
        result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter, "gtol": 1e-10, "ftol": 1e-13})
        b, w, U, E = unpack(result.x)
        self.bias_, self.query_weights_, self.projection_, self.prompt_embeddings_ = b, w, U, E
        self.prompts_ = np.asarray(prompt_vectors, dtype=np.float32)
        self.dimension_ = d
        self.n_iter_ = int(result.nit)
        return self

    # ------------------------------------------------------------------ scoring

    def predict_grid(self, query_vectors, prompt_vectors, layout="concat", texts=None):
        self._check_fitted()
        v = borrowed_weights(np.asarray(prompt_vectors, dtype=np.float32), self.prompts_, known_tau=0.0, new_tau=self.new_prompt_tau)
        Q = np.asarray(query_vectors, dtype=np.float64)
        logits = (v @ self.bias_)[None, :] + (Q @ self.query_weights_)[:, None] + (Q @ self.projection_) @ (v @ self.prompt_embeddings_).T
        return _sigmoid(logits)

    # ------------------------------------------------------------------ bytes

    def to_bytes(self) -> bytes:
        return npz_bytes(bias=self.bias_, query_weights=self.query_weights_, projection=self.projection_,
                         prompt_embeddings=self.prompt_embeddings_, prompts=self.prompts_)

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        names = ("bias", "query_weights", "projection", "prompt_embeddings", "prompts")
        arrays = npz_arrays(data, where, names)
        model = cls(**params)
        model.bias_, model.query_weights_, model.projection_, model.prompt_embeddings_, model.prompts_ = (arrays[k] for k in names)
        m, d = len(model.bias_), len(model.query_weights_)
        if model.projection_.ndim != 2 or model.projection_.shape[0] != d or model.prompt_embeddings_.shape != (m, model.projection_.shape[1]) \
                or len(model.prompts_) != m:
            raise BundleError(f"{where}: low-rank arrays of inconsistent shapes")
        model.dimension_ = d
        return model
