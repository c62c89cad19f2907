"""Logs as matrices: one row per query instance, one column per prompt, NaN where a prompt
was not logged, with the texts' vectors (:class:`LogMatrix`).

:func:`pivot_cells` is the one pivot from logged rows to a matrix (duplicate cells
averaged); the in-memory matrix, the evaluation's scored logs and the Dask blocks all
pivot through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from oirl.data.questions import QuestionKey
from oirl.errors import OirlError

if TYPE_CHECKING:
    import pandas as pd


def pivot_cells(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, m) mean of ``values`` per (row, col) cell, NaN where no value fell; the three
    inputs are (k,) arrays of one length."""
    sums = np.zeros(shape)
    counts = np.zeros(shape)
    np.add.at(sums, (rows, cols), values)
    np.add.at(counts, (rows, cols), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class LogPivot:
    """Canonical log rows pivoted: ``query_ids`` (n,) in first-seen order, ``prompt_ids``
    (m,), ``rewards`` and ``propensity`` (n, m) NaN where not logged (propensity None
    without that column), ``instance_texts`` (n,) the query text of each instance and
    ``prompt_texts`` (m,)."""

    query_ids: np.ndarray
    prompt_ids: list[str]
    prompt_texts: list[str]
    instance_texts: np.ndarray
    rewards: np.ndarray
    propensity: np.ndarray | None


def pivot_logs(logs: pd.DataFrame, prompt_ids: list[str] | None = None) -> LogPivot:
    """Pivot canonical rows; ``prompt_ids`` (default: the log's, first-seen order) fixes the
    columns, and rows of other prompts are left out."""
    import pandas as pd  # loaded with the logs anyway; not at import: the CLI starts without it

    table = logs.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    prompt_ids = list(table.index) if prompt_ids is None else list(prompt_ids)
    query_ids = pd.unique(logs["query_id"])
    rows = pd.Index(query_ids).get_indexer(logs["query_id"])
    cols = pd.Index(prompt_ids).get_indexer(logs["prompt_id"])
    keep = cols >= 0
    shape = (len(query_ids), len(prompt_ids))
    rewards = pivot_cells(rows[keep], cols[keep], logs["reward"].to_numpy(dtype=np.float64)[keep], shape)
    propensity = None
    if "propensity" in logs.columns:
        propensity = pivot_cells(rows[keep], cols[keep], logs["propensity"].to_numpy(dtype=np.float64)[keep], shape)
    texts = logs.drop_duplicates("query_id").set_index("query_id").loc[query_ids, "query"].to_numpy(dtype=str)
    return LogPivot(np.asarray(query_ids, dtype=str), prompt_ids, [str(table.get(p, "")) for p in prompt_ids], texts, rewards, propensity)


@dataclass
class LogMatrix:
    """Logs as matrices: query instances x prompts, with the texts' vectors.

    ``rewards`` (n, m) is NaN where prompt j was not logged for instance i;
    ``propensity`` (n, m) likewise, or None when the log has no propensity column.
    ``text_index`` (n,) maps each instance to its row of ``texts`` / ``query_vectors``:
    repeated samples of one question share a text (and a vector). ``questions`` (n,)
    numbers the instances by question (:mod:`oirl.data.questions`: texts the embedder
    cannot tell apart are one question); folds, clusters and "seen in training" use it.
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
    questions: np.ndarray | None = field(default=None)
    #: Where the propensities come from: "logged", "estimated", or None (none known).
    propensity_source: str | None = None

    def __post_init__(self) -> None:
        if self.questions is None:  # without a key rule, each distinct text is a question
            self.questions = np.asarray(self.text_index)
        if self.propensity is not None and self.propensity_source is None:
            self.propensity_source = "logged"

    @classmethod
    def from_logs(cls, logs: pd.DataFrame, embed: Callable[..., np.ndarray], *, prompt_vectors: np.ndarray | None = None,
                  question_key: QuestionKey | None = None, progress: bool = False) -> LogMatrix:
        """Pivot canonical log rows (one per query instance and prompt) and embed the texts.

        ``embed(texts, progress=...)`` returns (len(texts), d) vectors. ``prompt_vectors``,
        if given, are the vectors of the log's prompts in first-seen order.
        ``question_key`` groups the instances into questions (default: by exact text).
        """
        pivot = pivot_logs(logs)
        texts, text_index = np.unique(pivot.instance_texts, return_inverse=True)
        text_index = text_index.ravel()
        query_vectors = embed(list(texts), progress=progress)
        if prompt_vectors is None:
            prompt_vectors = embed(pivot.prompt_texts)
        questions = question_key.groups(texts)[text_index] if question_key is not None else text_index
        return cls(
            query_ids=pivot.query_ids, texts=texts, text_index=text_index, query_vectors=query_vectors,
            prompt_ids=pivot.prompt_ids, prompt_texts=pivot.prompt_texts, prompt_vectors=np.asarray(prompt_vectors),
            rewards=pivot.rewards, propensity=pivot.propensity, questions=questions,
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
        """Cross-validation groups per instance: its question (``text``) or the ``instance`` itself."""
        if kind == "text":
            return self.questions
        if kind == "instance":
            return np.arange(len(self.query_ids))
        raise OirlError(f"unknown cross-validation grouping {kind!r} (choose from text, instance)")

    def subset(self, rows: np.ndarray) -> LogMatrix:
        """The matrix restricted to some query instances (texts and vectors are shared)."""
        return replace(
            self, query_ids=self.query_ids[rows], text_index=self.text_index[rows], rewards=self.rewards[rows],
            propensity=None if self.propensity is None else self.propensity[rows],
            sample_weight=None if self.sample_weight is None else self.sample_weight[rows], questions=self.questions[rows],
        )

    def with_prompts(self, columns: list[int]) -> LogMatrix:
        """The matrix restricted to some prompts (columns)."""
        return replace(
            self, prompt_ids=[self.prompt_ids[c] for c in columns], prompt_texts=[self.prompt_texts[c] for c in columns],
            prompt_vectors=self.prompt_vectors[columns], rewards=self.rewards[:, columns],
            propensity=None if self.propensity is None else self.propensity[:, columns],
            sample_weight=None if self.sample_weight is None else self.sample_weight[:, columns],
        )

    def with_propensity(self, propensity: np.ndarray, source: str) -> LogMatrix:
        """The same logs with these propensities (n, m) of the logged cells, e.g. estimated ones."""
        return replace(self, propensity=np.where(self.logged, propensity, np.nan), propensity_source=source)

    def importance_weighted(self, cap: float = 100.0) -> LogMatrix:
        """The same matrix whose logged cells train with weight 1 / propensity (capped at
        ``cap``): the reward model then fits the prompts' outcomes as if every prompt had
        been logged uniformly, instead of fitting best where the logging policy went."""
        if self.propensity is None:
            raise OirlError("importance weighting needs a propensity column in the log")
        weight = np.where(self.logged, np.minimum(1.0 / np.where(self.logged, self.propensity, 1.0), cap), 0.0)
        return replace(self, sample_weight=weight)

    def prompt_means(self) -> np.ndarray:
        """(m,) each prompt's mean logged reward, importance-weighted when propensities
        are known (the self-normalised estimate of always using that prompt)."""
        weight = self.logged.astype(float) if self.propensity is None else np.where(self.logged, 1.0 / self.propensity, 0.0)
        total = weight.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weight * np.nan_to_num(self.rewards)).sum(axis=0) / total, np.nan)
