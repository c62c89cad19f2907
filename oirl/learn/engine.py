"""Training engines: one algorithm (:func:`oirl.learn.train.fit_bundle`), several kinds of hardware.

An engine does the work whose *place* differs between a laptop and a cluster: it turns
the training logs into a :class:`PreparedLogs` (a driver-side :class:`LogMatrix` of
rewards and propensities, what the bundle records about the rows and the embedder), and
it cross-fits and fits reward models where the data lives. Everything that decides --
the candidates, the logging policy, the folds' values, the selection rule, the bundle --
is :func:`~oirl.learn.train.fit_bundle`'s, the same for every engine.

:class:`InMemoryEngine` works on a pandas frame in this process.
:class:`oirl.distributed.engine.DaskEngine` works on partitioned Parquet logs on a Dask
cluster (the plain CLI never imports it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oirl.data.matrix import LogMatrix
from oirl.data.questions import QuestionKey
from oirl.data.schema import fingerprint, text_hashes64
from oirl.embed.base import DEFAULT_EMBEDDER, revision_of
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.static import bundle_files
from oirl.errors import OirlError
from oirl.learn.candidates import AUTO, AUTO_CANDIDATES, CV_GROUPS, ModelSpec, spec
from oirl.learn.crossfit import CrossFit, cross_fit, fit_on, make_folds
from oirl.learn.logging_policy import with_propensities
from oirl.learn.selection import choose_new_prompt_tau
from oirl.reward.base import RewardModel


@dataclass(frozen=True)
class TrainOptions:
    """What ``oirl train`` lets a user choose (see :func:`oirl.learn.train.fit_bundle`)."""

    model: str = AUTO
    model_params: dict[str, Any] | None = None
    embedder: str = DEFAULT_EMBEDDER
    layout: str | None = None
    cv_folds: int = 3
    cv_groups: str = "text"
    importance_weights: bool = False
    cache_dir: str | Path | None = None
    progress: bool = False
    source: str = "<logs>"

    def candidates(self, trainable: tuple[str, ...] | None = None) -> tuple[ModelSpec, ...]:
        """The reward models to cross-validate: the ``auto`` grid (those of it that an engine
        can train), or the one named. Checked before any work."""
        if self.cv_groups not in CV_GROUPS:
            raise OirlError(f"unknown cross-validation grouping {self.cv_groups!r} (choose from {', '.join(CV_GROUPS)})")
        if self.model == AUTO:
            if self.model_params:
                raise OirlError("model parameters need a named --model, not auto")
            grid = [c for c in AUTO_CANDIDATES if trainable is None or c.model in trainable]
            return tuple(c if self.layout is None else spec(c.model, c.complexity, self.layout, **dict(c.params)) for c in grid)
        if trainable is not None and self.model not in trainable:
            raise OirlError(f"--model {self.model} cannot train on this engine (choose from auto, {', '.join(trainable)})")
        chosen = spec(self.model, 1, self.layout, **(self.model_params or {}))
        chosen.make()  # an unknown model or parameter fails before any work
        return (chosen,)


@dataclass
class PreparedLogs:
    """Training logs as an engine hands them to :func:`~oirl.learn.train.fit_bundle`.

    ``matrix``: rewards (and propensities) per query instance and prompt, with the prompt
    vectors (query vectors only where the engine holds them in this process);
    ``embedder``: the facts a bundle records (spec, model_id, revision, bundle_files);
    ``text_hashes`` / ``instance_hashes``: the training questions' and instances' hashes
    (what ``seen_in_training`` compares); ``rows``, ``fingerprint``, ``costs`` (prompt id
    -> mean cost); ``notes``: engine-specific facts for the bundle's metrics."""

    matrix: LogMatrix
    embedder: dict[str, Any]
    question_key: QuestionKey
    text_hashes: np.ndarray
    instance_hashes: np.ndarray
    rows: int
    fingerprint: str
    costs: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    #: prompt id -> the model that produced every one of its logged outcomes (the log's ``llm`` column)
    arm_models: dict[str, str] = field(default_factory=dict)


class Engine(ABC):
    """Where training runs: reading, embedding and pivoting the logs; cross-fitting and
    fitting reward models. :func:`~oirl.learn.train.fit_bundle` does the rest."""

    #: The reward models this engine trains (None: every one).
    trainable: tuple[str, ...] | None = None

    @abstractmethod
    def prepare(self, logs: Any, options: TrainOptions) -> PreparedLogs: ...

    @abstractmethod
    def folds(self, prepared: PreparedLogs, options: TrainOptions) -> list[tuple[np.ndarray, np.ndarray]]: ...

    @abstractmethod
    def cross_fit(self, candidate: ModelSpec, matrix: LogMatrix, folds: list[tuple[np.ndarray, np.ndarray]]) -> CrossFit:
        """Out-of-fold scores of ``candidate`` (see :func:`oirl.learn.crossfit.cross_fit`)."""

    @abstractmethod
    def fit(self, candidate: ModelSpec, matrix: LogMatrix) -> RewardModel:
        """``candidate`` fitted on every logged cell."""

    def with_propensities(self, matrix: LogMatrix, options: TrainOptions) -> tuple[LogMatrix, dict[str, Any] | None]:
        """The matrix with the propensities its values need (logged, else estimated)."""
        return with_propensities(matrix, options.cv_folds)

    def tune_new_prompt_width(self, model: RewardModel, matrix: LogMatrix, folds) -> dict[float, float] | None:
        """For a model with a width for prompts never trained on (``new_prompt_tau``): that width, set on ``model``;
        returns each width's Brier score (None where the engine does not tune it)."""
        return None


class InMemoryEngine(Engine):
    """Everything in this process, on a canonical pandas frame of training rows."""

    def prepare(self, logs, options):
        if logs.empty:
            raise OirlError(f"{options.source}: no training rows")
        if options.importance_weights and "propensity" not in logs.columns:
            raise OirlError(f"{options.source}: importance weighting needs a propensity column in the log")
        live = get_embedder(options.embedder)
        cached = CachedEmbedder(live, options.cache_dir)  # also tells a static embedder where to build itself
        question_key = QuestionKey(casefold=live.lowercases)
        matrix = LogMatrix.from_logs(logs, cached.embed, question_key=question_key, progress=options.progress)
        return PreparedLogs(
            matrix=matrix, embedder=embedder_facts(live, options.embedder), question_key=question_key,
            text_hashes=question_key.hashes(matrix.texts), instance_hashes=text_hashes64(matrix.query_ids), rows=int(len(logs)),
            fingerprint=fingerprint(logs), costs=logs.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in logs.columns else {},
            arm_models=models_by_prompt(logs),
        )

    def folds(self, prepared, options):
        return make_folds(prepared.matrix, options.cv_folds, options.cv_groups)

    def cross_fit(self, candidate, matrix, folds):
        return cross_fit(candidate, matrix, folds)

    def fit(self, candidate, matrix):
        return fit_on(candidate.make(), matrix, candidate.layout_for())

    def tune_new_prompt_width(self, model, matrix, folds):
        if "new_prompt_tau" not in model.get_params():
            return None
        tau, widths = choose_new_prompt_tau(matrix, model, folds)
        model.set_params(new_prompt_tau=tau)
        return widths


def models_by_prompt(logs) -> dict[str, str]:
    """Each prompt id whose logged rows all name one model (``llm``) -> that model: the arm is
    (prompt, model), and a gateway should call that model with it. A prompt logged with
    several models, or none, sets no model."""
    if "llm" not in logs.columns:
        return {}
    named = logs[logs["llm"].notna() & (logs["llm"].astype(str).str.strip() != "")]
    models = named.groupby("prompt_id")["llm"].unique()
    unnamed = set(logs.loc[~logs.index.isin(named.index), "prompt_id"])
    return {str(p): str(m[0]) for p, m in models.items() if len(m) == 1 and p not in unnamed}


def embedder_facts(embedder, spec_name: str) -> dict[str, Any]:
    """What a bundle records about the embedder it was trained with."""
    return {"spec": spec_name, "model_id": embedder.model_id, "revision": revision_of(embedder), "bundle_files": bundle_files(embedder)}
