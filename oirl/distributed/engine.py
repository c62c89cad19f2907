"""``oirl train --dask``: the training engine that works where the data lives, on a Dask cluster.

:func:`oirl.learn.train.fit_bundle` is the algorithm, as in memory; :class:`DaskEngine`
supplies the parts whose place differs:

* **prepare** -- the workers read and validate the Parquet files, one partition per file
  (:func:`~oirl.distributed.read.read_log_partitions`, errors naming the file), hash
  question keys and ids, shuffle the rows by question so that every question lives in
  exactly one partition, and turn each partition into a *block*: its distinct questions
  embedded once (the model loaded once per worker, vectors through the SQLite cache),
  its instances pivoted, the neighbour model's reward sums and counts per (question,
  prompt). Blocks stay in worker memory; the driver keeps per-instance arrays only (hashes,
  the reward matrix, out-of-fold scores), never vectors or features.
* **folds** -- the hash of the question modulo ``--cv-folds`` (``--cv-groups text``).
* **cross_fit / fit** -- LightGBM trains data-parallel where the blocks live
  (``lightgbm.dask``); the neighbour model's state is assembled on a worker, its 18
  settings share one state and one neighbour search per fold; held-out questions are
  scored on the workers (:mod:`oirl.distributed.fitting`).

Differences from the in-memory engine, kept small and stated: ``auto`` cross-validates
the grid's neighbour settings and LightGBM (not the centred LightGBM, logistic
regression or MLP); LightGBM's data-parallel trees differ slightly from a one-process
fit; the neighbour model's width for new prompts stays at its default; a partial log
needs a propensity column (the logging policy is not estimated on the cluster); an
instance id must name one question; the fingerprint hashes the sorted row hashes.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from oirl.data.questions import QuestionKey
from oirl.distributed.blocks import _driver_matrix, _embedder_info, _load_embedder, build_blocks, encode_rows
from oirl.distributed.cluster import _say, n_workers
from oirl.distributed.fitting import DaskCrossFitter, text_folds
from oirl.distributed.read import _rows_of_split, read_log_partitions
from oirl.embed.base import default_cache_dir
from oirl.embed.registry import get_embedder
from oirl.errors import OirlError
from oirl.learn.engine import Engine, PreparedLogs, TrainOptions
from oirl.learn.train import fit_bundle
from oirl.reward.trees import LightGBMReward

DASK_MODELS = ("auto", "lightgbm", "knn")


class DaskEngine(Engine):
    """Train on a partitioned log (a Parquet file, directory or glob) with a Dask ``client``."""

    trainable = ("knn", "lightgbm")

    def __init__(self, client, *, split_column: str | None = "split", train_split: str = "train", n_partitions: int | None = None):
        self.client = client
        self.split_column = split_column
        self.train_split = train_split
        self.n_partitions = n_partitions
        self._fitter: DaskCrossFitter | None = None

    def prepare(self, logs, options):
        check_training_options(options.model, options.cv_groups)
        if options.importance_weights:
            raise OirlError("--importance-weights is not available with --dask")
        client, source, progress = self.client, options.source, options.progress
        cache = str(Path(options.cache_dir or default_cache_dir()).resolve())
        rows = _rows_of_split(read_log_partitions(logs, columns=[self.split_column] if self.split_column else None),
                              self.split_column, self.train_split)
        _say(progress, f"reading and validating {rows.npartitions} partition(s) on {n_workers(client)} worker(s)")
        tick = time.perf_counter()
        question_key = QuestionKey(casefold=get_embedder(options.embedder).lowercases)  # the tokenizer's files tell, no model loaded
        encoded = encode_rows(client, rows, question_key, source=source)
        seconds = {"read": time.perf_counter() - tick}
        tick = time.perf_counter()
        client.run(_load_embedder, options.embedder, cache)  # the model once per worker (a static one is built once, under a lock)
        info = client.submit(_embedder_info, options.embedder, cache, list(encoded.prompt_texts.values()), pure=False).result()
        _say(progress, f"embedding the distinct questions on the workers ({options.embedder})")
        blocks = build_blocks(client, encoded, list(encoded.prompt_texts), embed_with=("embedder", options.embedder), cache_dir=cache,
                              n_folds=options.cv_folds, n_partitions=self.n_partitions, source=source)
        seconds["embed"] = time.perf_counter() - tick
        if blocks.duplicates:
            warnings.warn(f"{source}: {blocks.duplicates} (query_id, prompt_id) keys occur on several rows; their rewards are averaged",
                          stacklevel=2)
        matrix = _driver_matrix(blocks, info.prompt_vectors)
        self._fitter = DaskCrossFitter(client, blocks, info.prompt_vectors, progress, options.candidates(self.trainable))
        row_hashes = np.sort(np.concatenate([b["row_hash"] for b in blocks.meta]))
        return PreparedLogs(
            matrix=matrix, question_key=question_key, text_hashes=matrix.texts, instance_hashes=matrix.query_ids,
            embedder={"spec": options.embedder, "model_id": info.model_id, "revision": info.revision, "bundle_files": info.bundle_files},
            rows=int(matrix.logged.sum()), fingerprint=hashlib.sha256(row_hashes.astype("<u8").tobytes()).hexdigest()[:16],
            costs=blocks.costs, notes={"workers": n_workers(client), "partitions": len(blocks.futures),
                                       "folds": "the hash of the question key modulo cv_folds",
                                       "prepare_seconds": {k: round(v, 2) for k, v in seconds.items()}},
        )

    def with_propensities(self, matrix, options):
        if not matrix.full_information and matrix.propensity is None:
            raise OirlError(f"{options.source}: a partial-feedback log needs a propensity column under --dask (without --dask, "
                            "oirl estimates the logging policy from the query vectors)")
        return super().with_propensities(matrix, options)

    def folds(self, prepared, options):
        return text_folds(prepared.matrix, self._prepared().text_folds, options.cv_folds)

    def cross_fit(self, candidate, matrix, folds):
        return self._prepared()(candidate, matrix, folds)

    def fit(self, candidate, matrix):
        fitted = self._prepared().fit(candidate, None)
        if isinstance(fitted, bytes):  # LightGBM's text, trained data-parallel
            return LightGBMReward.from_bytes(fitted, candidate.make().get_params(), where="final model")
        return fitted.result()

    def _prepared(self) -> DaskCrossFitter:
        if self._fitter is None:
            raise OirlError("DaskEngine.prepare must run first")
        return self._fitter


def check_training_options(model: str, cv_groups: str) -> None:
    """Refuse what the Dask engine does not do, before a cluster starts."""
    if model not in DASK_MODELS:
        raise OirlError(f"--model {model} cannot train under --dask (choose from {', '.join(DASK_MODELS)})")
    if cv_groups != "text":
        raise OirlError("under --dask cross-validation groups by question text only (--cv-groups text)")


def train_distributed(client, path: str | Path, *, split_column: str | None = "split", train_split: str = "train",
                      n_partitions: int | None = None, **options: Any):
    """:func:`~oirl.learn.train.fit_bundle` on a Dask cluster; ``options`` are
    :class:`~oirl.learn.engine.TrainOptions`' fields (``source`` defaults to the path)."""
    options.setdefault("source", str(path))
    engine = DaskEngine(client, split_column=split_column, train_split=train_split, n_partitions=n_partitions)
    return fit_bundle(path, engine, TrainOptions(**options))
