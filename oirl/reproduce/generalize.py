"""Choices that generalize: which reward-model family moves the number on questions never
seen in training (the ablation behind the README's table).

For each log and split, one :func:`~oirl.learn.selection.select_model` over the whole
``--model auto`` grid (the code behind ``oirl train``: training rows only, folds by
question) gives every option's cross-validated gain over the prior (always the best
training prompt). For each family, its best option *by cross-validation* is then fitted
on every training row and valued on the held-out questions, with the 95% cluster-
bootstrap interval of its gain over the best training prompt; ``default`` is what the
selection rule ships (the prior unless an option clears it by three standard errors).
No test row is looked at before the choice is made.

Splits: SVAMP and MAWPS pool every row and hold out 20% of the question keys by a hash
(seed 0 is the README's split, other seeds hash ``"<seed>:<key>"``); GSM8K keeps its paper
split (already disjoint); CRUXEval input holds out 20% of the samples by a hash of the
sample id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import write_text_atomic
from oirl.data.matrix import LogMatrix, pivot_logs
from oirl.data.questions import QuestionKey
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.learn.candidates import AUTO_CANDIDATES, ModelSpec
from oirl.learn.crossfit import fit_on, make_folds
from oirl.learn.engine import InMemoryEngine, TrainOptions
from oirl.learn.selection import select_model
from oirl.ope.bootstrap import cluster_bootstrap_mean
from oirl.policy.policies import PolicyContext, make_policy
from oirl.reproduce.report import write_table

DATASETS = ("mawps", "svamp", "gsm8k", "cruxeval")
SEEDS = (0, 1, 2)


def splits(data_dir: Path, datasets: tuple[str, ...], seeds: tuple[int, ...], limit: int | None = None,
           ) -> Iterator[tuple[str, int, pd.DataFrame, pd.DataFrame]]:
    """(log, seed, training rows, test rows) of every log and split; ``limit`` keeps the
    first N training and N test query instances (toy-size runs)."""
    from oirl.reproduce.prompt_oirl import dataset_logs, protocol_split

    for name in datasets:
        if name == "cruxeval":
            from oirl.reproduce.cruxeval import split_logs

            logs = split_logs(data_dir)
            train, test = logs[logs["split"] == "train"], logs[logs["split"] == "test"]
            if limit is not None:
                train = train[train["query_id"].isin(pd.unique(train["query_id"])[:limit])]
                test = test[test["query_id"].isin(pd.unique(test["query_id"])[:limit])]
            yield name, 0, train.reset_index(drop=True), test.reset_index(drop=True)
            continue
        six, heldout = dataset_logs(data_dir, name)
        for seed in ((0,) if name == "gsm8k" else seeds):  # GSM8K: the paper's split is already disjoint
            split = protocol_split(name, six, heldout, "disjoint", seed=seed, limit=limit)
            yield name, seed, split.train, split.test


def test_values(spec: ModelSpec, policy: str, margin: float, matrix: LogMatrix, cached: CachedEmbedder,
                test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n,) test reward of ``spec``, fitted on every training row, under ``policy``, and (n,) that of the best training prompt."""
    pivot = pivot_logs(test, matrix.prompt_ids)
    texts = np.asarray(pivot.instance_texts)
    layout = spec.layout_for()
    model = fit_on(spec.make(), matrix, layout)
    scores = model.predict_grid(cached.embed(list(texts)), matrix.prompt_vectors, layout, texts=texts)
    prior = matrix.prompt_means()
    picks = make_policy(policy, PolicyContext.of(matrix.prompt_ids, prior=prior), margin=margin).choose(scores)
    return pivot.rewards[np.arange(len(picks)), picks], pivot.rewards[:, int(np.nanargmax(prior))]


def ablation(name: str, seed: int, train: pd.DataFrame, test: pd.DataFrame, *, cache_dir, embedder: str = "minilm",
             candidates: tuple[ModelSpec, ...] = AUTO_CANDIDATES, progress: bool = False) -> list[dict]:
    """One row per family (its best option by CV) and one for the shipped ``default``."""
    options = TrainOptions(embedder=embedder, cache_dir=cache_dir, progress=progress, source=f"{name} seed {seed}")
    matrix = InMemoryEngine().prepare(train, options).matrix
    selection = select_model(matrix, candidates, folds=make_folds(matrix, 3, "text"), progress=progress)
    cached = CachedEmbedder(get_embedder(embedder), cache_dir)
    clusters = QuestionKey(casefold=True).groups(pivot_logs(test, matrix.prompt_ids).instance_texts)
    by_label = {c.label: c for c in candidates}
    table = {row["option"]: row for row in selection.table}
    best: dict[str, dict] = {}
    for row in selection.table[1:]:  # each family's best option by its CV value
        if row["value"] > best.get(row["model"], {"value": -np.inf})["value"]:
            best[row["model"]] = row
    shipped = next(row["option"] for row in selection.table if row["chosen"])
    entries = [("default", shipped, selection.spec, selection.policy, selection.margin)]
    for family, row in best.items():
        label, policy = row["option"].rsplit(" ", 1)
        entries.append((family, row["option"], by_label[label], policy, np.inf if row["margin"] is None else row["margin"]))
    rows = []
    for family, option, spec, policy, margin in entries:
        values, prior = test_values(spec, policy, margin, matrix, cached, test)
        gain, low, high = cluster_bootstrap_mean(values - prior, clusters)
        cv = table[option]
        rows.append({"log": name, "split": seed, "family": family, "option (best by CV)": option,
                     "CV gain": cv["gain_over_baseline"], "CV SE": cv["se_vs_baseline"], "clears 3 SE": bool(cv["cleared_baseline"]),
                     "test value": float(values.mean()), "best prompt (test)": float(prior.mean()),
                     "test gain": gain, "gain low": low, "gain high": high})
    return rows


def plot_gains(frame: pd.DataFrame, path: Path) -> None:
    """Test gain over the best training prompt with its 95% interval, per family and split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oirl._plots import save_figure

    splits_ = list(dict.fromkeys(f"{r.log} {r.split}" for r in frame.itertuples()))
    families = list(dict.fromkeys(frame["family"]))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(families)
    for i, family in enumerate(families):
        part = frame[frame["family"] == family]
        x = [splits_.index(f"{r.log} {r.split}") + (i - len(families) / 2) * width for r in part.itertuples()]
        ax.errorbar(x, part["test gain"], yerr=[part["test gain"] - part["gain low"], part["gain high"] - part["test gain"]],
                    fmt="o", markersize=4, capsize=2, label=family)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(splits_)), splits_, rotation=20)
    ax.set_ylabel("test gain over the best training prompt")
    save_figure(fig, ax, path, "questions never trained on: each family's best option by CV (95% cluster bootstrap)", legend_fontsize=7)


def reproduce_generalize(data_dir: Path, out_dir: Path, *, datasets: tuple[str, ...] = DATASETS, seeds: tuple[int, ...] = SEEDS,
                         cache_dir=None, embedder: str = "minilm", limit: int | None = None, progress: bool = True) -> dict:
    """Write ``generalize.md``/``.csv``/``.json`` and ``generalize_gains.png`` under ``out_dir``; returns the rows."""
    from tqdm import tqdm

    started = time.perf_counter()
    rows, seconds = [], {}
    for name, seed, train, test in tqdm(list(splits(data_dir, datasets, seeds, limit)), desc="ablation", unit="split", disable=not progress):
        began = time.perf_counter()
        rows += ablation(name, seed, train, test, cache_dir=cache_dir, embedder=embedder)
        seconds[f"{name} {seed}"] = round(time.perf_counter() - began, 1)
    frame = pd.DataFrame(rows)
    note = ("Questions never trained on. `family`: each family's best option by cross-validation on training questions "
            "(3 folds by question), fitted on every training row; `default`: what `oirl train` ships. Gains over the best "
            "training prompt with 95% cluster-bootstrap intervals over questions. `split`: hash seed of the held-out 20% "
            "(0 is the README's; GSM8K: the paper's split; CRUXEval: 20% of samples by id).")
    write_table(frame, out_dir, "generalize", "Choices that generalize: the ablation", note)
    plot_gains(frame, out_dir / "generalize_gains.png")
    result = {"rows": rows, "seconds": seconds, "total_seconds": round(time.perf_counter() - started, 1)}
    write_text_atomic(out_dir / "generalize.json", json.dumps(result, indent=2) + "\n")
    return result

