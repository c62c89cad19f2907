"""The embedder interface: texts in, unit vectors out (:class:`Embedder`), and what
identifies a model's weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oirl.errors import OirlError

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

    @property
    def lowercases(self) -> bool:
        """Whether the embedder sees "Tom" and "tom" as the same text (its tokenizer
        lowercases); decides the question key (:mod:`oirl.data.questions`). Default: no."""
        return False

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


def revision_of(embedder) -> str:
    """What identifies an embedder's weights (its content hash where it has one); bundles record it."""
    return str(getattr(embedder, "revision", None) or embedder.model_id)


def tokenizer_lowercases(folder: Path | None) -> bool:
    """Whether the Hugging Face tokenizer saved in ``folder`` lowercases its input: its
    ``tokenizer.json`` normaliser lowercases, or ``tokenizer_config.json`` says
    ``do_lower_case``. False when neither file says so (the safe side: case then matters)."""

    if folder is None:
        return False
    try:
        normalizer = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8")).get("normalizer")
    except (OSError, ValueError, AttributeError):
        normalizer = None
    text = json.dumps(normalizer or {})
    if '"lowercase": true' in text or '"type": "Lowercase"' in text:
        return True
    try:
        config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("do_lower_case"))


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

    @property
    def lowercases(self) -> bool:
        return True  # it reads text.lower()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+|[^\w\s]", text.lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, index] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_EMBEDDINGS_DIR", DEFAULT_CACHE_DIR))
