"""Embedders behind caches: the on-disk SQLite cache (:class:`CachedEmbedder`) and an
in-memory LRU (:class:`MemoryCachedEmbedder`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from oirl.embed.base import Embedder, default_cache_dir, text_hash
from oirl.embed.store import EmbeddingCache


class CachedEmbedder:
    """An embedder behind the disk cache: each distinct text is embedded at most once.

    ``n_embedded`` counts texts actually sent to the model by this object (tests use it
    to prove a warm run embeds nothing). New texts go to the model ``chunk_size`` at a
    time; each chunk is claimed first (see :meth:`EmbeddingCache.claim`), so processes
    sharing the cache split the work instead of repeating it.
    """

    def __init__(self, embedder: Embedder, cache_dir: str | Path | None = None, *, chunk_size: int = 128):
        self.embedder = embedder
        root = Path(cache_dir or default_cache_dir())
        embedder.use_cache_dir(root)
        self.cache = EmbeddingCache(root)
        self.revision = embedder.revision
        self.chunk_size = chunk_size
        self._key = self.cache.model_key(self.revision, embedder.model_id, embedder.dimension)
        self.cache.import_old_shards(self._key, embedder.model_id, embedder.dimension)
        self.n_embedded = 0

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    @property
    def lowercases(self) -> bool:
        return self.embedder.lowercases

    def __len__(self) -> int:
        """How many vectors of this model revision the cache holds."""
        return self.cache.count(self._key)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Vectors for ``texts`` in order; shape (len(texts), dimension)."""
        texts = list(texts)
        dimension = self.dimension
        if not texts:
            return np.zeros((0, dimension), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        by_hash = dict(zip(hashes, texts, strict=True))
        known = self.cache.get(self._key, list(by_hash), dimension)
        todo = [h for h in by_hash if h not in known]
        if todo:
            self._embed_missing(todo, by_hash, known, progress)
        return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)

    def _embed_missing(self, todo: list[str], by_hash: dict[str, str], known: dict[str, np.ndarray], progress: bool) -> None:
        from tqdm import tqdm

        owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        dimension = self.dimension
        pause = 0.02
        bar = tqdm(total=len(todo), desc=f"embedding ({self.embedder.spec})", unit="text", disable=not progress)
        try:
            with bar:
                while todo:
                    waiting: list[str] = []
                    for start in range(0, len(todo), self.chunk_size):
                        found, mine, theirs = self.cache.claim(self._key, todo[start : start + self.chunk_size], dimension, owner)
                        known.update(found)
                        if mine:
                            vectors = self.embedder.embed([by_hash[h] for h in mine])
                            self.cache.put(self._key, mine, vectors, owner)
                            self.n_embedded += len(mine)
                            known.update(zip(mine, np.asarray(vectors, dtype=np.float32), strict=True))
                        waiting += theirs
                        bar.update(len(found) + len(mine))
                    if waiting:  # another process is embedding these: give it time, then look again
                        time.sleep(pause)
                        pause = pause * 2 if len(waiting) == len(todo) else 0.02
                        pause = min(pause, 1.0)
                    todo = waiting
        except BaseException:
            with contextlib.suppress(Exception):
                self.cache.release(owner)
            raise


class MemoryCachedEmbedder:
    """An embedder behind a bounded in-memory LRU cache (for the service: no disk writes
    per request). Thread-safe; ``n_embedded`` counts texts sent to the model."""

    def __init__(self, embedder: Embedder, max_items: int = 10_000):
        self.embedder = embedder
        self.max_items = max_items
        self.n_embedded = 0
        self._vectors: LRUCache = LRUCache(maxsize=max_items)
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}  # a lookup refreshes the entry
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            vectors = self.embedder.embed(missing, progress=progress)
            known.update(zip(missing, vectors, strict=True))
            with self._lock:
                self.n_embedded += len(missing)
                for t, v in zip(missing, vectors, strict=True):
                    self._vectors[t] = v  # the least recently used leaves when full
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([known[t] for t in texts]).astype(np.float32, copy=False)
