"""Dask: train, evaluate and recommend over partitioned logs on a cluster (``--dask``).

``--dask local[:N]`` starts a :class:`distributed.LocalCluster` of N worker processes
(default 2, one thread each) on loopback and closes it at the end; ``--dask
tcp://HOST:PORT`` connects to a running scheduler. On a real cluster every worker
needs oirl installed, and the log, the bundle and the output directory on paths they
can all read (and write, for ``--out``).

What runs where:

* **Workers** read and validate the Parquet files, one partition per file
  (:func:`read_log_partitions`: :func:`oirl.logs.validate_logs` on every partition,
  errors naming the file), hash texts and ids, and shuffle the rows by question text,
  so that every text, and every query instance with it, lives in exactly one
  partition. Each partition then becomes a *block*: its distinct texts embedded once
  (the embedding model loaded once per worker, vectors through the SQLite cache
  :class:`oirl.embed.CachedEmbedder`, safe across processes), its instances pivoted to
  a reward matrix, and the neighbour model's reward sums and counts per (text, prompt)
  (a Dask group-by: shuffle by text, then sum within each partition). Blocks stay in
  worker memory. LightGBM trains on features built from the blocks where they live
  (``lightgbm.dask``), the neighbour model's state is assembled on a worker, and
  held-out texts are scored on the workers.
* **The driver** holds per-instance arrays only: 64-bit hashes of ids and texts, the
  reward matrix and the out-of-fold scores (n_instances x n_prompts, 8 MB at 125,000 x
  8), never rows' vectors or features. It chooses the model and policy with
  :mod:`oirl.crossfit` (:func:`~oirl.crossfit.select_model` over out-of-fold scores,
  the conservative margin, the one-standard-error rule and the prior option exactly as
  in memory) and writes the same bundle as :meth:`oirl.recommender.Recommender.train`.

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
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.embed import DEFAULT_EMBEDDER, CachedEmbedder, get_embedder
from oirl.errors import LogFormatError, OirlError, one_line
from oirl.logs import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    partition_files,
    text_hashes64,
    validate_logs,
)

DEFAULT_LOCAL_WORKERS = 2
DASK_MODELS = ("auto", "lightgbm", "knn")
OUTPUT_MARKER = "_SUCCESS"
PART_ROWS = 100_000  # queries per output partition when the input is one JSONL file
LIGHTGBM_BIN_SAMPLE = 50_000  # rows per worker for LightGBM's bin boundaries (bin_construct_sample_cnt)
WORKER_MEMORY_CAP = 4 * 2**30  # bytes per local worker at most (the nanny restarts a worker above it)


# --------------------------------------------------------------------------- the cluster


def parse_dask_spec(spec: str) -> tuple[str, int | str]:
    """``local`` -> ("local", 2); ``local:N`` -> ("local", N); ``tcp://HOST:PORT`` -> ("tcp", address)."""
    text = (spec or "").strip()
    if text == "local":
        return "local", DEFAULT_LOCAL_WORKERS
    if text.startswith("local:"):
        count = text.split(":", 1)[1]
        if count.isdigit() and 1 <= int(count) <= 256:
            return "local", int(count)
    elif text.startswith("tcp://"):
        host, _, port = text[len("tcp://") :].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", text
    raise OirlError(f"--dask {spec!r}: expected local, local:N (N workers, 1 to 256) or tcp://HOST:PORT")


def _require_dask() -> None:
    try:
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise OirlError("--dask needs the [dask] extra: pip install 'oirl[dask]'") from None


def local_memory_limit(n_workers: int) -> int:
    """Bytes per local worker: 80% of the machine's memory shared out, at most 4 GiB."""
    import psutil

    return int(min(WORKER_MEMORY_CAP, 0.8 * psutil.virtual_memory().total / max(1, n_workers)))


@contextlib.contextmanager
def dask_client(spec: str | None, *, memory_limit: int | str | None = None) -> Iterator[Any]:
    """A connected ``distributed.Client``: a LocalCluster started here (and closed at the
    end) or an existing scheduler's; ``None`` for no spec. Raises :class:`OirlError` for
    a bad spec or an unreachable scheduler."""
    if spec is None:
        yield None
        return
    kind, value = parse_dask_spec(spec)
    _require_dask()
    from oirl._threads import configure_openmp

    configure_openmp()  # local workers inherit the environment: passive OpenMP waits
    import dask
    from distributed import Client, LocalCluster

    if kind == "local":
        import logging

        # The in-process scheduler logs every shuffle it starts as a warning.
        shuffle_log = logging.getLogger("distributed.shuffle")
        level = shuffle_log.level
        shuffle_log.setLevel(logging.ERROR)
        # Spilling would only copy the arrays a running task holds to disk, freeing nothing.
        with dask.config.set({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}):
            cluster = LocalCluster(n_workers=int(value), threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, memory_limit=memory_limit or local_memory_limit(int(value)))
        try:
            with Client(cluster) as client:
                for worker in client.scheduler_info()["workers"]:
                    client.submit(_quiet_lightgbm, workers=[worker], allow_other_workers=False, pure=False).result()
                yield client
        finally:
            cluster.close()
            shuffle_log.setLevel(level)
    else:
        try:
            client = Client(str(value), timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise OirlError(f"--dask {value}: cannot reach the scheduler ({one_line(exc)})") from None
        with client:
            yield client


def _quiet_lightgbm() -> None:
    """In a worker's task thread: LightGBM's native log level is per thread and its network
    set-up logs before reading ``verbosity``, so lower the level once with a tiny dataset."""
    from oirl._threads import configure_openmp

    configure_openmp()
    import lightgbm

    lightgbm.Dataset(np.zeros((4, 1)), label=np.zeros(4), params={"verbosity": -1}).construct()


def n_workers(client) -> int:
    return len(client.scheduler_info()["workers"])


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"dask: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reading logs lazily

_DUMMY = {"query": "q", "prompt": "p", "reward": "0", "correct": "0", "cost": "0", "propensity": "1"}


def read_log_partitions(path: str | Path, *, columns: list[str] | None = None):
    """A lazy Dask DataFrame of a partitioned log: one partition per Parquet file.

    Only the columns oirl reads are loaded (the schema's, plus ``columns``), with
    pyarrow; each partition is validated by :func:`oirl.logs.validate_logs` inside
    ``map_partitions``, so errors name the file, row and column, as in memory. Keys
    repeated *across* files are not merged here (the callers pivot per instance).
    """
    _require_dask()
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    files = [str(f) for f in partition_files(path)]
    try:
        names = pq.read_schema(files[0]).names
    except FileNotFoundError:
        raise LogFormatError(f"{files[0]}: no such log file") from None
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise LogFormatError(f"{files[0]}: not a readable Parquet file: {one_line(exc)}") from None
    wanted = [c for c in names if c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "correct", *(columns or ()))]
    raw_meta = pd.DataFrame({c: pd.Series([], dtype="str") for c in wanted})
    sample = pd.DataFrame({c: [_DUMMY.get(c, "x")] for c in wanted})
    try:
        meta = validate_logs(sample, source=files[0]).iloc[:0]
    except LogFormatError as exc:  # e.g. a missing required column: the same message as in memory
        raise LogFormatError(str(exc).replace(", row 1", "")) from None
    raw = dd.from_map(_read_partition, files, columns=wanted, meta=raw_meta, enforce_metadata=False, label="read-log")
    return raw.map_partitions(_validate_partition, files, meta=meta, partition_info=True, enforce_metadata=False)


def _read_partition(file: str, columns: list[str]) -> pd.DataFrame:
    from oirl.logs import _read_parquet

    frame, _ = _read_parquet(Path(file), columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LogFormatError(f"{file}: missing column(s) {', '.join(missing)} that the log's other files have; "
                             "the files of one log must share their columns")
    return frame[columns]


def _validate_partition(raw: pd.DataFrame, files: list[str], partition_info: dict | None = None) -> pd.DataFrame:
    source = files[partition_info["number"]] if partition_info else "<partition>"
    with warnings.catch_warnings():  # duplicates are merged and counted per instance later
        warnings.simplefilter("ignore")
        return validate_logs(raw, source=source)


def _rows_of_split(rows, split_column: str | None, split: str):
    """The rows of ``split``; every row when the log has no such column (as in memory)."""
    if split_column and split_column in rows.columns:
        return rows[rows[split_column] == split]
    return rows


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
    from oirl.recommender import Recommender

    digest = hashlib.sha256((Path(model_dir) / "bundle.json").read_bytes()).hexdigest()
    with _WORKER_LOCK:
        key = ("bundle", model_dir, cache_dir, digest)
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = Recommender.load(model_dir, cache_dir=cache_dir)
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
    from oirl.recommender import bundle_files_of, embedder_revision

    cached = worker_embedder(spec, cache_dir)
    vectors = cached.embed(prompt_texts)
    live = cached.embedder
    return EmbedderInfo(spec, live.model_id, embedder_revision(live), int(live.dimension), bundle_files_of(live), vectors)


# --------------------------------------------------------------------------- encoding and blocks


def _encode(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical rows -> the columns the blocks need, with 64-bit hashes of texts and ids."""
    texts, text_codes = pd.factorize(frame["query"], sort=False)[::-1]
    ids, id_codes = pd.factorize(frame["query_id"], sort=False)[::-1]
    out = pd.DataFrame({
        "query": frame["query"].to_numpy(),
        "text_hash": text_hashes64(list(texts))[text_codes] if len(frame) else np.zeros(0, dtype="<u8"),
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


def encode_rows(client, rows, *, source: str = "<logs>") -> EncodedRows:
    """Validate, hash and persist the rows on the workers; gather only the prompt table
    (one text per id across files) and the mean cost per prompt (a Dask group-by)."""
    from distributed import wait

    encoded = rows.map_partitions(_encode, enforce_metadata=False).persist()
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
    """The driver's :class:`~oirl.features.LogMatrix`: ids and texts as 64-bit hashes, no query vectors."""
    from oirl.features import LogMatrix

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


# --------------------------------------------------------------------------- training


def _block_features(block: dict[str, Any], fold: int | None, prompt_vectors: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair features (n_cells, F) float32 and rewards (n_cells,) of the block's logged cells
    whose text is not in ``fold`` (every cell for ``None``), row-major as ``fit_matrix``."""
    from oirl.features import pair_features

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


def _release_memory() -> None:
    """Give freed memory back to the system (Python's, pyarrow's pool, glibc's heap)."""
    import ctypes
    import gc

    import pyarrow

    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    from oirl.reward import NeighbourReward

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
        from oirl.reward import LightGBMReward

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
    """``fitter(spec, matrix, folds) -> CrossFit`` for :func:`oirl.crossfit.select_model`:
    fold k holds out the texts whose hash is k modulo the number of folds. The neighbour
    model's settings among ``candidates`` are cross-fitted together, on their first call."""

    def __init__(self, client, blocks: Blocks, prompt_vectors: np.ndarray, progress: bool = False, candidates: tuple = ()):
        self.client, self.blocks, self.prompt_vectors, self.progress = client, blocks, prompt_vectors, progress
        self.text_folds = np.concatenate([b["fold"] for b in blocks.meta])
        self.knn = [c for c in candidates if c.model == "knn"]
        self._done: dict[str, Any] = {}

    def _knn_grid(self, matrix, folds) -> dict[str, Any]:
        from oirl.crossfit import CrossFit, check_scores

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
        from oirl.crossfit import CrossFit, check_scores

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
    """Train on a partitioned log with Dask; returns a :class:`~oirl.recommender.Recommender`
    built exactly as :meth:`Recommender.train` builds it (same bundle format).

    ``timings`` (if given) receives the seconds of each stage: ``read`` (validate,
    encode), ``embed`` (shuffle by text, embed, pivot), ``cv_select`` and ``fit``.
    """
    from oirl.crossfit import select_model, spec
    from oirl.embed import default_cache_dir
    from oirl.recommender import Candidate, Recommender, cv_metrics

    started = time.perf_counter()
    timings = {} if timings is None else timings
    source = source or str(path)
    check_training_options(model, cv_groups)
    if model == "auto":
        if model_params:
            raise OirlError("model parameters need a named --model, not auto")
        from oirl.crossfit import AUTO_CANDIDATES

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
    encoded = encode_rows(client, rows, source=source)
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
        from oirl.reward import LightGBMReward

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
            "importance_weights": False, "seconds": round(time.perf_counter() - started, 2),
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
        train_text_hashes=matrix.texts, train_instance_hashes=matrix.query_ids, cache_dir=cache_dir,
        embedder_bundle_files=info.bundle_files,
    )


# --------------------------------------------------------------------------- evaluation


def _eval_scores(block: dict[str, Any], model_dir: str, cache_dir: str, candidate_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n_i, m) of the block's instances and whether each one's text was trained on (n_i,)."""
    from oirl.recommender import _member

    rec = worker_recommender(model_dir, cache_dir)
    text_scores = rec.score_vectors(block["vectors"], candidate_vectors)
    return text_scores[block["inst_text"]], _member(block["texts"], rec.train_text_hashes)[block["inst_text"]]


def _candidate_vectors(model_dir: str, cache_dir: str, candidates: list) -> np.ndarray:
    return worker_recommender(model_dir, cache_dir).candidate_vectors(candidates)


def evaluate_distributed(
    client, model_dir: str | Path, paths: list[str | Path], *, split: str = "test", split_column: str | None = "split",
    candidates: list | None = None, costs: dict[str, float] | None = None, cost_weights: list[float] | None = None,
    cache_dir: str | Path | None = None, n_partitions: int | None = None,
) -> dict[str, Any]:
    """The selection and reward-model report of ``oirl evaluate`` with the scoring on the workers.

    Full-information logs only (every prompt logged for every evaluated instance); no
    off-policy estimates. The driver gathers the reward and score matrices (n_instances x
    n_prompts) and computes the report with :mod:`oirl.evaluate`, as in memory.
    """
    import dask.dataframe as dd

    from oirl.bundle import json_safe
    from oirl.embed import default_cache_dir
    from oirl.evaluate import classification_metrics, cost_sweep_report, selection_report, warn_if_seen
    from oirl.recommender import Candidate, Recommender

    rec = Recommender.load(model_dir, cache_dir=cache_dir)
    cache = str(Path(cache_dir or default_cache_dir()).resolve())
    bundle = str(Path(model_dir).resolve())
    source = " + ".join(map(str, paths))
    parts = []
    for path in paths:
        rows = read_log_partitions(path, columns=[split_column] if split_column else None)
        if split_column and split_column not in rows.columns:
            warnings.warn(f"{path}: no column {split_column!r}; evaluating every row (training rows included, if any)", stacklevel=2)
        parts.append(_rows_of_split(rows, split_column, split))
    encoded = encode_rows(client, dd.concat(parts) if len(parts) > 1 else parts[0], source=source)
    prompt_ids = sorted(encoded.prompt_texts)  # the in-memory pivot's column order (it breaks exact ties)
    if candidates is not None:
        keep = {c.prompt_id for c in rec.resolve_candidates(candidates)} | {c.prompt_id for c in candidates}
        prompt_ids = [p for p in prompt_ids if p in keep]
        if not prompt_ids:
            raise OirlError("none of the candidates occur in the evaluated logs")
    eval_candidates = [Candidate(encoded.prompt_texts[p], p) for p in prompt_ids]
    vectors = client.submit(_candidate_vectors, bundle, cache, eval_candidates, pure=False).result()
    blocks = build_blocks(client, encoded, prompt_ids, embed_with=("bundle", bundle), cache_dir=cache, n_folds=1,
                          n_partitions=n_partitions, source=source)
    rewards = np.vstack([b["rewards"] for b in blocks.meta])
    missing = int(np.isnan(rewards).sum())
    if missing:
        raise OirlError(f"{source}: oirl evaluate --dask reports on full-information logs only (every prompt logged for every "
                        f"query instance); {missing} of {rewards.size} cells are not logged: run it without --dask")
    scored = client.gather(client.map(_eval_scores, blocks.futures, model_dir=bundle, cache_dir=cache, candidate_vectors=vectors, pure=False))
    scores = np.vstack([s for s, _ in scored])
    seen = np.concatenate([t for _, t in scored])
    warn_if_seen(source, seen)
    context = rec.policy_context(eval_candidates, costs={**encoded.costs, **(costs or {})})
    cost = None if np.isnan(context["cost"]).any() else context["cost"]
    report = selection_report(scores, rewards, prompt_ids, prior=context["prior"], in_bundle=context["in_bundle"], margin=rec.margin,
                              threshold=rec.threshold, cost=cost)
    report.update({
        "feedback": "full", "default_policy": rec.default_policy,
        "seen_in_training": {"query_instances": int(seen.sum()), "of": int(len(seen))},
        "reward_model": classification_metrics(rewards.ravel(), scores.ravel()),
        "conservative_margin": None if np.isinf(rec.margin) else rec.margin,
        "ope": {"refused": {"estimates": "off-policy estimates are not computed under --dask; run oirl evaluate without --dask"}},
        "model_selection": rec.metadata.get("metrics", {}).get("model_selection"),
        "distributed": {"workers": n_workers(client), "partitions": len(blocks.futures)},
    })
    if cost is not None and cost_weights:
        report["cost_sweep"] = cost_sweep_report(scores, rewards, prompt_ids, cost, cost_weights, context["prior"])
    return json_safe(report)


# --------------------------------------------------------------------------- batch recommendations


def query_sources(path: str | Path) -> list[Any]:
    """The partitions of a batch of queries, in order: a Parquet file's path per file of a
    Parquet file, directory or glob, or frames of up to :data:`PART_ROWS` queries from a
    JSONL file (``query`` and optional ``query_id`` per line)."""
    from oirl.logs import is_partitioned, iter_jsonl_objects

    path = Path(path)
    if not is_partitioned(path) and path.suffix.lower() != ".parquet":
        if not path.is_file():
            raise OirlError(f"{path}: no such file")
        queries, ids = [], []
        for number, record in iter_jsonl_objects(path):
            value = record.get("query")
            if not isinstance(value, str) or not value.strip():
                raise OirlError(f"{path}, line {number}, field 'query': missing or empty text")
            queries.append(value)
            ids.append(None if record.get("query_id") is None else str(record["query_id"]))
        if not queries:
            raise OirlError(f"{path}: no records")
        frame = pd.DataFrame({"query": queries})
        if any(i is not None for i in ids):
            frame["query_id"] = ["" if i is None else i for i in ids]
        return [frame.iloc[start : start + PART_ROWS].reset_index(drop=True) for start in range(0, len(frame), PART_ROWS)]
    files = partition_files(path)
    if not files[0].is_file():
        raise OirlError(f"{files[0]}: no such file")
    return [str(f) for f in files]


def read_query_partition(source: Any) -> pd.DataFrame:
    """A query partition as a frame with ``query`` (non-empty texts) and optional ``query_id``."""
    if isinstance(source, pd.DataFrame):
        return source
    import pyarrow.parquet as pq

    from oirl.logs import _parquet_value_to_str

    try:
        names = pq.read_schema(source).names
        if "query" not in names:
            raise OirlError(f"{source}: missing column 'query' (found: {', '.join(names) or 'none'})")
        table = pq.read_table(source, columns=["query"] + (["query_id"] if "query_id" in names else []))
    except OirlError:
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise OirlError(f"{source}: not a readable Parquet file: {one_line(exc)}") from None
    frame = pd.DataFrame({c: [_parquet_value_to_str(v) for v in table.column(c).to_pylist()] for c in table.column_names})
    empty = frame["query"].str.strip() == ""
    if empty.any():
        raise OirlError(f"{source}, row {int(empty.to_numpy().argmax()) + 1}, column 'query': empty query text")
    return frame


def recommend_frame(rec, frame: pd.DataFrame, *, candidates=None, policy: str | None = None, cost_weight: float = 0.0) -> pd.DataFrame:
    """The policy's pick for every query of ``frame``, in order: ``query``, ``query_id`` (if
    given), ``prompt_id``, ``prompt``, ``score``."""
    picks = rec.recommend(frame["query"].tolist(), candidates, policy=policy, top_k=1, cost_weight=cost_weight)
    out = {"query": frame["query"].tolist()}
    if "query_id" in frame.columns:
        out["query_id"] = frame["query_id"].astype(str).tolist()
    out.update(prompt_id=[r.prompt_id for r in picks], prompt=[r.prompt for r in picks], score=np.array([r.score for r in picks]))
    return pd.DataFrame(out)


def _write_part(frame: pd.DataFrame, directory: str | Path, index: int) -> int:
    from oirl._atomic import atomic_path

    with atomic_path(Path(directory) / f"part-{index:05d}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return len(frame)


def _recommend_part(source: Any, index: int, model_dir: str, cache_dir: str, directory: str, options: dict[str, Any]) -> int:
    rec = worker_recommender(model_dir, cache_dir)
    return _write_part(recommend_frame(rec, read_query_partition(source), **options), directory, index)


def is_recommend_output(directory: Path) -> bool:
    """A directory written by ``oirl recommend --out``: part files and the marker only."""
    names = [p.name for p in directory.iterdir()]
    return OUTPUT_MARKER in names and all(n == OUTPUT_MARKER or (n.startswith("part-") and n.endswith(".parquet")) for n in names)


def check_recommend_output(directory: str | Path) -> Path:
    """Refuse an ``--out`` that exists, is not empty and is not a previous output."""
    directory = Path(directory)
    resolved = directory.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OirlError(f"--out {directory}: cannot replace the current directory or a parent of it; give a new directory")
    if directory.exists():
        if not directory.is_dir():
            raise OirlError(f"--out {directory}: exists and is not a directory")
        if any(directory.iterdir()) and not is_recommend_output(directory):
            raise OirlError(f"--out {directory}: exists, is not empty and is not an 'oirl recommend' output; refusing to overwrite it")
    return directory


def recommend_to_parquet(
    model_dir: str | Path, queries: str | Path, out_dir: str | Path, *, candidates=None, policy: str | None = None,
    cost_weight: float = 0.0, cache_dir: str | Path | None = None, client=None,
) -> dict[str, Any]:
    """Write the pick for every query as Parquet partitions ``part-00000.parquet``, ... in
    ``out_dir``: one per input partition, rows in input order, then ``_SUCCESS``. The
    directory appears whole or not at all (it is written beside and renamed into place).
    With a Dask ``client`` each partition is scored and written by a worker."""
    from oirl._atomic import atomic_directory
    from oirl.embed import default_cache_dir
    from oirl.recommender import Recommender

    out_dir = check_recommend_output(out_dir)
    rec = Recommender.load(model_dir, cache_dir=cache_dir)
    rec.check_policy(policy, rec.resolve_candidates(candidates), rec.candidate_costs(candidates))  # e.g. cost-aware without costs: fail before any work
    sources = query_sources(queries)
    options = {"candidates": candidates, "policy": policy, "cost_weight": cost_weight}
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        if client is None:
            counts = [_write_part(recommend_frame(rec, read_query_partition(s), **options), tmp, i) for i, s in enumerate(sources)]
        else:
            cache = str(Path(cache_dir or default_cache_dir()).resolve())
            bundle = str(Path(model_dir).resolve())
            data = [client.scatter(s) if isinstance(s, pd.DataFrame) else s for s in sources]
            futures = [client.submit(_recommend_part, s, i, bundle, cache, str(Path(tmp).resolve()), options, pure=False)
                       for i, s in enumerate(data)]
            counts = client.gather(futures)
        (Path(tmp) / OUTPUT_MARKER).write_text("", encoding="utf-8")  # last: the output is complete
    return {"out": str(out_dir), "partitions": len(counts), "queries": int(sum(counts)), "seconds": round(time.perf_counter() - started, 2)}
