"""One notion of "the same question", used everywhere oirl groups queries.

Two query texts are the same question when the embedder cannot tell them apart: after
Unicode NFKC normalisation, with runs of white space collapsed to one space and the ends
trimmed, and case-folded when the embedder's tokenizer lowercases (all-MiniLM-L6-v2's
does). "Tom has 3 apples." and " tom  has 3 apples. " are then one question: they share a
cross-validation fold, count as seen in training, fall on one side of a disjoint split
and form one cluster of a bootstrap. Repeated samples of one question (several query
ids) stay separate rows; only the grouping uses the key.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuestionKey:
    """The rule that maps a query text to its question key (stored in every bundle)."""

    casefold: bool = True

    def __call__(self, text: str) -> str:
        key = " ".join(unicodedata.normalize("NFKC", text).split())
        return key.casefold() if self.casefold else key

    def to_dict(self) -> dict[str, object]:
        return {"unicode": "NFKC", "whitespace": "collapsed", "casefold": self.casefold}

    @classmethod
    def from_dict(cls, document: dict[str, object]) -> QuestionKey:
        return cls(casefold=bool(document.get("casefold", True)))

    def keys(self, texts: Iterable[str]) -> np.ndarray:
        """(n,) the key of each text, as a numpy string array."""
        return np.array([self(t) for t in texts], dtype=str)

    def groups(self, texts: Iterable[str]) -> np.ndarray:
        """(n,) an integer per text, equal for texts that are the same question."""
        _, index = np.unique(self.keys(texts), return_inverse=True)
        return index.ravel()

    def hashes(self, texts: Iterable[str]) -> np.ndarray:
        """(n,) uint64: the first 8 bytes of the sha256 of each text's key."""
        return np.array([int.from_bytes(hashlib.sha256(self(t).encode("utf-8")).digest()[:8], "little") for t in texts],
                        dtype="<u8")
