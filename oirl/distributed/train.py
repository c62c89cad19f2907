"""Dask: train, evaluate and recommend over partitioned logs on a cluster (``--dask``).

``--dask local[:N]`` starts a :class:`distributed.LocalCluster` of N worker processes
(default 2, one thread each) on loopback and closes it at the end; ``--dask
tcp://HOST:PORT`` connects to a running scheduler. On a real cluster every worker
needs oirl installed, and the log, the bundle and the output directory on paths they
can all read (and write, for ``--out``).

What runs where:

* **Workers** read and validate the Parquet files, one partition per file
  (:func:`read_log_partitions`: :func:`oirl.data.schema.validate_logs` on every partition,
  errors naming the file), hash texts and ids, and shuffle the rows by question text,
  so that every text, and every query instance with it, lives in exactly one
  partition. Each partition then becomes a *block*: its distinct texts embedded once
  (the embedding model loaded once per worker, vectors through the SQLite cache
  :class:`oirl.embed.cached.CachedEmbedder`, safe across processes), its instances pivoted to
  a reward matrix, and the neighbour model's reward sums and counts per (text, prompt)
  (a Dask group-by: shuffle by text, then sum within each partition). Blocks stay in
  worker memory. LightGBM trains on features built from the blocks where they live
  (``lightgbm.dask``), the neighbour model's state is assembled on a worker, and
  held-out texts are scored on the workers.
* **The driver** holds per-instance arrays only: 64-bit hashes of ids and texts, the
  reward matrix and the out-of-fold scores (n_instances x n_prompts, 8 MB at 125,000 x
  8), never rows' vectors or features. It chooses the model and policy with
  :mod:`oirl.learn.crossfit` (:func:`~oirl.learn.selection.select_model` over out-of-fold scores,
  the conservative margin, the one-standard-error rule and the prior option exactly as
  in memory) and writes the same bundle as :meth:`oirl.recommender.recommender.Recommender.train`.

Differences from the in-memory path, kept small and stated:

* candidates for ``--model auto`` are those of the in-memory grid that Dask trains: the
  neighbour model's 18 settings (one state and one neighbour search per fold serve them
  all) and LightGBM, not the centred LightGBM, logistic regression or MLP (``--model
  lightgbm`` or ``knn`` forces one); cross-validation folds are
  the hash of the question text modulo ``--cv-folds`` (``--cv-groups text`` only);
  LightGBM trains data-parallel, so its trees differ slightly from a one-process fit;
* the neighbour model keeps every distinct training text (its vectors, sums and
  counts: 128 MB at 125,000 texts x 256 dimensions), and its width for new prompts
  stays at the default (not cross-validated);
* an instance id must name one question text; the training fingerprint hashes the
  sorted row hashes, so it differs from the in-memory fingerprint of the same rows;
* ``oirl evaluate --dask`` reports on full-information logs only (every prompt logged
  for every query instance) and computes no off-policy estimates.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.questions import QuestionKey
from oirl.distributed.blocks import Blocks, _driver_matrix, _embedder_info, _load_embedder, build_blocks, encode_rows
from oirl.distributed.cluster import _release_memory, _say, n_workers
from oirl.distributed.read import _rows_of_split, read_log_partitions
from oirl.embed.base import DEFAULT_EMBEDDER
from oirl.embed.registry import get_embedder
from oirl.errors import OirlError

DASK_MODELS = ("auto", "lightgbm", "knn")
LIGHTGBM_BIN_SAMPLE = 50_000  # rows per worker for LightGBM's bin boundaries (bin_construct_sample_cnt)


# --------------------------------------------------------------------------- training


def _block_features(block: dict[str, Any], fold: int | None, prompt_vectors: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair features (n_cells, F) float32 and rewards (n_cells,) of the block's logged cells
    whose text is not in ``fold`` (every cell for ``None``), row-major as ``fit_matrix``."""
    from oirl.reward.features import pair_features

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
    import operator

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
    from oirl.reward.neighbours import NeighbourReward

    keep = [np.ones(len(b["texts"]), dtype=bool) if fold is None else b["fold"] != fold for b in blocks]
    vectors = np.vstack([b["vectors"][k] for b, k in zip(blocks, keep, strict=True)])
    sums = np.vstack([b["sums"][k] for b, k in zip(blocks, keep, strict=True)])
    counts = np.vstack([b["counts"][k] for b, k in zip(blocks, keep, strict=True)])
    seen = counts.sum(axis=1) > 0
    model = NeighbourReward(**{**params, "dimension": None}).set_embedding_dimension(vectors.shape[1])
    return model.fit_counts(vectors[seen], prompt_vectors, sums[seen], counts[seen])


def _score_block(block: dict[str, Any], fold: int, model, prompt_vectors: np.ndarray, layout: str) -> np.ndarray:
    """Scores (n_texts_in_fold, m) of the block's texts in ``fold``; ``model`` is a fitted
    reward model or LightGBM text (bytes)."""
    if isinstance(model, bytes):
        from oirl.reward.trees import LightGBMReward

        model = LightGBMReward.from_bytes(model, {}, where="fold model")
    return model.predict_grid(block["vectors"][block["fold"] == fold], prompt_vectors, layout)


def _score_block_knn_grid(block: dict[str, Any], fold: int, state, settings: list[dict[str, Any]], prompt_vectors: np.ndarray) -> list[np.ndarray]:
    """Scores of the block's texts in ``fold`` under every neighbour-model setting: one
    state and one neighbour search (the widest k) serve them all."""
    import copy

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
        from oirl.learn.crossfit import CrossFit
        from oirl.reward.base import check_scores

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
            check_scores(s, spec.label)
            fits[spec.label] = CrossFit(spec, s, priors, folds)
        return fits

    def fit(self, spec, fold: int | None):
        """A model of ``spec`` fitted on the texts outside ``fold``: bytes (LightGBM) or a future (knn)."""
        params = spec.make().get_params()
        if spec.model == "lightgbm":
            return _fit_lightgbm(self.client, self.blocks, fold, params, self.prompt_vectors, spec.layout_for())
        if spec.model == "knn":
            return self.client.submit(_knn_state, self.blocks.futures, fold, params, self.prompt_vectors, pure=False)
        raise OirlError(f"--model {spec.model} cannot train under --dask (choose from {', '.join(DASK_MODELS)})")

    def __call__(self, spec, matrix, folds):
        from oirl.learn.crossfit import CrossFit
        from oirl.reward.base import check_scores

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
        check_scores(scores, spec.label)
        return CrossFit(spec, scores, priors, folds)


def text_folds(matrix, text_fold: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold from each text's fold; every fold must hold texts."""
    instance_fold = text_fold[matrix.text_index]
    folds = [(np.flatnonzero(instance_fold != k), np.flatnonzero(instance_fold == k)) for k in range(n_folds)]
    if any(len(test) == 0 or len(train) == 0 for train, test in folds):
        raise OirlError(f"cross-validation by text hash left a fold empty: {len(matrix.texts)} distinct query texts are too few "
                        f"for {n_folds} folds")
    return folds


def check_training_options(model: str, cv_groups: str) -> None:
    """Refuse what the Dask path does not do, before a cluster starts."""
    if model not in DASK_MODELS:
        raise OirlError(f"--model {model} cannot train under --dask (choose from {', '.join(DASK_MODELS)})")
    if cv_groups != "text":
        raise OirlError("under --dask cross-validation groups by question text only (--cv-groups text)")


def train_distributed(
    client, path: str | Path, *, model: str = "auto", model_params: dict[str, Any] | None = None, embedder: str = DEFAULT_EMBEDDER,
    layout: str | None = None, split_column: str | None = "split", train_split: str = "train", cv_folds: int = 3,
    cv_groups: str = "text", cache_dir: str | Path | None = None, progress: bool = False, source: str | None = None,
    timings: dict[str, float] | None = None, n_partitions: int | None = None,
):
    """Train on a partitioned log with Dask; returns a :class:`~oirl.recommender.recommender.Recommender`
    built exactly as :meth:`Recommender.train` builds it (same bundle format).

    ``timings`` (if given) receives the seconds of each stage: ``read`` (validate,
    encode), ``embed`` (shuffle by text, embed, pivot), ``cv_select`` and ``fit``.
    """
    from oirl.embed.base import default_cache_dir
    from oirl.learn.candidates import spec
    from oirl.learn.selection import select_model
    from oirl.learn.train import cv_metrics
    from oirl.recommender.recommender import Candidate, Recommender

    started = time.perf_counter()
    timings = {} if timings is None else timings
    source = source or str(path)
    check_training_options(model, cv_groups)
    if model == "auto":
        if model_params:
            raise OirlError("model parameters need a named --model, not auto")
        from oirl.learn.candidates import AUTO_CANDIDATES

        # The in-memory candidates Dask can train: the neighbour model's grid and LightGBM.
        candidates = tuple(c if layout is None else spec(c.model, c.complexity, layout, **dict(c.params))
                           for c in AUTO_CANDIDATES if c.model in ("knn", "lightgbm"))
    else:
        candidates = (spec(model, 1, layout, **(model_params or {})),)
        candidates[0].make()  # an unknown parameter fails before any work
    cache = str(Path(cache_dir or default_cache_dir()).resolve())

    rows = _rows_of_split(read_log_partitions(path, columns=[split_column] if split_column else None), split_column, train_split)
    _say(progress, f"reading and validating {rows.npartitions} partition(s) on {n_workers(client)} worker(s)")
    tick = time.perf_counter()
    question_key = QuestionKey(casefold=get_embedder(embedder).lowercases)  # the tokenizer's files tell, no model loaded
    encoded = encode_rows(client, rows, question_key, source=source)
    timings["read"] = time.perf_counter() - tick
    tick = time.perf_counter()
    client.run(_load_embedder, embedder, cache)  # the embedding model, once per worker (a static one is built once, under a lock)
    info = client.submit(_embedder_info, embedder, cache, list(encoded.prompt_texts.values()), pure=False).result()
    timings["embedder_setup"] = time.perf_counter() - tick
    _say(progress, f"embedding the distinct query texts on the workers ({embedder})")
    tick = time.perf_counter()
    blocks = build_blocks(client, encoded, list(encoded.prompt_texts), embed_with=("embedder", embedder), cache_dir=cache, n_folds=cv_folds,
                          n_partitions=n_partitions, source=source)
    timings["embed"] = time.perf_counter() - tick
    matrix = _driver_matrix(blocks, info.prompt_vectors)
    if not matrix.full_information and matrix.propensity is None:
        raise OirlError(f"{source}: a partial-feedback log needs a propensity column under --dask (without --dask, oirl estimates "
                        "the logging policy from the query vectors)")
    if blocks.duplicates:
        warnings.warn(f"{source}: {blocks.duplicates} (query_id, prompt_id) keys occur on several rows; their rewards are averaged",
                      stacklevel=2)

    tick = time.perf_counter()
    fitter = DaskCrossFitter(client, blocks, info.prompt_vectors, progress, candidates)
    folds = text_folds(matrix, fitter.text_folds, cv_folds)
    selection = select_model(matrix, candidates, n_folds=cv_folds, cv_groups="text", folds=folds, fitter=fitter)
    timings["cv_select"] = time.perf_counter() - tick
    _say(progress, f"chose {selection.spec.label} {selection.policy} in {timings['cv_select']:.1f} s; fitting it on every row")

    tick = time.perf_counter()
    chosen_layout = selection.spec.layout_for()
    fitted = fitter.fit(selection.spec, None)
    if isinstance(fitted, bytes):
        from oirl.reward.trees import LightGBMReward

        fitted = LightGBMReward.from_bytes(fitted, selection.spec.make().get_params(), where="final model")
    else:
        fitted = fitted.result()
    timings["fit"] = time.perf_counter() - tick

    row_hashes = np.sort(np.concatenate([b["row_hash"] for b in blocks.meta]))
    metadata = {
        "training": {
            "source": source, "fingerprint": hashlib.sha256(row_hashes.astype("<u8").tobytes()).hexdigest()[:16],
            "rows": int(matrix.logged.sum()), "query_instances": int(len(matrix.query_ids)), "distinct_queries": int(len(matrix.texts)),
            "feedback": "full" if matrix.full_information else "partial", "cv_folds": cv_folds, "cv_groups": "text",
            "importance_weights": False, "question_key": question_key.to_dict(), "propensities": None, "seconds": round(time.perf_counter() - started, 2),
        },
        "metrics": {
            "cross_validation": cv_metrics(selection, matrix, None), "model_selection": selection.table,
            "distributed": {"workers": n_workers(client), "partitions": len(blocks.futures), "folds": "sha256 of the question text modulo cv_folds",
                            "candidates": [c.label for c in candidates], "stage_seconds": {k: round(v, 2) for k, v in timings.items()}},
        },
    }
    return Recommender(
        model=fitted, embedder_spec=embedder, embedder_id=info.model_id, embedder_revision=info.revision, layout=chosen_layout,
        prompts=[Candidate(t, p) for p, t in zip(blocks.prompt_ids, blocks.prompt_texts, strict=True)],
        prompt_vectors=info.prompt_vectors, prior=dict(zip(blocks.prompt_ids, matrix.prompt_means().tolist(), strict=True)),
        margin=selection.margin, default_policy=selection.policy, costs=blocks.costs, metadata=metadata,
        train_text_hashes=matrix.texts, train_instance_hashes=matrix.query_ids, question_key=question_key, cache_dir=cache_dir,
        embedder_bundle_files=info.bundle_files,
    )
