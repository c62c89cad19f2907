"""Blocks: a partition of rows (every row of its texts) embedded and pivoted where it lives.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.matrix import LogMatrix
from oirl.data.questions import QuestionKey
from oirl.data.schema import text_hashes64
from oirl.distributed.cluster import _release_memory, n_workers
from oirl.embed.base import revision_of
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.static import bundle_files
from oirl.errors import LogFormatError
from oirl.recommender.bundle import load_bundle

# --------------------------------------------------------------------------- worker-side state

_WORKER_STATE: dict[tuple, Any] = {}  # per process: embedders and bundles, loaded once
_WORKER_LOCK = threading.Lock()


def worker_embedder(spec: str, cache_dir: str) -> CachedEmbedder:
    """The embedder ``spec`` behind the cache in ``cache_dir``, built once per process."""
    with _WORKER_LOCK:
        key = ("embedder", spec, cache_dir)
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = CachedEmbedder(get_embedder(spec), cache_dir)
        return _WORKER_STATE[key]


def _load_embedder(spec: str, cache_dir: str) -> int:
    return worker_embedder(spec, cache_dir).dimension


def worker_recommender(model_dir: str, cache_dir: str):
    """The bundle in ``model_dir``, loaded once per process (and again if it changed)."""

    digest = hashlib.sha256((Path(model_dir) / "bundle.json").read_bytes()).hexdigest()
    with _WORKER_LOCK:
        key = ("bundle", model_dir, cache_dir, digest)
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = load_bundle(model_dir, cache_dir=cache_dir)
        return _WORKER_STATE[key]


@dataclass
class EmbedderInfo:
    """What a bundle records about the embedder, computed on a worker."""

    spec: str
    model_id: str
    revision: str
    dimension: int
    bundle_files: dict[str, bytes]
    prompt_vectors: np.ndarray  # (m, d)


def _embedder_info(spec: str, cache_dir: str, prompt_texts: list[str]) -> EmbedderInfo:

    cached = worker_embedder(spec, cache_dir)
    vectors = cached.embed(prompt_texts)
    live = cached.embedder
    return EmbedderInfo(spec, live.model_id, revision_of(live), int(live.dimension), bundle_files(live), vectors)


# --------------------------------------------------------------------------- encoding and blocks


def _encode(frame: pd.DataFrame, question_key: QuestionKey) -> pd.DataFrame:
    """Canonical rows -> the columns the blocks need, with 64-bit hashes of texts and ids."""
    texts, text_codes = pd.factorize(frame["query"], sort=False)[::-1]
    ids, id_codes = pd.factorize(frame["query_id"], sort=False)[::-1]
    out = pd.DataFrame({
        "query": frame["query"].to_numpy(),
        "text_hash": question_key.hashes(texts)[text_codes] if len(frame) else np.zeros(0, dtype="<u8"),  # one per question
        "instance_hash": text_hashes64(list(ids))[id_codes] if len(frame) else np.zeros(0, dtype="<u8"),
        "prompt_id": frame["prompt_id"].to_numpy(),
        "prompt": frame["prompt"].to_numpy(),
        "reward": frame["reward"].to_numpy(dtype=np.float64),
        "row_hash": pd.util.hash_pandas_object(frame[["query_id", "prompt_id", "query", "prompt", "reward"]], index=False).to_numpy(),
    })
    for column in ("cost", "propensity"):
        if column in frame.columns:
            out[column] = frame[column].to_numpy(dtype=np.float64)
    return out


def _prompt_table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates(["prompt_id", "prompt"])[["prompt_id", "prompt"]]


def _block_embedder(embed_with: tuple[str, str], cache_dir: str):
    kind, name = embed_with
    return worker_embedder(name, cache_dir) if kind == "embedder" else worker_recommender(name, cache_dir).query_embedder


def _build_block(part: pd.DataFrame, prompt_ids: list[str], embed_with: tuple[str, str] | None, cache_dir: str | None,
                 n_folds: int) -> dict[str, Any]:
    """One partition of rows (every row of its texts) -> a block of arrays.

    ``texts`` (n_t,) text hashes, ``vectors`` (n_t, d), ``fold`` (n_t,), ``instances``
    (n_i,) id hashes, ``inst_text`` (n_i,), ``rewards`` (n_i, m) NaN where not logged
    (duplicate keys averaged), ``propensity`` (n_i, m) or None, ``sums``/``counts``
    (n_t, m) per (text, prompt), ``row_hash`` (n_rows,). The texts are embedded by
    ``embed_with``: ``("embedder", spec)`` or ``("bundle", model_dir)`` (the bundle's own
    embedder); without it ``vectors`` is None.
    """
    m = len(prompt_ids)
    # Rows arrive in shuffle order: sort them so that a block (and every model fit on it) is the same on every run.
    part = part.sort_values(["text_hash", "instance_hash", "prompt_id"], kind="stable", ignore_index=True)
    text_codes, texts = pd.factorize(part["text_hash"], sort=False)
    inst_codes, instances = pd.factorize(part["instance_hash"], sort=False)
    cols = pd.Index(prompt_ids).get_indexer(part["prompt_id"])
    keep = cols >= 0  # rows of prompts outside the evaluated candidates
    text_codes, inst_codes, cols = text_codes[keep], inst_codes[keep], cols[keep]
    reward = part["reward"].to_numpy(dtype=np.float64)[keep]
    inst_text = np.full(len(instances), -1, dtype=np.int64)
    inst_text[inst_codes[::-1]] = text_codes[::-1]  # the first row's text
    if (inst_text[inst_codes] != text_codes).any():
        raise LogFormatError("a query instance (query_id) has rows with different query texts; under --dask an id must name one text")
    counts = np.zeros((len(instances), m))
    sums = np.zeros((len(instances), m))
    np.add.at(counts, (inst_codes, cols), 1.0)
    np.add.at(sums, (inst_codes, cols), reward)
    with np.errstate(invalid="ignore"):
        rewards = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    propensity = None
    if "propensity" in part.columns:
        propensity = np.full((len(instances), m), np.nan)
        propensity[inst_codes, cols] = part["propensity"].to_numpy(dtype=np.float64)[keep]
    logged = ~np.isnan(rewards)
    text_sums = np.zeros((len(texts), m))
    text_counts = np.zeros((len(texts), m))
    np.add.at(text_sums, inst_text, np.nan_to_num(rewards))
    np.add.at(text_counts, inst_text, logged.astype(float))
    vectors = None
    if embed_with is not None and len(texts):
        first = pd.Series(np.arange(len(text_codes))).groupby(text_codes).first().to_numpy()
        query_texts = part["query"].to_numpy()[keep][first]
        vectors = _block_embedder(embed_with, cache_dir).embed(list(query_texts))
    text_array = np.asarray(texts, dtype="<u8")
    return {
        "texts": text_array, "vectors": vectors, "fold": (text_array % np.uint64(max(1, n_folds))).astype(np.int64),
        "instances": np.asarray(instances, dtype="<u8"), "inst_text": inst_text, "rewards": rewards, "propensity": propensity,
        "sums": text_sums, "counts": text_counts, "duplicates": int((counts > 1).sum()),
        "row_hash": part["row_hash"].to_numpy()[keep] if "row_hash" in part.columns else None,
    }


def _block_meta(block: dict[str, Any]) -> dict[str, Any]:
    """What the driver keeps of a block: no vectors."""
    return {k: v for k, v in block.items() if k not in ("vectors", "sums", "counts")}


@dataclass
class Blocks:
    """Blocks held on the workers (futures) and their driver-side metadata, in order."""

    futures: list
    meta: list[dict[str, Any]]
    prompt_ids: list[str]
    prompt_texts: list[str]
    costs: dict[str, float]
    duplicates: int

    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [len(b["texts"]) for b in self.meta])


@dataclass
class EncodedRows:
    """Validated rows encoded and persisted on the workers, with their prompt table and costs."""

    frame: Any  # dask DataFrame (see _encode)
    prompt_texts: dict[str, str]  # prompt id -> text, first-seen order
    costs: dict[str, float]


def encode_rows(client, rows, question_key: QuestionKey, *, source: str = "<logs>") -> EncodedRows:
    """Validate, hash and persist the rows on the workers; gather only the prompt table
    (one text per id across files) and the mean cost per prompt (a Dask group-by)."""
    from distributed import wait

    encoded = rows.map_partitions(_encode, question_key, enforce_metadata=False).persist()
    wait(encoded)
    tables = [t for t in client.gather(client.compute(encoded.map_partitions(_prompt_table).to_delayed())) if len(t)]
    if not tables:
        raise LogFormatError(f"{source}: no rows to use")
    table = pd.concat(tables, ignore_index=True).drop_duplicates()
    clash = table[table.duplicated("prompt_id", keep=False)]
    if len(clash):
        raise LogFormatError(f"{source}, column 'prompt': prompt_id {clash['prompt_id'].iloc[0]!r} names two different texts "
                             "in different files; one id must name one prompt text")
    costs = {}
    if "cost" in encoded.columns:
        costs = {str(k): float(v) for k, v in encoded.groupby("prompt_id")["cost"].mean().compute().items()}
    return EncodedRows(encoded, dict(zip(table["prompt_id"], table["prompt"], strict=True)), costs)


def build_blocks(client, encoded: EncodedRows, prompt_ids: list[str], *, embed_with: tuple[str, str] | None, cache_dir: str | None,
                 n_folds: int, n_partitions: int | None = None, source: str = "<logs>") -> Blocks:
    """Shuffle the encoded rows by text and build one block per partition on the workers
    (see :func:`_build_block`); the encoded rows are released."""
    import dask

    partitions = n_partitions or max(encoded.frame.npartitions, 2 * n_workers(client))
    shuffled = encoded.frame.shuffle("text_hash", npartitions=partitions)
    futures = client.compute([dask.delayed(_build_block)(p, prompt_ids, embed_with, cache_dir, n_folds) for p in shuffled.to_delayed()])
    meta = client.gather(client.map(_block_meta, futures))
    encoded.frame = None  # the blocks hold what is needed; free the rows on the workers
    del shuffled
    client.run(_release_memory)
    keep = [i for i, b in enumerate(meta) if len(b["instances"])]
    futures, meta = [futures[i] for i in keep], [meta[i] for i in keep]
    instances = np.concatenate([b["instances"] for b in meta])
    if len(np.unique(instances)) != len(instances):
        raise LogFormatError(f"{source}: a query instance (query_id) has rows with different query texts; under --dask an id must name one text")
    return Blocks(futures, meta, list(prompt_ids), [encoded.prompt_texts[p] for p in prompt_ids], encoded.costs,
                  sum(b["duplicates"] for b in meta))


def _driver_matrix(blocks: Blocks, prompt_vectors: np.ndarray):
    """The driver's :class:`~oirl.data.matrix.LogMatrix`: ids and texts as 64-bit hashes, no query vectors."""

    offsets = blocks.offsets()
    rewards = np.vstack([b["rewards"] for b in blocks.meta])
    propensity = None if blocks.meta[0]["propensity"] is None else np.vstack([b["propensity"] for b in blocks.meta])
    texts = np.concatenate([b["texts"] for b in blocks.meta])
    text_index = np.concatenate([b["inst_text"] + offsets[i] for i, b in enumerate(blocks.meta)])
    return LogMatrix(
        query_ids=np.concatenate([b["instances"] for b in blocks.meta]), texts=texts, text_index=text_index,
        query_vectors=np.zeros((len(texts), 0), dtype=np.float32), prompt_ids=list(blocks.prompt_ids),
        prompt_texts=list(blocks.prompt_texts), prompt_vectors=prompt_vectors, rewards=rewards, propensity=propensity,
    )
