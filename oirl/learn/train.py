"""Training: logs in, a fitted :class:`~oirl.recommender.recommender.Recommender` out.

The steps, each in its own module: embed the logs (:mod:`oirl.embed`), pivot them into a
:class:`~oirl.data.matrix.LogMatrix`, let cross-validation choose the reward model and the
policy (:mod:`oirl.learn.selection` over :mod:`oirl.learn.crossfit`), and fit the chosen
model on every training row::

    from oirl.data.logs import read_logs, training_rows
    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import load_bundle, save_bundle

    rec = train_recommender(training_rows(read_logs("logs/mawps.parquet"), "split", "train", source="mawps"))
    save_bundle(rec, "models/mawps")
    rec = load_bundle("models/mawps")
    [r] = rec.recommend(["Tom has 3 apples ..."])          # the bundle's default policy
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.matrix import LogMatrix
from oirl.data.questions import QuestionKey
from oirl.data.schema import fingerprint, text_hashes64
from oirl.embed.base import DEFAULT_EMBEDDER
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.errors import OirlError
from oirl.learn.candidates import AUTO, AUTO_CANDIDATES, CV_GROUPS, spec
from oirl.learn.crossfit import fit_on
from oirl.learn.logging_policy import describe, with_propensities
from oirl.learn.selection import choose_new_prompt_tau, select_model
from oirl.recommender.recommender import Candidate, Recommender, bundle_files_of, embedder_revision
from oirl.reward.metrics import classification_metrics


def train_recommender(
    logs: pd.DataFrame, *, model: str = AUTO, model_params: dict[str, Any] | None = None, embedder: str = DEFAULT_EMBEDDER,
    layout: str | None = None, cv_folds: int = 3, cv_groups: str = "text", cache_dir: str | Path | None = None,
    progress: bool = False, source: str = "<logs>", importance_weights: bool = False,
) -> Recommender:
    """Fit on ``logs`` (canonical frame, training rows only).

    ``model="auto"`` lets grouped cross-validation choose among the candidates of
    :data:`oirl.learn.selection.AUTO_CANDIDATES` and the prior alone by the selection value
    of their policies; a model name forces that backend (``model_params`` go to its
    constructor). Either way cross-validation chooses the conservative margin and
    the bundle's default policy, and the final model is fit on all rows. On a
    partial-feedback log the reward model learns from the logged cells (weighted by
    1 / propensity with ``importance_weights``) and cross-validated values are doubly
    robust estimates.
    """
    started = time.perf_counter()
    if cv_groups not in CV_GROUPS:
        raise OirlError(f"unknown cross-validation grouping {cv_groups!r} (choose from {', '.join(CV_GROUPS)})")
    if model == AUTO:
        if model_params:
            raise OirlError("model parameters need a named --model, not auto")
        candidates = tuple(c if layout is None else spec(c.model, c.complexity, layout, **dict(c.params)) for c in AUTO_CANDIDATES)
    else:
        candidates = (spec(model, 1, layout, **(model_params or {})),)
        candidates[0].make()  # fail on an unknown model or parameter before embedding anything
    if logs.empty:
        raise OirlError(f"{source}: no training rows")
    if importance_weights and "propensity" not in logs.columns:
        raise OirlError(f"{source}: importance weighting needs a propensity column in the log")
    live = get_embedder(embedder)
    cached = CachedEmbedder(live, cache_dir)  # also tells a static embedder where to build itself
    question_key = QuestionKey(casefold=live.lowercases)
    matrix = LogMatrix.from_logs(logs, cached.embed, question_key=question_key, progress=progress)
    matrix, propensities = with_propensities(matrix, cv_folds)
    if propensities is not None:
        warnings.warn(f"{source}: {describe(propensities)}", stacklevel=2)
    if importance_weights:
        matrix = matrix.importance_weighted()
    selection = select_model(matrix, candidates, n_folds=cv_folds, cv_groups=cv_groups, progress=progress)
    chosen_layout = selection.spec.layout_for()
    fitted = fit_on(selection.spec.make(), matrix, chosen_layout)
    new_prompt_widths = None
    if fitted.name == "knn":
        tau, new_prompt_widths = choose_new_prompt_tau(matrix, fitted, selection.fit.folds)
        fitted.set_params(new_prompt_tau=tau)
    prior = dict(zip(matrix.prompt_ids, matrix.prompt_means().tolist(), strict=True))
    costs = logs.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in logs.columns else {}
    metadata = {
        "training": {
            "source": source, "fingerprint": fingerprint(logs), "rows": int(len(logs)),
            "query_instances": int(len(matrix.query_ids)), "distinct_queries": int(len(matrix.texts)),
            "feedback": "full" if matrix.full_information else "partial", "cv_folds": cv_folds, "cv_groups": cv_groups,
            "importance_weights": importance_weights, "question_key": question_key.to_dict(), "propensities": propensities,
            "seconds": round(time.perf_counter() - started, 2),
        },
        "metrics": {"cross_validation": cv_metrics(selection, matrix, new_prompt_widths), "model_selection": selection.table},
    }
    return Recommender(
        model=fitted, embedder_spec=embedder, embedder_id=live.model_id, embedder_revision=embedder_revision(live),
        layout=chosen_layout, prompts=[Candidate(t, p) for p, t in zip(matrix.prompt_ids, matrix.prompt_texts, strict=True)],
        prompt_vectors=matrix.prompt_vectors, prior=prior, margin=selection.margin, default_policy=selection.policy,
        costs=costs, metadata=metadata, train_text_hashes=question_key.hashes(matrix.texts), question_key=question_key,
        train_instance_hashes=text_hashes64(matrix.query_ids), cache_dir=cache_dir,
        embedder_bundle_files=bundle_files_of(live),
    )


def cv_metrics(selection, matrix: LogMatrix, new_prompt_widths: dict | None) -> dict[str, Any]:
    """Cross-validated selection values and reward-model quality of the chosen model."""
    fit = selection.fit
    label = fit.spec.label
    logged = matrix.logged
    report = {
        "model": label,
        "policies": {"argmax": float(selection.values[f"{label} argmax"].mean()),
                     "conservative": float(selection.values[f"{label} conservative"].mean())},
        "best_single_prompt": float(selection.values["prior"].mean()),
        "oracle": float(np.nanmax(matrix.rewards, axis=1).mean()) if matrix.full_information else None,
        "random": float(np.nanmean(matrix.rewards, axis=1).mean()) if matrix.full_information else None,
    }
    return {
        "selection": report,
        "reward_model": classification_metrics(matrix.rewards[logged], fit.scores[logged]),
        "margin_values": {str(k): v for k, v in selection.margin_values.items()},
        **({"new_prompt_tau_brier": {str(k): v for k, v in new_prompt_widths.items()}} if new_prompt_widths else {}),
    }
