"""Cross-fitting and fitting on the workers, for :class:`oirl.distributed.engine.DaskEngine`.

LightGBM trains data-parallel on features built from the blocks where they live
(``lightgbm.dask``); the neighbour model's state (vectors, reward sums and counts per
question) is assembled on a worker; held-out questions are scored on the workers and
only their scores (n_instances x n_prompts) come back to the driver.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from oirl.distributed.blocks import Blocks
from oirl.distributed.cluster import _release_memory, _say
from oirl.errors import OirlError
from oirl.learn.crossfit import CrossFit
from oirl.reward.base import check_predictions
from oirl.reward.features import pair_features
from oirl.reward.neighbours import NeighbourReward
from oirl.reward.trees import LightGBMReward

LIGHTGBM_BIN_SAMPLE = 50_000  # rows per worker for LightGBM's bin boundaries (bin_construct_sample_cnt)


# --------------------------------------------------------------------------- training


def _block_features(block: dict[str, Any], fold: int | None, prompt_vectors: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair features (n_cells, F) float32 and rewards (n_cells,) of the block's logged cells
    whose text is not in ``fold`` (every cell for ``None``), row-major as ``fit_matrix``."""

    keep = np.ones(len(block["instances"]), dtype=bool) if fold is None else block["fold"][block["inst_text"]] != fold
    rewards = block["rewards"][keep]
    rows, cols = np.nonzero(~np.isnan(rewards))
    X = pair_features(block["vectors"][block["inst_text"][keep][rows]], prompt_vectors[cols], layout)
    return X, rewards[rows, cols]


def _n_cells(meta: dict[str, Any], fold: int | None) -> int:
    keep = np.ones(len(meta["instances"]), dtype=bool) if fold is None else meta["fold"][meta["inst_text"]] != fold
    return int((~np.isnan(meta["rewards"][keep])).sum())


def _worker_features(blocks: list[dict[str, Any]], fold: int | None, prompt_vectors: np.ndarray, layout: str) -> tuple[pd.DataFrame, pd.Series]:
    """One worker's LightGBM part: the features of its blocks' cells as *one* float32
    DataFrame (lightgbm.dask then concatenates a single part, which pandas does without
    a copy), and the rewards."""
    pairs = [_block_features(b, fold, prompt_vectors, layout) for b in blocks]
    X = pairs[0][0] if len(pairs) == 1 else np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    del pairs
    return pd.DataFrame(X, columns=[f"Column_{i}" for i in range(X.shape[1])], copy=False), pd.Series(y)


def _fit_lightgbm(client, blocks: Blocks, fold: int | None, params: dict[str, Any], prompt_vectors: np.ndarray, layout: str) -> bytes:
    """Train LightGBM (cross-entropy on rewards in [0, 1]) with ``lightgbm.dask`` on the
    blocks' cells outside ``fold``; returns the model in LightGBM's text format.

    Each worker builds one part from the blocks it holds. LightGBM's bin boundaries come
    from at most :data:`LIGHTGBM_BIN_SAMPLE` rows per worker (its sample costs 12 bytes a
    value: 1.2 GB at its default of 200,000 rows and 512 features)."""

    import dask.dataframe as dd
    from distributed import wait
    from lightgbm.dask import DaskLGBMRegressor

    width = prompt_vectors.shape[1] * {"concat": 2, "concat-product": 3}[layout]
    # Blocks go to workers by position, not by where they happen to sit, so that each
    # machine's share of the data (which shapes data-parallel trees) is the same every run
    # (lightgbm.dask still orders the machines as it likes: trees may differ slightly between runs).
    workers = sorted(client.scheduler_info()["workers"])
    used = [f for f, meta in zip(blocks.futures, blocks.meta, strict=True) if _n_cells(meta, fold)]
    by_worker = {w: used[i :: len(workers)] for i, w in enumerate(workers) if used[i :: len(workers)]}
    X_parts, y_parts = [], []
    for worker, futures in by_worker.items():
        pin = {"workers": [worker], "allow_other_workers": False}
        pair = client.submit(_worker_features, futures, fold, prompt_vectors, layout, pure=False, **pin)
        X_parts.append(client.submit(operator.getitem, pair, 0, pure=False, **pin))
        y_parts.append(client.submit(operator.getitem, pair, 1, pure=False, **pin))
        del pair
    wait(X_parts + y_parts)  # their sizes known, the scheduler keeps lightgbm.dask's parts where they are
    meta_X = pd.DataFrame({f"Column_{i}": pd.Series([], dtype=np.float32) for i in range(width)})
    X = dd.from_delayed(X_parts, meta=meta_X)
    y = dd.from_delayed(y_parts, meta=pd.Series([], dtype=np.float64))
    model = DaskLGBMRegressor(
        client=client, objective="cross_entropy", n_estimators=params["n_estimators"], learning_rate=params["learning_rate"],
        num_leaves=params["num_leaves"], min_child_samples=params["min_child_samples"], colsample_bytree=params["colsample"],
        reg_lambda=params["reg_lambda"], random_state=params["seed"], deterministic=True, verbosity=-1,
        subsample_for_bin=LIGHTGBM_BIN_SAMPLE,
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # its port search; "n_jobs will be ignored"
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X, y)
    del X, y, X_parts, y_parts
    client.run(_release_memory)
    return model.booster_.model_to_string().encode("utf-8")


def _knn_state(blocks: list[dict[str, Any]], fold: int | None, params: dict[str, Any], prompt_vectors: np.ndarray):
    """The neighbour model fitted on the texts outside ``fold`` (all for ``None``): their
    vectors and per-prompt reward sums and counts."""

    keep = [np.ones(len(b["texts"]), dtype=bool) if fold is None else b["fold"] != fold for b in blocks]
    vectors = np.vstack([b["vectors"][k] for b, k in zip(blocks, keep, strict=True)])
    sums = np.vstack([b["sums"][k] for b, k in zip(blocks, keep, strict=True)])
    counts = np.vstack([b["counts"][k] for b, k in zip(blocks, keep, strict=True)])
    seen = counts.sum(axis=1) > 0
    model = NeighbourReward(**params)
    return model.fit_counts(vectors[seen], prompt_vectors, sums[seen], counts[seen])


def _score_block(block: dict[str, Any], fold: int, model, prompt_vectors: np.ndarray, layout: str) -> np.ndarray:
    """Scores (n_texts_in_fold, m) of the block's texts in ``fold``; ``model`` is a fitted
    reward model or LightGBM text (bytes)."""
    if isinstance(model, bytes):

        model = LightGBMReward.from_bytes(model, {}, where="fold model")
    return model.predict_grid(block["vectors"][block["fold"] == fold], prompt_vectors, layout)


def _score_block_knn_grid(block: dict[str, Any], fold: int, state, settings: list[dict[str, Any]], prompt_vectors: np.ndarray) -> list[np.ndarray]:
    """Scores of the block's texts in ``fold`` under every neighbour-model setting: one
    state and one neighbour search (the widest k) serve them all."""

    vectors = block["vectors"][block["fold"] == fold]
    neighbours = state.neighbours(vectors, max(s["k"] for s in settings))
    return [copy.copy(state).set_params(**s).predict_grid(vectors, prompt_vectors, neighbours=neighbours) for s in settings]


class DaskCrossFitter:
    """``fitter(spec, matrix, folds) -> CrossFit`` for :func:`oirl.learn.selection.select_model`:
    fold k holds out the texts whose hash is k modulo the number of folds. The neighbour
    model's settings among ``candidates`` are cross-fitted together, on their first call."""

    def __init__(self, client, blocks: Blocks, prompt_vectors: np.ndarray, progress: bool = False, candidates: tuple = ()):
        self.client, self.blocks, self.prompt_vectors, self.progress = client, blocks, prompt_vectors, progress
        self.text_folds = np.concatenate([b["fold"] for b in blocks.meta])
        self.knn = [c for c in candidates if c.model == "knn"]
        self._done: dict[str, Any] = {}

    def _knn_grid(self, matrix, folds) -> dict[str, Any]:

        n, m = matrix.rewards.shape
        settings = [dict(c.params) for c in self.knn]
        scores = [np.empty((n, m)) for _ in settings]
        priors = np.empty((n, m))  # the same for every setting: shared, read only
        text_scores = np.full((len(matrix.texts), m), np.nan)  # one buffer, setting after setting: the driver stays small
        offsets = self.blocks.offsets()
        for fold, (train, test) in enumerate(folds):
            started = time.perf_counter()
            state = self.fit(self.knn[0], fold)
            parts = self.client.gather(self.client.map(_score_block_knn_grid, self.blocks.futures, fold=fold, state=state, settings=settings,
                                                       prompt_vectors=self.prompt_vectors, pure=False))
            for s in range(len(settings)):
                for i, per_setting in enumerate(parts):
                    text_scores[offsets[i] : offsets[i + 1]][self.blocks.meta[i]["fold"] == fold] = per_setting[s]
                    per_setting[s] = None
                scores[s][test] = text_scores[matrix.text_index[test]]
            priors[test] = matrix.subset(train).prompt_means()
            del state, parts
            _say(self.progress, f"knn ({len(settings)} settings): fold {fold + 1}/{len(folds)} in {time.perf_counter() - started:.1f} s")
        fits = {}
        for spec, s in zip(self.knn, scores, strict=True):
            check_predictions(s, spec.label)
            fits[spec.label] = CrossFit(spec, s, priors, folds)
        return fits

    def fit(self, spec, fold: int | None):
        """A model of ``spec`` fitted on the texts outside ``fold``: bytes (LightGBM) or a future (knn)."""
        params = spec.make().get_params()
        if spec.model == "lightgbm":
            return _fit_lightgbm(self.client, self.blocks, fold, params, self.prompt_vectors, spec.layout_for())
        if spec.model == "knn":
            return self.client.submit(_knn_state, self.blocks.futures, fold, params, self.prompt_vectors, pure=False)
        raise OirlError(f"--model {spec.model} cannot train under --dask (choose from auto, lightgbm, knn)")

    def __call__(self, spec, matrix, folds):

        if spec.model == "knn" and spec in self.knn and len(self.knn) > 1:
            if spec.label not in self._done:
                self._done.update(self._knn_grid(matrix, folds))
            return self._done.pop(spec.label)
        n, m = matrix.rewards.shape
        scores, priors = np.empty((n, m)), np.empty((n, m))
        text_scores = np.full((len(matrix.texts), m), np.nan)
        offsets = self.blocks.offsets()
        for fold, (train, test) in enumerate(folds):
            started = time.perf_counter()
            model = self.fit(spec, fold)
            if isinstance(model, bytes):
                model = self.client.scatter(model, broadcast=True)
            parts = self.client.gather(self.client.map(_score_block, self.blocks.futures, fold=fold, model=model,
                                                       prompt_vectors=self.prompt_vectors, layout=spec.layout_for(), pure=False))
            for i, part in enumerate(parts):
                text_scores[offsets[i] : offsets[i + 1]][self.blocks.meta[i]["fold"] == fold] = part
            scores[test] = text_scores[matrix.text_index[test]]
            priors[test] = matrix.subset(train).prompt_means()
            del model
            _say(self.progress, f"{spec.label}: fold {fold + 1}/{len(folds)} in {time.perf_counter() - started:.1f} s")
        check_predictions(scores, spec.label)
        return CrossFit(spec, scores, priors, folds)


def text_folds(matrix, text_fold: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold from each text's fold; every fold must hold texts."""
    instance_fold = text_fold[matrix.text_index]
    folds = [(np.flatnonzero(instance_fold != k), np.flatnonzero(instance_fold == k)) for k in range(n_folds)]
    if any(len(test) == 0 or len(train) == 0 for train, test in folds):
        raise OirlError(f"cross-validation by text hash left a fold empty: {len(matrix.texts)} distinct query texts are too few "
                        f"for {n_folds} folds")
    return folds
