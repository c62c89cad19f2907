"""Embedders by name: the ``--embedder`` choices.
"""

from __future__ import annotations

from collections.abc import Callable

from oirl.embed.base import DEFAULT_EMBEDDER, Embedder, HashingEmbedder
from oirl.embed.sentence import SentenceTransformerEmbedder
from oirl.embed.static import StaticEmbedder
from oirl.errors import OirlError


def _minilm_static() -> Embedder:

    return StaticEmbedder.minilm()


#: Named embedders for the CLI and configs; any other name is a sentence-transformers model.
EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": lambda: SentenceTransformerEmbedder(DEFAULT_EMBEDDER),
    "minilm-static": _minilm_static,
    "hashing": lambda: HashingEmbedder(64),
}


def get_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """Build an embedder from a registry name, ``hashing:DIM``, ``static:FOLDER`` or a
    sentence-transformers model folder or name found offline (in the local Hugging Face
    cache); anything else is refused at once, with the valid names."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if spec.startswith("hashing:"):
        try:
            return HashingEmbedder(int(spec.split(":", 1)[1]))
        except ValueError:
            raise OirlError(f"bad embedder {spec!r}: expected hashing:DIMENSION") from None
    if spec.startswith("static:"):

        return StaticEmbedder.from_directory(spec.split(":", 1)[1])
    model = SentenceTransformerEmbedder(spec)
    if model.weights_dir() is None:  # nothing is downloaded at run time: refuse now, not after a network timeout
        raise OirlError(f"unknown embedder {spec!r}: choose from {', '.join(EMBEDDERS)}, hashing:DIM, static:FOLDER, or a "
                        "sentence-transformers model folder or name already in the local Hugging Face cache")
    return model
