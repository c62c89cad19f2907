"""The neighbour model: kernel-weighted rewards of the most similar training questions.
"""

from __future__ import annotations

import hashlib

import numpy as np

from oirl.errors import BundleError
from oirl.reward.base import (
    FitsCounts,
    RewardModel,
    npz_arrays,
    npz_bytes,
    store_parameters,
)
from oirl.reward.prompts import borrowed_weights

# --------------------------------------------------------------------------- neighbours


_NEIGHBOUR_CELLS = 8_000_000  # query x training-query cosines per block in NeighbourReward.neighbours


class NeighbourReward(FitsCounts, RewardModel):
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

    It reads the features as ``[query, prompt, ...]``, the query part ``dimension`` wide
    (None: half the width of ``X``); :meth:`fit_matrix` and :meth:`fit_counts` take the
    vectors apart and need neither.
    """

    name = "knn"
    model_file = "model.neighbours.npz"

    def __init__(
        self, *, k: int = 20, query_tau: float = 0.05, prompt_tau: float = 0.0, new_prompt_tau: float = 0.05,
        alpha: float = 2.0, dimension: int | None = None,
    ):
        store_parameters(self, locals())

    def fit_counts(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> NeighbourReward:
        """Fit from aggregated logs: reward sums and counts of shape (n_queries, n_prompts)."""
        self.queries_ = np.asarray(query_vectors, dtype=np.float32)
        self.prompts_ = np.asarray(prompt_vectors, dtype=np.float32)
        self.dimension_ = self.queries_.shape[1]
        self.tie_keys_ = tie_keys(self.queries_)
        self.sums_, self.counts_ = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
        return self

    def neighbours(self, query_vectors: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar training queries of each query: (indices, cosines), best first.

        Exact cosine ties (common with bag-of-words vectors) go to the training query with
        the smaller ``tie_keys_``, a hash of its vector: the neighbours, and so the
        scores, do not depend on the order of the training rows, which differs between
        engines (scikit-learn's ``NearestNeighbors`` breaks such ties by position, so a Dask
        and an in-memory fit of the same rows could disagree).
        """
        self._check_fitted()
        k = min(k or self.k, len(self.queries_))
        keys = self.tie_keys_
        indices = np.empty((len(query_vectors), k), dtype=np.int64)
        cosines = np.empty((len(query_vectors), k), dtype=np.float32)
        # Bounded memory: a block of cosines and their argpartition (int64) hold about
        # 14 bytes x _NEIGHBOUR_CELLS, whatever the number of training queries.
        step = max(1, min(2048, _NEIGHBOUR_CELLS // max(1, len(self.queries_))))
        for start in range(0, len(query_vectors), step):
            cos = np.asarray(query_vectors[start : start + step], dtype=np.float32) @ self.queries_.T
            idx = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            kth = np.take_along_axis(cos, idx, axis=1).min(axis=1)
            for row in np.flatnonzero((cos >= kth[:, None]).sum(axis=1) > k):  # a tie at the k-th place
                tied = np.flatnonzero(cos[row] >= kth[row])
                idx[row] = tied[np.lexsort((keys[tied], -cos[row, tied]))[:k]]
            top = np.take_along_axis(cos, idx, axis=1)
            order = np.lexsort((keys[idx], -top), axis=1)
            indices[start : start + step] = np.take_along_axis(idx, order, axis=1)
            cosines[start : start + step] = np.take_along_axis(top, order, axis=1)
        return indices, cosines

    def prompt_weights(self, prompt_vectors: np.ndarray) -> np.ndarray:
        """(n_prompts, n_train_prompts) weights ``v`` of the training prompts, rows summing to one."""
        return borrowed_weights(prompt_vectors, self.prompts_, known_tau=self.prompt_tau, new_tau=self.new_prompt_tau)

    def predict_grid(self, query_vectors, prompt_vectors, layout="concat", texts=None, neighbours=None):
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

    def to_bytes(self) -> bytes:
        return npz_bytes(queries=self.queries_, prompts=self.prompts_, sums=self.sums_, counts=self.counts_)

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        names = ("queries", "prompts", "sums", "counts")
        arrays = npz_arrays(data, where, names)
        model = cls(**params)
        model.queries_, model.prompts_, model.sums_, model.counts_ = (arrays[k] for k in names)
        model.dimension_ = model.queries_.shape[1] if model.queries_.ndim == 2 else 0
        model.tie_keys_ = tie_keys(model.queries_)
        n_q, n_p = len(model.queries_), len(model.prompts_)
        if model.sums_.shape != (n_q, n_p) or model.counts_.shape != (n_q, n_p):
            raise BundleError(f"{where}: sums/counts of shape {model.sums_.shape}, expected {(n_q, n_p)}")
        return model


def tie_keys(vectors: np.ndarray) -> np.ndarray:
    """(n,) uint64: a hash of each vector's bytes, to break exact cosine ties by content, not position."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows], dtype=np.uint64)
