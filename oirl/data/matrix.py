"""Logs as matrices: one row per query instance, one column per prompt, NaN where a prompt
was not logged, with the texts' vectors (:class:`LogMatrix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from oirl.errors import OirlError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LogMatrix:
    """Logs as matrices: query instances x prompts, with the texts' vectors.

    ``rewards`` (n, m) is NaN where prompt j was not logged for instance i;
    ``propensity`` (n, m) likewise, or None when the log has no propensity column.
    ``text_index`` (n,) maps each instance to its row of ``texts`` / ``query_vectors``:
    repeated samples of one question share a text (and a vector).
    """

    query_ids: np.ndarray
    texts: np.ndarray
    text_index: np.ndarray
    query_vectors: np.ndarray
    prompt_ids: list[str]
    prompt_texts: list[str]
    prompt_vectors: np.ndarray
    rewards: np.ndarray
    propensity: np.ndarray | None = None
    sample_weight: np.ndarray | None = None  # (n, m) weights of the logged cells in training, e.g. 1 / propensity

    @classmethod
    def from_logs(cls, logs: pd.DataFrame, embed, *, prompt_vectors: np.ndarray | None = None, progress: bool = False) -> LogMatrix:
        """Pivot canonical log rows (one per query instance and prompt) and embed the texts.

        ``embed(texts, progress=...)`` returns (len(texts), d) vectors. ``prompt_vectors``,
        if given, are the vectors of the log's prompts in first-seen order.
        """
        import pandas as pd  # loaded with the logs anyway; not at import: the CLI starts without it

        prompt_table = logs.drop_duplicates("prompt_id")[["prompt_id", "prompt"]]
        prompt_ids = prompt_table["prompt_id"].tolist()
        query_ids = pd.unique(logs["query_id"])
        row = pd.Index(query_ids).get_indexer(logs["query_id"])
        col = pd.Index(prompt_ids).get_indexer(logs["prompt_id"])
        rewards = np.full((len(query_ids), len(prompt_ids)), np.nan)
        rewards[row, col] = logs["reward"].to_numpy(dtype=np.float64)
        propensity = None
        if "propensity" in logs.columns:
            propensity = np.full_like(rewards, np.nan)
            propensity[row, col] = logs["propensity"].to_numpy(dtype=np.float64)
        text_of_instance = logs.drop_duplicates("query_id").set_index("query_id").loc[query_ids, "query"].to_numpy(dtype=str)
        texts, text_index = np.unique(text_of_instance, return_inverse=True)
        query_vectors = embed(list(texts), progress=progress)
        if prompt_vectors is None:
            prompt_vectors = embed(prompt_table["prompt"].tolist())
        return cls(
            query_ids=np.asarray(query_ids, dtype=str), texts=texts, text_index=text_index.ravel(), query_vectors=query_vectors,
            prompt_ids=prompt_ids, prompt_texts=prompt_table["prompt"].tolist(), prompt_vectors=np.asarray(prompt_vectors),
            rewards=rewards, propensity=propensity,
        )

    @property
    def logged(self) -> np.ndarray:
        """(n, m) True where a reward was logged."""
        return ~np.isnan(self.rewards)

    @property
    def full_information(self) -> bool:
        """Every prompt logged for every query instance (an evaluation harness's log)."""
        return bool(self.logged.all())

    def groups(self, kind: str) -> np.ndarray:
        """Cross-validation groups per instance: its ``text`` or the ``instance`` itself."""
        if kind == "text":
            return self.text_index
        if kind == "instance":
            return np.arange(len(self.query_ids))
        raise OirlError(f"unknown cross-validation grouping {kind!r} (choose from text, instance)")

    def subset(self, rows: np.ndarray) -> LogMatrix:
        """The matrix restricted to some query instances (texts and vectors are shared)."""
        return LogMatrix(
            query_ids=self.query_ids[rows], texts=self.texts, text_index=self.text_index[rows], query_vectors=self.query_vectors,
            prompt_ids=self.prompt_ids, prompt_texts=self.prompt_texts, prompt_vectors=self.prompt_vectors,
            rewards=self.rewards[rows], propensity=None if self.propensity is None else self.propensity[rows],
            sample_weight=None if self.sample_weight is None else self.sample_weight[rows],
        )

    def importance_weighted(self, cap: float = 100.0) -> LogMatrix:
        """The same matrix whose logged cells train with weight 1 / propensity (capped at
        ``cap``): the reward model then fits the prompts' outcomes as if every prompt had
        been logged uniformly, instead of fitting best where the logging policy went."""
        if self.propensity is None:
            raise OirlError("importance weighting needs a propensity column in the log")
        weight = np.where(self.logged, np.minimum(1.0 / np.where(self.logged, self.propensity, 1.0), cap), 0.0)
        return LogMatrix(**{**self.__dict__, "sample_weight": weight})

    def prompt_means(self) -> np.ndarray:
        """(m,) each prompt's mean logged reward, importance-weighted when propensities
        are known (the self-normalised estimate of always using that prompt)."""
        weight = self.logged.astype(float) if self.propensity is None else np.where(self.logged, 1.0 / self.propensity, 0.0)
        total = weight.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weight * np.nan_to_num(self.rewards)).sum(axis=0) / total, np.nan)


def reward_matrix(frame: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """Pivot logs to (query ids, prompt ids, rewards of shape (n_q, n_p) with NaN where unlogged)."""
    pivot = frame.pivot(index="query_id", columns="prompt_id", values="reward")
    return list(pivot.index), list(pivot.columns), pivot.to_numpy(dtype=np.float64)
