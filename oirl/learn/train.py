"""Training: logs in, a fitted :class:`~oirl.recommender.recommender.Recommender` out.

:func:`fit_bundle` is the one training algorithm; an engine (:mod:`oirl.learn.engine`:
in memory, or Dask) does the reading, embedding and fitting where the data lives. The
steps: embed the logs (:mod:`oirl.embed`) and pivot them into a
:class:`~oirl.data.matrix.LogMatrix`, estimate the logging policy of a partial log
without propensities (:mod:`oirl.learn.logging_policy`), let cross-validation choose the
reward model and the policy (:mod:`oirl.learn.selection` over :mod:`oirl.learn.crossfit`),
and fit the chosen model on every training row. The trainer reads the logs it is given
(:func:`read_training_logs`: paths are read and validated here, once; frames are taken as
the canonical frames :func:`oirl.data.logs.read_logs` returns)::

    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import load_bundle, save_bundle

    rec = train_recommender("logs/mawps.parquet", split_column="split")   # read, validated once, its train rows
    save_bundle(rec, "models/mawps")
    rec = load_bundle("models/mawps")
    [r] = rec.recommend(["Tom has 3 apples ..."])          # the bundle's default policy
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.combine import combine_logs
from oirl.data.logs import read_logs, training_rows
from oirl.data.matrix import LogMatrix
from oirl.errors import OirlError
from oirl.learn.candidates import ModelSpec
from oirl.learn.engine import Engine, InMemoryEngine, TrainOptions
from oirl.learn.logging_policy import describe
from oirl.learn.selection import select_model
from oirl.recommender.recommender import Candidate, Recommender
from oirl.reward.metrics import classification_metrics


def fit_bundle(logs: Any, engine: Engine, options: TrainOptions, *, incumbent: Recommender | None = None) -> Recommender:
    """Train a recommender: the one training algorithm, whatever the ``engine``.

    ``logs`` is what the engine reads (a canonical frame for :class:`InMemoryEngine`, a
    path of Parquet files for Dask). Steps: the candidates (``options.model``: ``auto``
    cross-validates the grid of :data:`oirl.learn.candidates.AUTO_CANDIDATES` and the prior
    alone; a name forces that backend); the logs prepared (embedded and pivoted); on
    partial feedback the propensities (logged, else the estimated logging policy); the
    reward model and policy chosen by cross-validation (:func:`select_model`); the chosen
    model fitted on every row; the bundle assembled.

    With an ``incumbent`` (the deployed bundle) its default policy is an option valued
    like the others and the baseline that a new choice must clear; when none does,
    :class:`~oirl.learn.selection.IncumbentKept` is raised (the deployment stays as it is).
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    candidates = options.candidates(engine.trainable)
    tick = time.perf_counter()
    prepared = engine.prepare(logs, options)
    timings["prepare"] = time.perf_counter() - tick
    matrix, propensities = engine.with_propensities(prepared.matrix, options)
    if propensities is not None:
        warnings.warn(f"{options.source}: {describe(propensities)}", stacklevel=2)
    if options.importance_weights:
        matrix = matrix.importance_weighted()
    tick = time.perf_counter()
    folds = engine.folds(replace(prepared, matrix=matrix), options)
    selection = select_model(matrix, candidates, cv_groups=options.cv_groups, folds=folds, fitter=engine.cross_fit,
                             progress=options.progress, incumbent_picks=None if incumbent is None else incumbent_picks(incumbent, matrix),
                             incumbent_recipe=None if incumbent is None else incumbent_recipe(incumbent, matrix))
    timings["cross_validation"] = time.perf_counter() - tick
    for label, why in selection.left_out.items():
        warnings.warn(f"{options.source}: {label} left out of model selection, it cannot be fitted on this log ({why})", stacklevel=2)
    tick = time.perf_counter()
    fitted = engine.fit(selection.spec, matrix)
    new_prompt_widths = engine.tune_new_prompt_width(fitted, matrix, folds)
    timings["fit"] = time.perf_counter() - tick
    training = {
        "source": options.source, "fingerprint": prepared.fingerprint, "rows": prepared.rows,
        "query_instances": int(len(matrix.query_ids)), "distinct_queries": int(len(np.unique(matrix.questions))),
        "feedback": "full" if matrix.full_information else "partial", "cv_folds": options.cv_folds, "cv_groups": options.cv_groups,
        "importance_weights": options.importance_weights, "question_key": prepared.question_key.to_dict(), "propensities": propensities,
        "seconds": round(time.perf_counter() - started, 2),
    }
    metrics = {"cross_validation": cv_metrics(selection, matrix, new_prompt_widths), "model_selection": selection.table,
               "left_out": selection.left_out,
               "engine": {"name": type(engine).__name__, "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
                          "candidates": [c.label for c in candidates], **prepared.notes}}
    return Recommender(
        model=fitted, embedder_spec=prepared.embedder["spec"], embedder_id=prepared.embedder["model_id"],
        embedder_revision=prepared.embedder["revision"], layout=selection.spec.layout_for(),
        prompts=[Candidate(t, p) for p, t in zip(matrix.prompt_ids, matrix.prompt_texts, strict=True)],
        prompt_vectors=matrix.prompt_vectors, prior=dict(zip(matrix.prompt_ids, matrix.prompt_means().tolist(), strict=True)),
        margin=selection.margin, default_policy=selection.policy, costs=prepared.costs,
        metadata={"training": training, "metrics": metrics}, train_text_hashes=prepared.text_hashes,
        train_instance_hashes=prepared.instance_hashes, question_key=prepared.question_key, cache_dir=options.cache_dir,
        embedder_bundle_files=prepared.embedder["bundle_files"],
        arms=trained_arms(prepared.arm_models, None if incumbent is None else incumbent_arms(incumbent, matrix)),
    )


def trained_arms(log_models: dict[str, str], incumbent: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Each arm's settings: the incumbent's (a deployment's explicit model and generation
    parameters win), else the model the log names for that prompt id (which model earned
    its outcomes: CRUXEval's (model, style) arms, an eval tool's provider)."""
    arms = {p: dict(a) for p, a in (incumbent or {}).items()}
    for prompt_id, model in log_models.items():
        arms.setdefault(prompt_id, {}).setdefault("model", model)
    return arms


def incumbent_arms(incumbent: Recommender, matrix: LogMatrix) -> dict[str, dict[str, Any]]:
    """The incumbent's arm settings (model, generation parameters) for the prompts trained on
    that it also serves with the same text: the log does not say them, the deployment does."""
    by_id = {p.prompt_id: p.prompt for p in incumbent.prompts}
    return {p: incumbent.arms[p] for p, text in zip(matrix.prompt_ids, matrix.prompt_texts, strict=True)
            if p in incumbent.arms and by_id.get(p) == text}


#: The columns every canonical frame has (ids are filled in from the texts when a file lacks them).
CANONICAL_REQUIRED = ("query_id", "query", "prompt_id", "prompt", "reward")

#: One log (a file, a directory or glob of Parquet files, or a canonical frame) or several.
Logs = str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame]


def read_training_logs(logs: Logs, *, split_column: str | None = None, train_split: str = "train") -> tuple[pd.DataFrame, str]:
    """The training rows of ``logs`` as one canonical frame, and the name of the logs.

    A path is read and validated here, once (:func:`~oirl.data.logs.read_logs`); a frame is
    taken as canonical (what ``read_logs`` returns: it is not parsed again) once it has the
    columns one needs. With ``split_column`` each log keeps its rows whose column equals
    ``train_split`` (a log without the column is all training data); without it every row
    is trained on, as a frame always was. Several logs are combined
    (:func:`~oirl.data.combine.combine_logs`)."""
    items = [logs] if isinstance(logs, (str, Path, pd.DataFrame)) else list(logs)
    if not items:
        raise OirlError("no training logs given")
    frames, sources = [], []
    for number, item in enumerate(items, start=1):
        if isinstance(item, pd.DataFrame):
            source = "<logs>" if len(items) == 1 else f"<logs {number}>"
            missing = [c for c in CANONICAL_REQUIRED if c not in item.columns]
            if missing:  # a frame not from read_logs: say what to do, not a KeyError deep in the pivot
                raise OirlError(f"{source}: missing column(s) {', '.join(missing)}; pass the log's path, or a frame from "
                                "oirl.data.logs.read_logs (or oirl.data.schema.validate_logs)")
            frame = item
        elif isinstance(item, (str, Path)):
            source, frame = str(item), read_logs(item)
        else:
            raise OirlError(f"training logs: expected paths or frames, got {type(item).__name__}")
        frames.append(frame if split_column is None else training_rows(frame, split_column, train_split, source=source))
        sources.append(source)
    return combine_logs(frames, sources), " + ".join(sources)


def train_recommender(logs: Logs, *, incumbent: Recommender | None = None, split_column: str | None = None, train_split: str = "train",
                      **options: Any) -> Recommender:
    """Train in this process on ``logs``: paths (read and validated once, here) or canonical
    frames, one or several (:func:`read_training_logs`, which ``split_column`` and
    ``train_split`` are passed to); ``options`` are :class:`TrainOptions`' fields
    (``model``, ``embedder``, ``cv_groups``, ...; ``source`` defaults to the logs' names)."""
    rows, source = read_training_logs(logs, split_column=split_column, train_split=train_split)
    options.setdefault("source", source)
    return fit_bundle(rows, InMemoryEngine(), TrainOptions(**options), incumbent=incumbent)


def incumbent_picks(incumbent: Recommender, matrix: LogMatrix) -> np.ndarray:
    """(n,) the column the deployed bundle's default policy picks for each instance of
    ``matrix``, among the logged prompts it holds (the ones it could have served)."""
    if matrix.query_vectors.shape[1] == 0:
        raise OirlError("--incumbent needs the query texts in this process (it is not available with --dask)")
    held = {p.prompt: p.prompt_id for p in incumbent.prompts}
    order = {p.prompt: i for i, p in enumerate(incumbent.prompts)}  # its own order: exact ties go to its first prompt
    columns = sorted((j for j, text in enumerate(matrix.prompt_texts) if text in held), key=lambda j: order[matrix.prompt_texts[j]])
    if not columns:
        raise OirlError("--incumbent: none of its prompts occurs in the training logs, so its policy cannot be valued on them")
    candidates = [Candidate(matrix.prompt_texts[j], held[matrix.prompt_texts[j]]) for j in columns]
    scores = incumbent.score(list(matrix.texts), candidates)[matrix.text_index]
    return np.asarray(columns)[incumbent.policy(None, candidates).choose(scores)]


def incumbent_recipe(incumbent: Recommender, matrix: LogMatrix) -> tuple[ModelSpec, str, float] | None:
    """The deployed bundle's reward-model configuration, default policy and margin, when it
    was trained on some of ``matrix``'s instances (say, the decisions of earlier rounds,
    exported again): its picks there rest on outcomes it has seen, so selection values
    its recipe out of fold, like every other option. None when it has no model, was not
    trained on these instances, or uses a policy that needs more than a margin."""
    if incumbent.model is None or incumbent.default_policy not in ("argmax", "conservative"):
        return None
    if not incumbent.trained_on_instances(matrix.query_ids).any():
        return None
    params = tuple(sorted((k, v) for k, v in incumbent.model.get_params().items()))
    return ModelSpec(incumbent.model.name, params, incumbent.layout), incumbent.default_policy, incumbent.margin


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
    chosen = next(r for r in selection.table if r["chosen"])
    report["chosen"] = {
        "option": chosen["option"], "cv_value": chosen["value"],
        "cv_value_is": "optimistic: measured on the folds that chose it among every option",
        "held_out_fold_value": selection.held_out.get("value"), "held_out_fold_se": selection.held_out.get("se"),
        "held_out_fold_choices": selection.held_out.get("fold_choices"),
        "held_out_fold_value_is": "each fold valued by the option the rule chose on the other folds",
    }
    return {
        "selection": report,
        "reward_model": classification_metrics(matrix.rewards[logged], fit.scores[logged]),
        "margin_values": {str(k): v for k, v in selection.margin_values.items()},
        **({"new_prompt_tau_brier": {str(k): v for k, v in new_prompt_widths.items()}} if new_prompt_widths else {}),
    }
