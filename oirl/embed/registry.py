"""Embedders by name: the ``--embedder`` choices.
"""

from __future__ import annotations

from collections.abc import Callable

from oirl.embed.base import DEFAULT_EMBEDDER, Embedder, HashingEmbedder
from oirl.embed.sentence import SentenceTransformerEmbedder
from oirl.errors import OirlError


def _minilm_static() -> Embedder:
    from oirl.embed.static import StaticEmbedder

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
        from oirl.embed.static import StaticEmbedder

        return StaticEmbedder.from_directory(spec.split(":", 1)[1])
    return SentenceTransformerEmbedder(spec)
