"""Static embeddings distilled from a sentence-transformers model, in model2vec's format.

A static embedder keeps one vector per vocabulary token and embeds a text as the mean
of its tokens' vectors: no transformer at run time, so it is many times faster than the
model it comes from. ``minilm-static`` is distilled from the shipped MiniLM the way
model2vec's ``distill`` does it (its ``[distill]`` extra would downgrade transformers,
so the steps are done here with the installed sentence-transformers):

1. every token of the tokenizer vocabulary but ``[unusedN]`` goes through the model
   alone (``[CLS] token [SEP]``), mean-pooled like the model pools a sentence;
2. PCA to 256 dimensions (scikit-learn);
3. Zipf weighting: token rank r (vocabulary order) gets probability p ∝ 1 / (r + 2)
   and weight 1e-4 / (1e-4 + p) (model2vec's SIF weighting).

The result is a model2vec folder (``model.safetensors``, ``tokenizer.json``,
``config.json``) loaded with ``model2vec.StaticModel.from_pretrained``. It is built
once, on first use, under ``<cache_dir>/static/minilm-static-<revision of MiniLM's
weights>/`` (about a minute on two cores, with a progress bar), in a temp folder that is
renamed into place, under a file lock so racing processes build it once. Nothing heavy
is imported until then.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from oirl._atomic import fsync_path
from oirl.embed.base import DEFAULT_EMBEDDER, Embedder, default_cache_dir, tokenizer_lowercases, weights_revision
from oirl.embed.sentence import SentenceTransformerEmbedder
from oirl.embed.store import _file_lock
from oirl.errors import OirlError

#: The files of a static model folder, all a bundle needs to carry.
STATIC_FILES = ("model.safetensors", "tokenizer.json", "config.json")
PCA_DIMS = 256
SIF_COEFFICIENT = 1e-4
_REMOVED_TOKENS = re.compile(r"\[unused\d+\]")  # as model2vec's default token_remove_pattern


class StaticEmbedder(Embedder):
    """A model2vec static model: texts become the normalised mean of their token vectors.

    Either a given folder (:meth:`from_directory`, ``static:FOLDER``) or one built on
    first use by ``builder(cache_dir)`` (:meth:`minilm`). ``revision`` is a content hash
    of the folder's weights, tokenizer and config; vectors are unit-length float32
    (all zeros for a text with no known token).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        spec: str | None = None,
        model_id: str | None = None,
        builder: Callable[[Path], Path] | None = None,
        cache_dir: str | Path | None = None,
    ):
        if directory is None and builder is None:
            raise ValueError("StaticEmbedder needs a directory or a builder")
        self._directory = Path(directory) if directory is not None else None
        self._builder = builder
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.spec = spec or f"static:{directory}"
        self.model_id = model_id or f"static:{self._directory.name if self._directory else self.spec}"
        self._model = None
        self._revision: str | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_directory(cls, path: str | Path) -> StaticEmbedder:
        """Load a model2vec folder (e.g. one carried inside a model bundle)."""
        path = Path(path)
        missing = [name for name in STATIC_FILES if not (path / name).is_file()]
        if missing:
            raise OirlError(f"static embedder folder {path} lacks {', '.join(missing)} (expected {', '.join(STATIC_FILES)})")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OirlError(f"static embedder folder {path}: config.json is not readable JSON ({exc})") from None
        model_id = (config.get("oirl") or {}).get("model_id") or f"static:{path.resolve().name}"
        return cls(path, spec=f"static:{path}", model_id=model_id)

    @classmethod
    def minilm(cls, cache_dir: str | Path | None = None) -> StaticEmbedder:
        """``minilm-static``: distilled from the shipped MiniLM on first use (see module docstring)."""
        return cls(spec="minilm-static", model_id="oirl/minilm-static", builder=build_static_model, cache_dir=cache_dir)

    def use_cache_dir(self, cache_dir: Path) -> None:
        with self._lock:
            if self._directory is None and self._cache_dir is None:
                self._cache_dir = Path(cache_dir)

    @property
    def directory(self) -> Path:
        """The model folder, built first if it is not there yet."""
        with self._lock:
            if self._directory is None:
                self._directory = self._builder(self._cache_dir or default_cache_dir())
            return self._directory

    @property
    def lowercases(self) -> bool:
        return tokenizer_lowercases(self.directory)

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from model2vec import StaticModel

                try:
                    self._model = StaticModel.from_pretrained(self.directory, normalize=True)
                except Exception as exc:  # safetensors, tokenizers and JSON errors come in many types
                    if self._builder is None:
                        raise OirlError(f"cannot load the static embedder in {self.directory}: {exc}") from None
                    warnings.warn(f"static embedder in {self.directory} is unreadable ({exc}); building it again", stacklevel=3)
                    shutil.rmtree(self.directory, ignore_errors=True)
                    self._directory = self._revision = None
                    self._model = StaticModel.from_pretrained(self.directory, normalize=True)
            return self._model

    @property
    def revision(self) -> str:
        with self._lock:
            if self._revision is None:
                self._revision = weights_revision(self.directory)
            return self._revision

    @property
    def dimension(self) -> int:
        return int(self._load().dim)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        vectors = model.encode(list(texts), normalize=False, batch_size=len(texts), use_multiprocessing=False)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)

    def embed(self, texts: Sequence[str], *, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        return super().embed(texts, batch_size=batch_size, progress=progress)


def bundle_files(embedder: Embedder) -> dict[str, bytes]:
    """The files a bundle carries so that serving needs no distillation: a static model's
    folder; nothing for other embedders (their weights come from their package)."""
    if not isinstance(embedder, StaticEmbedder):
        return {}
    return {path.name: path.read_bytes() for path in static_model_files(embedder)}


def static_model_files(embedder: Embedder) -> list[Path]:
    """The files to copy for ``embedder`` to load elsewhere via ``static:FOLDER`` (building it first if needed)."""
    if not isinstance(embedder, StaticEmbedder):
        raise OirlError(f"embedder {embedder.spec!r} is not a static embedder: it has no files to carry")
    return [embedder.directory / name for name in STATIC_FILES]


def build_static_model(
    cache_dir: str | Path,
    *,
    source: SentenceTransformerEmbedder | None = None,
    name: str = "minilm-static",
    pca_dims: int = PCA_DIMS,
    token_ids: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Distil ``source`` (default: MiniLM) into ``<cache_dir>/static/<name>-<source revision>/`` unless it is there.

    Safe to race: a file lock lets one process build while the others wait, and the
    folder appears by an atomic rename of a complete temp folder. ``token_ids`` (a
    vocabulary subset) and other ``pca_dims`` are for tests; they get their own folder.
    """
    source = source or SentenceTransformerEmbedder(DEFAULT_EMBEDDER)
    folder = f"{name}-{source.revision}"
    if token_ids is not None or pca_dims != PCA_DIMS:
        options = json.dumps({"pca_dims": pca_dims, "token_ids": sorted(token_ids) if token_ids is not None else None})
        folder += "-" + hashlib.sha256(options.encode()).hexdigest()[:8]
    parent = Path(cache_dir) / "static"
    target = parent / folder
    if _complete(target):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent / f"{folder}.lock"):
        if _complete(target):
            return target  # another process built it while we waited
        for stale in parent.glob(f".{folder}.*.tmp"):  # we hold the lock: temp folders left here are from crashed builds
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            warnings.warn(f"static embedder folder {target} is incomplete; building it again", stacklevel=2)
            shutil.rmtree(target)
        tmp = parent / f".{folder}.{uuid.uuid4().hex[:12]}.tmp"
        os.mkdir(tmp)  # not mkdtemp: the folder must follow the umask, not be 0700
        try:
            distill(source, tmp, name=name, pca_dims=pca_dims, token_ids=token_ids, progress=progress)
            for path in [*tmp.iterdir(), tmp]:  # on disk before it is complete by name: _complete checks names only
                fsync_path(path)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _complete(target):  # only a finished folder by someone else is fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in STATIC_FILES)


def distill(
    source: SentenceTransformerEmbedder,
    target: Path,
    *,
    name: str = "minilm-static",
    pca_dims: int = PCA_DIMS,
    sif_coefficient: float = SIF_COEFFICIENT,
    token_ids: Sequence[int] | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> None:
    """Write a model2vec folder distilled from ``source`` into the existing folder ``target``.

    Embeddings: shape (vocabulary size, pca_dims), float32; rows of tokens not embedded
    (``[unusedN]``, or outside ``token_ids``) are zero and so never move a mean's direction.
    """
    import torch
    from safetensors.numpy import save
    from sklearn.decomposition import PCA
    from tokenizers import Tokenizer
    from tqdm import tqdm

    folder = source.weights_dir()
    if folder is None or not (folder / "tokenizer.json").is_file():
        raise OirlError(f"cannot distil {source.spec!r}: no local folder with a tokenizer.json")
    model = source._load()
    pooling = model[1].get_config_dict() if len(model) > 1 and hasattr(model[1], "get_config_dict") else {}
    if pooling and not (pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens")):
        raise OirlError(f"cannot distil {source.spec!r}: it does not pool by mean ({pooling})")
    transformer = model[0]
    network = getattr(transformer, "auto_model", None) or transformer.model

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    vocab = tokenizer.get_vocab(with_added_tokens=True)  # token -> id
    size = max(vocab.values()) + 1
    if len(vocab) != size:
        raise OirlError(f"cannot distil {source.spec!r}: its vocabulary ids are not contiguous")
    tokens = {i: t for t, i in vocab.items()}
    keep = [i for i in range(size) if not _REMOVED_TOKENS.fullmatch(tokens[i])]
    if token_ids is not None:
        wanted = set(token_ids)
        keep = [i for i in keep if i in wanted]
    if not keep:
        raise OirlError(f"cannot distil {source.spec!r}: no token left to embed")
    prefix, suffix = _special_ids(tokenizer)

    # 1. Each token alone, with the special tokens the model always sees, mean-pooled.
    hidden = np.empty((len(keep), network.config.hidden_size), dtype=np.float32)
    takes_types = "token_type_ids" in inspect.signature(network.forward).parameters
    network.eval()
    with torch.inference_mode(), tqdm(total=len(keep), desc=f"distilling {name}", unit="token", disable=not progress) as bar:
        for start in range(0, len(keep), batch_size):
            ids = torch.tensor([[*prefix, i, *suffix] for i in keep[start : start + batch_size]], dtype=torch.long)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if takes_types:
                inputs["token_type_ids"] = torch.zeros_like(ids)
            states = network(**inputs).last_hidden_state
            hidden[start : start + len(ids)] = states.float().mean(dim=1).numpy()
            bar.update(len(ids))

    # 2. PCA (skipped, like model2vec, when there are fewer tokens than dimensions).
    dims = min(pca_dims, hidden.shape[1])
    if dims < len(keep):
        reduced = PCA(n_components=dims, svd_solver="full").fit_transform(hidden.astype(np.float64))
    else:
        reduced, dims = hidden.astype(np.float64), hidden.shape[1]
    # 3. Zipf / SIF weights by rank in vocabulary order.
    inv_rank = 1.0 / np.arange(2, len(keep) + 2)
    weights = sif_coefficient / (sif_coefficient + inv_rank / inv_rank.sum())
    embeddings = np.zeros((size, dims), dtype=np.float32)
    embeddings[keep] = reduced * weights[:, None]

    # save() to bytes, not save_file(): that writes the file 0600, whatever the umask
    (target / "model.safetensors").write_bytes(save({"embeddings": embeddings}))
    spec = json.loads(tokenizer.to_str())
    spec["post_processor"] = None  # a static model adds no [CLS]/[SEP]
    spec["padding"] = spec["truncation"] = None
    (target / "tokenizer.json").write_text(Tokenizer.from_str(json.dumps(spec)).to_str(), encoding="utf-8")
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "tokenizer_name": source.model_id,
        "apply_pca": dims,
        "sif_coefficient": sif_coefficient,
        "hidden_dim": dims,
        "seq_length": 1000000,
        "normalize": True,
        "pooling": "mean",
        "embedding_dtype": "float32",
        "oirl": {
            "model_id": f"oirl/{name}",
            "source_model_id": source.model_id,
            "source_revision": source.revision,
            "tokens_embedded": len(keep),
        },
    }
    (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (``[CLS]`` and ``[SEP]`` for BERT)."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    return [], []
