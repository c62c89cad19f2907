"""Proof by simulation: off-policy evaluation and learning from partial feedback.

The full-information logs (SVAMP and MAWPS on the paper split, CRUXEval 80/20 by
sample) hold every prompt's outcome for every query, so they give the truth. A bundle
is trained on the full training rows with every default but ``cv_groups``, which follows
the split (:data:`CV_GROUPS`); then, many times over, a
*logging policy* (uniform, or epsilon-greedy around the best training prompt) picks one
prompt per test query instance, and the estimators of :mod:`oirl.ope.estimators` value the
bundle's argmax and conservative policies from those rounds alone (the bundle's model
as the reward model: it never saw a test row). Reported per estimator: bias, RMSE and
the coverage of its 95% cluster-bootstrap interval, against the full-information truth;
and RMSE against the size of the log.

Learning: a uniform partial log of the *training* rows (one prompt per instance, with
its propensity) trains a bundle the same way (doubly robust cross-validation);
its policies are valued on the full test matrix against the bundle learned from the full
training log (share of the full-information gain kept) and against the prompt that is
best on that partial log's training rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import write_text_atomic
from oirl._plots import save_figure
from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs
from oirl.evaluation.scored import score_logs
from oirl.learn.train import train_recommender
from oirl.ope import estimators as ope
from oirl.policy.explore import draw
from oirl.recommender.recommender import Recommender
from oirl.reproduce.cruxeval import split_logs
from oirl.reproduce.report import write_table

DATASETS = ("svamp", "mawps", "cruxeval")
#: What "new" means in cross-validation, as in the reproduction: on the paper's SVAMP and
#: MAWPS split the test rows are new samples of training questions (instance); CRUXEval
#: holds out whole samples (text). Grouping by text there would validate a policy for
#: unseen questions and deploy it on seen ones, where it memorises single noisy samples.
CV_GROUPS = {"svamp": "instance", "mawps": "instance", "cruxeval": "text"}
LOGGERS = ("uniform", "epsilon-greedy(0.3)")
POLICIES = ("argmax", "conservative")
SIZES = (250, 500, 1000, None)  # None: every test instance


def dataset_split(data_dir: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, test rows), full information."""
    if name == "cruxeval":

        logs = split_logs(data_dir)
    else:

        logs = build_logs(data_dir, name, TRAINING_PROMPTS)
    train, test = logs[logs["split"] == "train"], logs[logs["split"] == "test"]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def logging_policy(kind: str, n: int, k: int, best: int) -> np.ndarray:
    """(n, k) the logger's probability of each prompt for each instance."""
    if kind == "uniform":
        return np.full((n, k), 1.0 / k)
    epsilon = float(kind.split("(")[1].rstrip(")"))
    probabilities = np.full((n, k), epsilon / k)
    probabilities[:, best] += 1.0 - epsilon
    return probabilities


def sample_rounds(rewards: np.ndarray, logger: np.ndarray, rng: np.random.Generator) -> ope.Rounds:
    """One logged prompt per instance, drawn from ``logger`` (n, k) as a deployed service draws."""
    action, pscore = draw(logger, rng)
    rows = np.arange(len(rewards))
    return ope.Rounds(rows, action, rewards[rows, action], pscore)


def estimator_study(rec: Recommender, test: pd.DataFrame, *, repetitions: int, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """One row per (logger, size, repetition, policy, estimator): estimate, interval, truth."""
    scored = score_logs(rec, test)
    rewards, scores = scored.rewards, scored.scores
    n, k = rewards.shape
    best = int(np.nanargmax(scored.context.prior))
    picks = {policy: scored.policy_picks(policy) for policy in POLICIES}
    rng = np.random.default_rng(seed)
    rows = []
    for logger_kind in LOGGERS:
        logger = logging_policy(logger_kind, n, k, best)
        for size in [s for s in SIZES if s is None or s < n]:
            for rep in range(repetitions if size is None else max(20, repetitions // 5)):
                keep = np.arange(n) if size is None else np.sort(rng.choice(n, size, replace=False))
                rounds = sample_rounds(rewards[keep], logger[keep], rng)
                dists = {p: ope.one_hot(picks[p][keep], k) for p in POLICIES}
                estimates = ope.evaluate_policies(dists, rounds, scores[keep], clusters=scored.questions[keep], n_boot=n_boot, seed=int(rng.integers(2**31)))
                for policy in POLICIES:
                    truth = float(rewards[keep, picks[policy][keep]].mean())
                    for estimator, result in estimates[policy].items():
                        low, high = result["ci"]
                        rows.append({"logger": logger_kind, "size": len(keep), "repetition": rep, "policy": policy,
                                     "estimator": estimator, "estimate": result["value"], "low": low, "high": high, "truth": truth})
    return pd.DataFrame(rows)


def summarise(study: pd.DataFrame) -> pd.DataFrame:
    """Bias, RMSE and interval coverage per (logger, size, policy, estimator)."""
    study = study.assign(error=study["estimate"] - study["truth"],
                         covered=(study["low"] <= study["truth"]) & (study["truth"] <= study["high"]))
    grouped = study.groupby(["logger", "size", "policy", "estimator"], sort=False)
    return grouped.agg(repetitions=("error", "size"), truth=("truth", "mean"), bias=("error", "mean"),
                       rmse=("error", lambda e: float(np.sqrt(np.mean(e**2)))), coverage=("covered", "mean")).reset_index()


def learning_study(train: pd.DataFrame, test: pd.DataFrame, full: Recommender, *, repetitions: int, cache_dir, embedder: str,
                   cv_groups: str, seed: int = 0) -> pd.DataFrame:
    """Bundles learned from uniform partial logs of the training rows, valued on the full test matrix."""
    rng = np.random.default_rng(seed)
    prompts = list(pd.unique(train["prompt_id"]))
    full_scored = score_logs(full, test)
    full_value = float(full_scored.values(full.default_policy).mean())
    best_full = full_scored.prompt_ids.index(full.default_prompt_id)
    best_full_value = float(full_scored.rewards[:, best_full].mean())
    rows = []
    for rep in range(repetitions):
        instances = pd.unique(train["query_id"])
        chosen = dict(zip(instances, rng.integers(0, len(prompts), len(instances)), strict=True))
        mask = np.array([prompts[chosen[q]] == p for q, p in zip(train["query_id"], train["prompt_id"], strict=True)])
        partial = train[mask].assign(propensity=1.0 / len(prompts)).reset_index(drop=True)
        started = time.perf_counter()
        rec = train_recommender(partial, embedder=embedder, cache_dir=cache_dir, cv_groups=cv_groups, source=f"partial log {rep}")
        seconds = time.perf_counter() - started
        scored = score_logs(rec, test)
        best_partial = scored.prompt_ids.index(rec.default_prompt_id)
        row = {"repetition": rep, "partial rows": len(partial), "model": rec.model.name, "default policy": rec.default_policy,
               "margin": rec.margin, "train seconds": round(seconds, 1),
               "best prompt on the partial log": rec.default_prompt_id,
               "its value": float(scored.rewards[:, best_partial].mean())}
        for policy in ("argmax", "conservative", rec.default_policy):
            row[f"{policy} value"] = float(scored.values(policy).mean())
        row["default value"] = row[f"{rec.default_policy} value"]
        row["full-log default value"] = full_value
        row["full-log best prompt value"] = best_full_value
        gain = full_value - best_full_value
        row["share of full-information gain kept"] = (row["default value"] - best_full_value) / gain if gain > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def plot_rmse(summary: pd.DataFrame, path: Path, title: str) -> None:
    """RMSE of each estimator vs log size (argmax policy, uniform logger)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = summary[(summary["policy"] == "argmax") & (summary["logger"] == "uniform")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for estimator, group in part.groupby("estimator", sort=False):
        group = group.sort_values("size")
        ax.plot(group["size"], group["rmse"], marker="o", markersize=3, label=estimator)
    ax.set_xscale("log")
    ax.set_xlabel("logged query instances (one prompt each)")
    ax.set_ylabel("RMSE of the value of oirl's argmax")
    save_figure(fig, ax, path, title)


def reproduce_ope(data_dir: Path, out_dir: Path, *, datasets: tuple[str, ...] = DATASETS, repetitions: int = 100,
                  learn_repetitions: int = 10, learn_datasets: tuple[str, ...] = ("mawps",), n_boot: int = 200, cache_dir=None,
                  embedder: str = "minilm", limit: int | None = None, progress: bool = True) -> dict:
    """Run the simulation and write tables, CSVs and plots under ``out_dir``."""
    from tqdm import tqdm

    started = time.perf_counter()
    sections, summaries, learning, timings = [], [], [], {}
    for name in tqdm(datasets, desc="ope simulation", disable=not progress):
        t0 = time.perf_counter()
        train, test = dataset_split(data_dir, name)
        if limit is not None:
            train = train[train["query_id"].isin(pd.unique(train["query_id"])[:limit])]
            test = test[test["query_id"].isin(pd.unique(test["query_id"])[:limit])]
        full = train_recommender(train, embedder=embedder, cache_dir=cache_dir, cv_groups=CV_GROUPS[name], source=f"{name} train")
        summary = summarise(estimator_study(full, test, repetitions=repetitions, n_boot=n_boot)).assign(dataset=name)
        summaries.append(summary)
        plot_rmse(summary, out_dir / f"ope_rmse_vs_size_{name}.png", f"{name}: off-policy estimates of oirl's argmax (uniform logger)")
        if learn_repetitions and name in learn_datasets:
            learning.append(learning_study(train, test, full, repetitions=learn_repetitions, cache_dir=cache_dir,
                                           embedder=embedder, cv_groups=CV_GROUPS[name]).assign(dataset=name))
        timings[name] = round(time.perf_counter() - t0, 1)
    summary = pd.concat(summaries, ignore_index=True)
    headline = summary[summary["size"] == summary.groupby("dataset")["size"].transform("max")]
    sections.append(write_table(headline[["dataset", "logger", "policy", "estimator", "repetitions", "truth", "bias", "rmse", "coverage"]],
                                out_dir, "ope_estimators",
                                f"Off-policy estimates of oirl's policies on simulated partial logs of the test rows ({repetitions} repetitions)",
                                "Truth: the full-information value. Intervals: 95% cluster bootstrap over question texts."))
    sections.append(write_table(summary, out_dir, "ope_estimators_by_size", "The same by log size (subsampled test instances)"))
    if learning:
        frame = pd.concat(learning, ignore_index=True)
        sections.append(write_table(frame, out_dir, "ope_learning", "Bundles learned from uniform partial logs of the training rows, valued on the full test matrix"))
        worst = frame.assign(margin_over_best=frame["conservative value"] - frame["its value"])
        check = worst.groupby("dataset").agg(repetitions=("repetition", "size"), **{
            "min (conservative - best prompt on the partial log)": ("margin_over_best", "min"),
            "mean share of the full-information gain kept": ("share of full-information gain kept", "mean")}).reset_index()
        sections.append(write_table(check, out_dir, "ope_learning_summary", "Learning from partial logs: summary"))
    timings["total"] = round(time.perf_counter() - started, 1)
    write_text_atomic(out_dir / "ope_timings.json", json.dumps(timings, indent=2) + "\n")
    write_text_atomic(out_dir / "README.md", "# Partial feedback: off-policy evaluation and learning, by simulation\n\n"
                      "Written by `oirl reproduce --benchmark ope`.\n\n" + "\n".join(sections))
    return {"summary": summary, "learning": pd.concat(learning, ignore_index=True) if learning else None, "timings": timings}
