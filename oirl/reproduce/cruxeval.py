"""CRUXEval input prediction: choose the (model, prompting style) arm per function.

5-fold cross-validation grouped by sample (no function on both sides). In each fold
the neighbour reward model (one estimate per arm from the most similar training
functions, shrunk toward the arm's mean) is tuned by inner cross-validation on the
training folds only, then scores the held-out functions. Rewards are fractions
(n_correct / n_generations), so every success rate here is an *expected* reward.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oirl.evaluate import cost_sweep, plot_reward_cost, reward_cost_area
from oirl.importers.cruxeval import build_logs
from oirl.reproduce.prompt_oirl import Fold, fit_neighbours, inner_cv
from oirl.reproduce.report import paired_cluster_bootstrap, write_table
from oirl.select import choose, choose_margin

N_FOLDS = 5
COST_WEIGHTS = (0.0, 0.0003, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.3, 1.0)
TARGETS = {"best single arm": 0.755, "oracle": 0.947, "oirl (25% of the gap)": 0.803}


@dataclass
class ArmData:
    """Samples x arms: the shape the shared neighbour machinery reads."""

    query_ids: np.ndarray  # (n,) sample ids
    texts: np.ndarray  # (n,) code + target output
    rewards: np.ndarray  # (n, n_arms) expected reward
    arms: list[str]  # arm ids, "model:style"
    cost: np.ndarray  # (n_arms,) cost per call
    text_vectors: dict[str, np.ndarray]
    prompt_vectors: np.ndarray  # (n_arms, d) embeddings of the arm descriptions

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.text_vectors[t] for t in self.texts[rows]])


def load_arms(data_dir: Path, embedder, temperature: float = 0.2, progress: bool = False) -> ArmData:
    logs = build_logs(data_dir, temperature)
    pivot = logs.pivot(index="query_id", columns="prompt_id", values="reward")
    pivot = pivot.loc[sorted(pivot.index, key=lambda s: int(s.rsplit("_", 1)[1]))]
    arms = list(pivot.columns)
    texts = logs.drop_duplicates("query_id").set_index("query_id").loc[pivot.index, "query"].to_numpy(dtype=str)
    descriptions = logs.drop_duplicates("prompt_id").set_index("prompt_id").loc[arms, "prompt"].tolist()
    vectors = embedder.embed(list(texts) + descriptions, progress=progress)
    cost = logs.groupby("prompt_id")["cost"].first().loc[arms].to_numpy(dtype=float)
    return ArmData(pivot.index.to_numpy(dtype=str), texts, pivot.to_numpy(dtype=float), arms, cost,
                   dict(zip(texts, vectors[: len(texts)], strict=True)), vectors[len(texts) :])


def grouped_folds(data: ArmData) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer (train, test) row folds, grouped by sample: no function on both sides."""
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(n_splits=N_FOLDS).split(np.arange(len(data.texts)), groups=data.query_ids))


def cross_validated_scores(data: ArmData, folds) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Out-of-fold scores (n, n_arms) and per-row conservative picks; the chosen parameters per fold."""
    columns = list(range(len(data.arms)))
    scores = np.empty_like(data.rewards)
    conservative = np.empty(len(data.texts), dtype=int)
    params_per_fold = []
    for train, test in folds:
        params, oof, _ = inner_cv(data, Fold(train, test, "text"), columns)
        model = fit_neighbours(data, train, columns, params)
        scores[test] = model.predict_grid(data.vectors(test), model.prompts_)
        prior = data.rewards[train].mean(axis=0)
        margin, _ = choose_margin(oof, data.rewards[train], prior)
        conservative[test] = choose("conservative", scores[test], prior=prior, margin=margin)
        params_per_fold.append({**params, "conservative_margin": None if np.isinf(margin) else margin})
    return scores, conservative, params_per_fold


def argmax_per_fold(data: ArmData, folds, scores: np.ndarray, columns: list[int]) -> np.ndarray:
    """Argmax over ``columns`` per row, ties broken by the arms' means on that row's training folds."""
    picks = np.empty(len(scores), dtype=int)
    for train, test in folds:
        picks[test] = choose("argmax", scores[np.ix_(test, columns)], prior=data.rewards[np.ix_(train, columns)].mean(axis=0))
    return picks


def reproduce_cruxeval(data_dir: Path, out_dir: Path, *, embedder, n_boot: int = 2000, progress: bool = True) -> dict:
    """Write the CRUXEval tables, CSVs and plots under ``out_dir``; returns a summary."""
    started = time.perf_counter()
    data = load_arms(data_dir, embedder, progress=progress)
    embed_seconds = time.perf_counter() - started
    folds = grouped_folds(data)
    scores, conservative_picks, params = cross_validated_scores(data, folds)
    rows = np.arange(len(data.texts))
    R = data.rewards
    all_arms = list(range(len(data.arms)))
    best_train = np.empty(len(rows), dtype=int)  # best single arm, chosen on each row's training folds
    for train, test in folds:
        best_train[test] = R[train].mean(axis=0).argmax()

    def value(picks: np.ndarray) -> np.ndarray:
        return R[rows, picks]

    argmax_picks = argmax_per_fold(data, folds, scores, all_arms)
    per_row = {
        "random": R.mean(axis=1),
        "best single arm (train folds)": value(best_train),
        "best single arm (hindsight)": R[:, R.mean(axis=0).argmax()],
        "oirl argmax": value(argmax_picks),
        "oirl conservative": value(conservative_picks),
        "oracle": R.max(axis=1),
    }
    best, oracle = per_row["best single arm (train folds)"].mean(), per_row["oracle"].mean()
    overall = pd.DataFrame([{"method": m, "expected reward": v.mean(),
                             "gap recovered": (v.mean() - best) / (oracle - best)} for m, v in per_row.items()])
    sections = [write_table(overall, out_dir, "cruxeval_overall",
                            f"CRUXEval input prediction, {len(data.arms)} arms, 5-fold CV grouped by sample (expected reward)",
                            f"Neighbour parameters per fold (inner CV on training folds): {params}")]
    intervals = []
    for policy in ("oirl argmax", "oirl conservative"):
        mean, low, high = paired_cluster_bootstrap(per_row[policy] - per_row["best single arm (train folds)"], data.query_ids, n_boot=n_boot)
        intervals.append({"policy": policy, "gain over best single arm": mean, "95% low": low, "95% high": high})
    sections.append(write_table(pd.DataFrame(intervals), out_dir, "cruxeval_bootstrap", "Gain over the best single arm (bootstrap over samples, 95%)"))

    # Direct vs step-by-step within each model that has both.
    style_rows = []
    models = sorted({a.split(":")[0] for a in data.arms if a.endswith(":cot")})
    for model in models:
        pair = [data.arms.index(f"{model}:direct"), data.arms.index(f"{model}:cot")]
        sub_rewards = R[:, pair]
        better_style = np.empty(len(rows))
        for train, test in folds:
            better_style[test] = sub_rewards[test, R[np.ix_(train, pair)].mean(axis=0).argmax()]
        ours = sub_rewards[rows, argmax_per_fold(data, folds, scores, pair)]
        mean, low, high = paired_cluster_bootstrap(ours - better_style, data.query_ids, n_boot=n_boot)
        style_rows.append({"model": model, "direct": sub_rewards[:, 0].mean(), "step-by-step": sub_rewards[:, 1].mean(),
                           "better style (train folds)": better_style.mean(), "oirl per query": ours.mean(),
                           "oracle of two": sub_rewards.max(axis=1).mean(), "gain": mean, "95% low": low, "95% high": high})
    styles = pd.DataFrame(style_rows)
    average = {"model": "average of the 8", **{c: styles[c].mean() for c in styles.columns if c != "model"}}
    styles = pd.concat([styles, pd.DataFrame([average])], ignore_index=True)
    sections.append(write_table(styles, out_dir, "cruxeval_styles", "Direct vs step-by-step per query, within each model that has both"))

    # The cost-aware policy's reward-cost curve, with the single arms as points.
    # Per fold (the tie-breaking prior is the fold's), then weighted by fold size.
    per_fold = [cost_sweep(scores[test], R[test], data.cost, np.array(COST_WEIGHTS), R[train].mean(axis=0)).assign(n=len(test))
                for train, test in folds]
    curve = pd.concat(per_fold)
    curve[["reward", "cost"]] = curve[["reward", "cost"]].mul(curve["n"], axis=0)
    curve = curve.groupby("cost_weight", as_index=False)[["reward", "cost"]].sum()
    curve[["reward", "cost"]] /= len(rows)
    arms = pd.DataFrame({"prompt_id": data.arms, "reward": R.mean(axis=0), "cost": data.cost})
    span = (float(data.cost.min()), float(data.cost.max()))
    areas = pd.DataFrame([{"curve": "oirl cost-aware (lambda sweep)", "area": reward_cost_area(curve, span)},
                          {"curve": "best single arm per budget", "area": reward_cost_area(arms, span)}])
    sections.append(write_table(curve, out_dir, "cruxeval_cost_sweep", "Cost-aware policy: expected reward and mean cost per query vs lambda",
                                "Costs: milli-dollars per call from the default table in oirl/importers/cruxeval.py."))
    sections.append(write_table(areas, out_dir, "cruxeval_cost_area", "Normalised area under the reward-cost curve (higher is better)"))
    plot_reward_cost({"oirl cost-aware": curve}, arms, out_dir / "cruxeval_reward_cost.png", "CRUXEval input prediction: reward vs cost")
    total = time.perf_counter() - started
    timings = {"load and embed": round(embed_seconds, 1), "total": round(total, 1)}
    (out_dir / "cruxeval_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    (out_dir / "README.md").write_text("# CRUXEval input prediction\n\nWritten by `oirl reproduce --benchmark cruxeval-input`.\n\n" + "\n".join(sections))
    return {"overall": overall, "styles": styles, "areas": areas, "timings": timings}
