"""How a model with one estimate per training prompt scores any prompt: by its vector.

A bundle prompt is matched exactly (cosine 1) and uses its own estimate (or, with a
positive ``known_tau``, a softmax over its neighbours); a prompt never trained on
borrows from the training prompts by similarity, ``softmax((cos - 1) / new_tau)``,
normalised to sum to one so that the borrowed estimate keeps its query dependence
however far the prompt is. The neighbour and lexical models share it.
"""

from __future__ import annotations

import numpy as np


def borrowed_weights(prompt_vectors: np.ndarray, train_prompts: np.ndarray, *, known_tau: float, new_tau: float) -> np.ndarray:
    """(n_prompts, n_train_prompts) weights of the training prompts, rows summing to one."""
    cos = np.asarray(prompt_vectors, dtype=np.float32) @ np.asarray(train_prompts, dtype=np.float32).T
    exact = cos > 1 - 1e-5
    known = exact.any(axis=1, keepdims=True)
    tau = np.where(known, known_tau, new_tau)
    logits = (cos.astype(np.float64) - 1) / np.maximum(tau, 1e-6)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    one_hot = exact / np.maximum(exact.sum(axis=1, keepdims=True), 1)
    return np.where(known & (tau <= 0), one_hot, soft)
