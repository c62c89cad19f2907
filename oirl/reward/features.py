"""Features of (query, prompt) pairs, and logs as matrices of embedded queries and prompts.

``concat`` is the paper's layout ``[q, p]``. ``concat-product`` adds the elementwise
product ``q * p`` so that tree and linear models can read query-prompt interactions
directly instead of having to discover them through splits (a linear model needs it:
on ``[q, p]`` its best prompt cannot depend on the query).

:class:`LogMatrix` is the form training and evaluation work on: one row per query
instance, one column per prompt, NaN where a prompt was not logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from oirl.errors import OirlError

if TYPE_CHECKING:
    pass

FEATURE_LAYOUTS = ("concat", "concat-product")
DEFAULT_LAYOUT = "concat"


def feature_dimension(layout: str, embedding_dimension: int) -> int:
    return {"concat": 2, "concat-product": 3}[check_layout(layout)] * embedding_dimension


def pair_features(query_vectors: np.ndarray, prompt_vectors: np.ndarray, layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """Row-aligned pairs: shapes (n, d) and (n, d) -> (n, feature_dimension)."""
    check_layout(layout)
    if query_vectors.shape != prompt_vectors.shape:
        raise ValueError(f"query and prompt vectors differ in shape: {query_vectors.shape} vs {prompt_vectors.shape}")
    parts = [query_vectors, prompt_vectors]
    if layout == "concat-product":
        parts.append(query_vectors * prompt_vectors)
    return np.hstack(parts).astype(np.float32, copy=False)


def grid_features(query_vectors: np.ndarray, prompt_vectors: np.ndarray, layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """Every query with every prompt: (n_q, d) and (n_p, d) -> (n_q * n_p, F), query-major.

    Row ``i * n_p + j`` is query ``i`` with prompt ``j``, so scores reshape to (n_q, n_p).
    """
    n_q, n_p = len(query_vectors), len(prompt_vectors)
    return pair_features(np.repeat(query_vectors, n_p, axis=0), np.tile(prompt_vectors, (n_q, 1)), layout)


def check_layout(layout: str) -> str:
    if layout not in FEATURE_LAYOUTS:
        raise OirlError(f"unknown feature layout {layout!r} (choose from {', '.join(FEATURE_LAYOUTS)})")
    return layout
