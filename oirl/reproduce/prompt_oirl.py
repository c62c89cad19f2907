"""Reproduce the Prompt-OIRL tables (LLaMA-2-7B-chat; GSM8K, SVAMP, MAWPS) from the logs.

Two protocols:

* ``paper`` — the paper's splits. On SVAMP and MAWPS every test question also occurs
  among the training questions (as other samples), so this protocol rewards
  memorisation; the inner cross-validation that chooses hyperparameters mirrors it
  by grouping training rows by query *instance*.
* ``disjoint`` — no question text on both sides. GSM8K keeps its paper split (already
  disjoint); SVAMP and MAWPS pool all rows and use 5-fold cross-validation grouped by
  question text; inner cross-validation groups by text too.

The reward model is :class:`oirl.reward.NeighbourReward` with ``prompt_tau = 0``: a
prompt's scores depend on that prompt's rows only, so **one fit per fold serves all
63 subsets** of the six training prompts exactly (tested in ``tests/test_reward.py``).
Its hyperparameters and the conservative margin are chosen by inner
cross-validation on training rows only, never on test rows.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oirl.errors import OirlError
from oirl.evaluate import classification_metrics
from oirl.importers.prompt_oirl import DATASETS, HELDOUT_PROMPTS, LAYOUTS, PROMPTS, TRAINING_PROMPTS, build_logs
from oirl.reproduce.report import paired_cluster_bootstrap, plot_success_vs_k, write_table
from oirl.reward import NeighbourReward
from oirl.select import choose, choose_margin

PROTOCOLS = ("paper", "disjoint")
ALL_PROMPTS = TRAINING_PROMPTS + HELDOUT_PROMPTS
# Published reference points (authors' per-query results, from the issue), never computed here.
AUTHORS_MEAN_BY_K = {
    "gsm8k": {2: 0.233, 3: 0.246, 4: 0.245, 5: 0.253, 6: 0.258},
    "svamp": {2: 0.560, 3: 0.611, 4: 0.637, 5: 0.654, 6: 0.672},
    "mawps": {2: 0.563, 3: 0.621, 4: 0.651, 5: 0.671, 6: 0.686},
}
AUTHORS_HELDOUT_FALLBACK = {"gsm8k": 0.205, "svamp": 0.660, "mawps": 0.677}
TARGETS_K6 = {"gsm8k": 0.270, "svamp": 0.700, "mawps": 0.720}
# Inner-CV grid of the neighbour model: neighbours, kernel width, shrinkage.
KNN_GRID = tuple({"k": k, "query_tau": t, "alpha": a} for k in (5, 20, 50) for t in (0.02, 0.05, 0.1) for a in (0.5, 2.0))
INNER_FOLDS = 3
OUTER_FOLDS = 5
METHODS = ("random", "best prompt (train)", "best prompt (test, hindsight)", "self-critique (argmax)",
           "self-critique (random ties)", "oirl argmax", "oirl conservative", "oracle")


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """One dataset's logs as matrices: rows are query instances, columns the 16 prompts."""

    name: str
    query_ids: np.ndarray  # (n,)
    texts: np.ndarray  # (n,) question text of each instance
    split: np.ndarray  # (n,) "train" / "test" of the paper
    rewards: np.ndarray  # (n, 16) NaN where not logged (held-out prompts on train rows)
    text_vectors: dict[str, np.ndarray]
    prompt_vectors: np.ndarray  # (16, d)
    confidence: np.ndarray  # (n, 16) LLM self-critique confidence, NaN outside paper test rows
    critic: np.ndarray  # (n, 16) LLM self-critique verdict 0/1, NaN outside paper test rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.text_vectors[t] for t in self.texts[rows]])


def load_dataset(data_dir: Path, name: str, embedder, progress: bool = False) -> Dataset:
    """Import the logs of ``name`` and attach embeddings and the self-critique arrays."""
    logs = pd.concat([build_logs(data_dir, name, TRAINING_PROMPTS), build_logs(data_dir, name, HELDOUT_PROMPTS)])
    pivot = logs.pivot(index="query_id", columns="prompt_id", values="reward")[ALL_PROMPTS]
    order = np.argsort([int(q.rsplit("-", 1)[1]) for q in pivot.index])
    pivot = pivot.iloc[order]
    meta = logs.drop_duplicates("query_id").set_index("query_id").loc[pivot.index]
    texts = meta["query"].to_numpy(dtype=str)
    distinct = list(dict.fromkeys(texts))
    vectors = embedder.embed(distinct + [PROMPTS[p] for p in ALL_PROMPTS], progress=progress)
    layout = LAYOUTS[name]
    confidence = np.full((len(pivot), 16), np.nan)
    critic = np.full((len(pivot), 16), np.nan)
    for i in range(16):
        base = data_dir / "prompt-oirl-llama2" / "critics" / f"Processed_llama_{name}_prompt_{i}"
        conf = np.load(f"{base}_confidence.npy", allow_pickle=False).astype(float)
        verdict = np.load(f"{base}_critic.npy", allow_pickle=False).astype(float)
        if len(conf) != layout.n_test or len(verdict) != layout.n_test:
            raise OirlError(f"{base}_*.npy: {len(conf)} values, expected one per test query ({layout.n_test})")
        confidence[layout.n_train :, i] = conf
        critic[layout.n_train :, i] = verdict
    return Dataset(
        name=name, query_ids=pivot.index.to_numpy(dtype=str), texts=texts, split=meta["split"].to_numpy(dtype=str),
        rewards=pivot.to_numpy(dtype=float), text_vectors=dict(zip(distinct, vectors[: len(distinct)], strict=True)),
        prompt_vectors=vectors[len(distinct) :], confidence=confidence, critic=critic,
    )


@dataclass
class Fold:
    train: np.ndarray  # row indices
    test: np.ndarray
    inner_groups: str  # "instance" or "text": how inner cross-validation groups training rows


def protocol_folds(data: Dataset, protocol: str) -> list[Fold]:
    """The outer train/test folds of a protocol (see module docstring)."""
    rows = np.arange(len(data.texts))
    paper = Fold(rows[data.split == "train"], rows[data.split == "test"], "instance")
    if protocol == "paper":
        return [paper]
    if protocol != "disjoint":
        raise OirlError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if data.name == "gsm8k":  # already question-disjoint
        return [Fold(paper.train, paper.test, "text")]
    from sklearn.model_selection import GroupKFold

    folds = GroupKFold(n_splits=OUTER_FOLDS).split(rows, groups=data.texts)
    return [Fold(train, test, "text") for train, test in folds]


def heldout_fold(data: Dataset, protocol: str) -> Fold:
    """Train on the six training prompts, test on the paper's test rows (all 16 prompts).

    ``disjoint`` drops from training every row whose question occurs among the test rows.
    """
    rows = np.arange(len(data.texts))
    train, test = rows[data.split == "train"], rows[data.split == "test"]
    if protocol == "disjoint":
        train = train[~np.isin(data.texts[train], data.texts[test])]
        return Fold(train, test, "text")
    return Fold(train, test, "instance")


# --------------------------------------------------------------------------- the reward model


def fit_neighbours(data: Dataset, rows: np.ndarray, prompt_columns: list[int], params: dict) -> NeighbourReward:
    """A neighbour model on ``rows``, aggregating repeated question texts."""
    texts, index = np.unique(data.texts[rows], return_inverse=True)
    rewards = data.rewards[np.ix_(rows, prompt_columns)]
    sums = np.zeros((len(texts), len(prompt_columns)))
    counts = np.zeros_like(sums)
    np.add.at(sums, index, np.nan_to_num(rewards))
    np.add.at(counts, index, ~np.isnan(rewards))
    vectors = np.stack([data.text_vectors[t] for t in texts])
    return NeighbourReward(**params).fit_grid(vectors, data.prompt_vectors[prompt_columns], sums, counts)


def inner_cv(data: Dataset, fold: Fold, columns: list[int] | None = None) -> tuple[dict, np.ndarray, dict[str, float]]:
    """Choose the neighbour parameters by inner CV on the fold's training rows.

    ``data`` needs ``texts``, ``query_ids``, ``rewards``, ``text_vectors`` and
    ``prompt_vectors``; ``columns`` are the prompts trained on (default: the six
    training prompts). Returns the chosen parameters, the out-of-fold scores of the
    training rows under them (n_train x n_prompts, used for the conservative margin)
    and the CV value of each setting (argmax success rate).
    """
    from sklearn.model_selection import GroupKFold

    columns = list(range(6)) if columns is None else columns
    groups = data.query_ids[fold.train] if fold.inner_groups == "instance" else data.texts[fold.train]
    oof = {i: np.empty((len(fold.train), len(columns))) for i in range(len(KNN_GRID))}
    k_max = max(p["k"] for p in KNN_GRID)
    for inner_train, inner_test in GroupKFold(n_splits=INNER_FOLDS).split(fold.train, groups=groups):
        model = fit_neighbours(data, fold.train[inner_train], columns, KNN_GRID[0])
        test_vectors = data.vectors(fold.train[inner_test])
        neighbours = model.neighbours(test_vectors, k_max)
        for i, params in enumerate(KNN_GRID):
            model.set_params(**params)
            oof[i][inner_test] = model.predict_grid(test_vectors, model.prompts_, neighbours)
    rewards = np.nan_to_num(data.rewards[fold.train][:, columns])
    prior = np.nanmean(data.rewards[fold.train][:, columns], axis=0)
    values = {json.dumps(p): float(rewards[np.arange(len(rewards)), choose("argmax", oof[i], prior=prior)].mean())
              for i, p in enumerate(KNN_GRID)}
    best = max(range(len(KNN_GRID)), key=lambda i: (values[json.dumps(KNN_GRID[i])], -i))
    return KNN_GRID[best], oof[best], values


# --------------------------------------------------------------------------- selection vs K


@dataclass
class FoldResult:
    """Everything a fold contributes: test rows, their rewards and scores, OOF training scores."""

    fold: Fold
    params: dict
    test_scores: np.ndarray  # (n_test, 6)
    train_oof: np.ndarray  # (n_train, 6)
    seconds: float
    cv_values: dict = field(default_factory=dict)


def run_folds(data: Dataset, protocol: str) -> list[FoldResult]:
    results = []
    for fold in protocol_folds(data, protocol):
        started = time.perf_counter()
        params, oof, values = inner_cv(data, fold)
        model = fit_neighbours(data, fold.train, list(range(6)), params)
        scores = model.predict_grid(data.vectors(fold.test), model.prompts_)
        results.append(FoldResult(fold, params, scores, oof, time.perf_counter() - started, values))
    return results


def subset_rewards(data: Dataset, results: list[FoldResult], subset: tuple[int, ...], with_critique: bool) -> dict[str, np.ndarray]:
    """Per test instance (all folds concatenated), the reward each method earns with ``subset``."""
    cols = list(subset)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for r in results:
        test_rewards = data.rewards[np.ix_(r.fold.test, cols)]
        train_rewards = data.rewards[np.ix_(r.fold.train, cols)]
        prior = np.nanmean(train_rewards, axis=0)
        rows = np.arange(len(test_rewards))
        out["random"].append(test_rewards.mean(axis=1))
        out["best prompt (train)"].append(test_rewards[:, int(np.argmax(prior))])
        out["best prompt (test, hindsight)"].append(test_rewards[:, int(np.argmax(test_rewards.mean(axis=0)))])
        out["oracle"].append(test_rewards.max(axis=1))
        scores = r.test_scores[:, cols]
        out["oirl argmax"].append(test_rewards[rows, choose("argmax", scores, prior=prior)])
        margin, _ = choose_margin(r.train_oof[:, cols], np.nan_to_num(train_rewards), prior)
        out["oirl conservative"].append(test_rewards[rows, choose("conservative", scores, prior=prior, margin=margin)])
        if with_critique:
            confidence = data.confidence[np.ix_(r.fold.test, cols)]
            out["self-critique (argmax)"].append(test_rewards[rows, np.argmax(confidence, axis=1)])  # first of ties, as the authors
            tied = confidence >= confidence.max(axis=1, keepdims=True)
            out["self-critique (random ties)"].append((test_rewards * tied).sum(axis=1) / tied.sum(axis=1))
    return {m: np.concatenate(v) if v else np.full(sum(len(r.fold.test) for r in results), np.nan) for m, v in out.items()}


def selection_vs_k(data: Dataset, results: list[FoldResult], protocol: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Mean ± std over the C(6, K) subsets per K, for every method; plus K=6 per-row rewards."""
    with_critique = protocol == "paper" or data.name == "gsm8k"  # critique exists for paper test rows only
    rows, full = [], {}
    for k in range(1, 7):
        per_subset = [subset_rewards(data, results, s, with_critique) for s in itertools.combinations(range(6), k)]
        row = {"K": k, "subsets": len(per_subset)}
        for m in METHODS:
            values = np.array([float(np.mean(p[m])) for p in per_subset])
            row[f"{m} mean"], row[f"{m} std"] = values.mean(), values.std()
        rows.append(row)
        if k == 6:
            full = per_subset[0]
    return pd.DataFrame(rows), full


# --------------------------------------------------------------------------- held-out prompts


def heldout_table(data: Dataset, protocol: str) -> tuple[dict, dict]:
    """Selection among held-out prompts; reward-model quality on held-out queries and prompts."""
    fold = heldout_fold(data, protocol)
    params, oof, _ = inner_cv(data, fold)
    model = fit_neighbours(data, fold.train, list(range(6)), params)
    scores = model.predict_grid(data.vectors(fold.test), data.prompt_vectors)  # (n_test, 16)
    rewards = data.rewards[fold.test]
    train_prior = np.nanmean(data.rewards[fold.train][:, :6], axis=0)
    prior16 = np.concatenate([train_prior, np.full(10, np.nan)])
    in_bundle = np.arange(16) < 6
    margin, _ = choose_margin(oof, np.nan_to_num(data.rewards[fold.train][:, :6]), train_prior)
    rows = np.arange(len(rewards))
    held = list(range(6, 16))
    confidence = data.confidence[fold.test]
    result = {
        "training questions": int(len(np.unique(data.texts[fold.train]))),
        "best training prompt (train)": float(rewards[:, int(np.argmax(train_prior))].mean()),
        "best of 16 (test, hindsight)": float(rewards.mean(axis=0).max()),
        "random of 16": float(rewards.mean()),
        "oirl argmax, 10 held-out": float(rewards[rows, 6 + choose("argmax", scores[:, held])].mean()),
        "oirl argmax, all 16": float(rewards[rows, choose("argmax", scores, prior=prior16)].mean()),
        "oirl conservative, all 16": float(rewards[rows, choose("conservative", scores, prior=prior16, margin=margin)].mean()),
        "oirl fallback (<0.5), all 16": float(rewards[rows, choose("fallback", scores, in_bundle=in_bundle, prior=prior16, threshold=0.5)].mean()),
        "self-critique, all 16": float(rewards[rows, np.argmax(confidence, axis=1)].mean()),
        "Prompt-OIRL (authors), fallback": AUTHORS_HELDOUT_FALLBACK[data.name],
        "oracle of 16": float(rewards.max(axis=1).mean()),
    }
    quality = {}
    for label, cols in (("held-out queries (6 training prompts)", list(range(6))), ("held-out prompts (10 gpt4 prompts)", held)):
        r, s = rewards[:, cols].ravel(), scores[:, cols].ravel()
        quality[f"oirl: {label}"] = classification_metrics(r, s)
        verdict, conf = data.critic[fold.test][:, cols].ravel(), confidence[:, cols].ravel()
        critique = classification_metrics(r, np.clip(conf, 0, 1))
        # Accuracy, precision, recall and F1 of the critique come from its 0/1 verdict.
        critique.update({k: v for k, v in classification_metrics(r, verdict).items() if k in ("accuracy", "precision", "recall", "f1")})
        quality[f"self-critique: {label}"] = critique
    return result, quality


# --------------------------------------------------------------------------- the run


def leakage(data: Dataset) -> dict:
    train_texts = set(data.texts[data.split == "train"])
    test = data.texts[data.split == "test"]
    return {
        "dataset": data.name,
        "test queries": int(len(test)),
        "distinct test questions": int(len(set(test))),
        "test questions also in train (paper)": int(len(set(test) & train_texts)),
        "test queries whose question is in train (paper)": int(sum(t in train_texts for t in test)),
        "shared questions (disjoint)": 0,
    }


def authors_config_timing(data: Dataset, n_estimators: int = 2000) -> dict:
    """The authors' reward model (XGBoost, depth 10, eta 0.001, 2,000 rounds, concat
    features) against oirl's neighbour model, on the paper split with all six prompts."""
    from oirl.features import grid_features
    from oirl.reward import XGBoostReward

    fold = protocol_folds(data, "paper")[0]
    train_rewards = data.rewards[np.ix_(fold.train, range(6))]
    test_rewards = data.rewards[np.ix_(fold.test, range(6))]
    prior = np.nanmean(train_rewards, axis=0)
    X = grid_features(data.vectors(fold.train), data.prompt_vectors[:6])
    started = time.perf_counter()
    xgb = XGBoostReward(n_estimators=n_estimators, learning_rate=0.001, max_depth=10, colsample=1.0, min_child_weight=1.0)
    xgb.fit(X, train_rewards.ravel())
    xgb_seconds = time.perf_counter() - started
    test_X = grid_features(data.vectors(fold.test), data.prompt_vectors[:6])
    xgb_scores = xgb.predict_reward(test_X).reshape(len(fold.test), 6)
    started = time.perf_counter()
    [ours] = run_folds(data, "paper")
    ours_seconds = time.perf_counter() - started
    rows = np.arange(len(fold.test))
    return {
        "dataset": data.name,
        "authors' XGBoost seconds": round(xgb_seconds, 1),
        "authors' XGBoost success (argmax)": float(test_rewards[rows, choose("argmax", xgb_scores, prior=prior)].mean()),
        "oirl neighbours seconds (inner CV + fit + score)": round(ours_seconds, 1),
        "oirl neighbours success (argmax)": float(test_rewards[rows, choose("argmax", ours.test_scores, prior=prior)].mean()),
        "time ratio": round(xgb_seconds / max(ours_seconds, 1e-9), 1),
    }


def reproduce(
    data_dir: Path, out_dir: Path, *, datasets: tuple[str, ...] = DATASETS, protocols: tuple[str, ...] = PROTOCOLS,
    embedder=None, authors_config: bool = True, n_boot: int = 2000, progress: bool = True,
) -> dict:
    """Run everything and write the tables, CSVs and plots under ``out_dir``; returns a summary."""
    from tqdm import tqdm

    from oirl.embed import CachedEmbedder, get_embedder

    started = time.perf_counter()
    embedder = embedder or CachedEmbedder(get_embedder("minilm"))
    timings: dict[str, float] = {}
    sections: list[str] = []
    summary_rows, interval_rows, heldout_rows, quality_rows, leak_rows, prompt_rows = [], [], [], [], [], []
    loaded = {}
    for name in tqdm(datasets, desc="loading and embedding", disable=not progress):
        loaded[name] = load_dataset(data_dir, name, embedder, progress=progress)
    timings["load and embed"] = time.perf_counter() - started

    for name, data in loaded.items():
        leak_rows.append(leakage(data))
        train, test = data.split == "train", data.split == "test"
        for j, alias in enumerate(ALL_PROMPTS):
            prompt_rows.append({"dataset": name, "prompt": alias, "kind": "training" if j < 6 else "held-out",
                                "train accuracy": float(np.nanmean(data.rewards[train, j])) if j < 6 else np.nan,
                                "test accuracy": float(np.nanmean(data.rewards[test, j]))})

    for protocol in protocols:
        for name, data in tqdm(loaded.items(), desc=f"{protocol} protocol", disable=not progress):
            t0 = time.perf_counter()
            results = run_folds(data, protocol)
            table, k6 = selection_vs_k(data, results, protocol)
            timings[f"{protocol}/{name} selection vs K"] = time.perf_counter() - t0
            table.insert(0, "dataset", name)
            write_table(_mean_std_columns(table), out_dir, f"selection_vs_k_{protocol}_{name}",
                        f"{name}, {protocol} protocol: test success rate vs K (mean ± std over subsets)",
                        f"Neighbour parameters per fold (inner CV): {[r.params for r in results]}")
            plot_success_vs_k(table, list(METHODS), out_dir / f"success_vs_k_{protocol}_{name}.png", f"{name} ({protocol} protocol)",
                              AUTHORS_MEAN_BY_K[name] if protocol == "paper" else None)
            k6_row = table.iloc[-1]
            summary_rows.append({"dataset": name, "protocol": protocol, **{m: k6_row[f"{m} mean"] for m in METHODS},
                                 "Prompt-OIRL (authors)": AUTHORS_MEAN_BY_K[name][6] if protocol == "paper" else np.nan,
                                 "target": TARGETS_K6[name] if protocol == "paper" else np.nan})
            all_test = np.concatenate([r.fold.test for r in results])
            for policy in ("oirl argmax", "oirl conservative"):
                mean, low, high = paired_cluster_bootstrap(k6[policy] - k6["best prompt (train)"], data.texts[all_test], n_boot=n_boot)
                interval_rows.append({"dataset": name, "protocol": protocol, "policy": policy, "gain over best prompt (train)": mean,
                                      "95% low": low, "95% high": high, "questions resampled": int(len(np.unique(data.texts[all_test])))})
            # The conservative policy against the best training prompt at every K.
            by_k = table[["K", "oirl conservative mean", "best prompt (train) mean", "oirl argmax mean"]]
            summary_rows[-1]["conservative >= best (train) at every K"] = bool((by_k["oirl conservative mean"] >= by_k["best prompt (train) mean"] - 1e-12).all())
            if protocol == "paper":
                beats = [table.loc[table["K"] == k, ["oirl argmax mean", "oirl conservative mean"]].to_numpy().max() > AUTHORS_MEAN_BY_K[name][k]
                         for k in range(2, 7)]
                summary_rows[-1]["beats authors at K=2..6"] = bool(all(beats))
            t0 = time.perf_counter()
            held, quality = heldout_table(data, protocol)
            timings[f"{protocol}/{name} held-out"] = time.perf_counter() - t0
            heldout_rows.append({"dataset": name, "protocol": protocol, **held})
            for label, metrics in quality.items():
                quality_rows.append({"dataset": name, "protocol": protocol, "model": label, **metrics})

    sections.append(write_table(pd.DataFrame(summary_rows), out_dir, "summary_k6", "Test success rate with the 6 training prompts (K = 6)"))
    sections.append(write_table(pd.DataFrame(interval_rows), out_dir, "bootstrap_k6",
                                "Gain over the best training prompt at K = 6, paired cluster bootstrap over questions (95%)"))
    sections.append(write_table(pd.DataFrame(heldout_rows), out_dir, "heldout_prompts", "Selection with the 10 held-out prompts (test rows)"))
    sections.append(write_table(pd.DataFrame(quality_rows), out_dir, "reward_model_quality", "Reward-model quality vs LLM self-critique"))
    sections.append(write_table(pd.DataFrame(prompt_rows), out_dir, "prompts", "Accuracy of each prompt (paper split)"))
    sections.append(write_table(pd.DataFrame(leak_rows), out_dir, "leakage", "Test questions that also occur in training"))
    if authors_config and "mawps" in loaded:
        t0 = time.perf_counter()
        timing = authors_config_timing(loaded["mawps"])
        timings["authors' XGBoost configuration"] = time.perf_counter() - t0
        sections.append(write_table(pd.DataFrame([timing]), out_dir, "authors_config", "The authors' reward-model configuration vs oirl (MAWPS, paper split, K = 6)"))
    per_query_ms = _oirl_ms_per_query(loaded, getattr(embedder, "embedder", embedder))
    cost = pd.DataFrame([
        {"method": "oirl (any policy)", "extra LLM calls to choose": 0, "LLM calls per query (K candidates)": "1", "wall time per query (ms)": per_query_ms},
        {"method": "LLM self-critique", "extra LLM calls to choose": "2K - 1", "LLM calls per query (K candidates)": "2K (an answer and a critique per candidate)", "wall time per query (ms)": np.nan},
    ])
    sections.append(write_table(cost, out_dir, "cost", "Cost of choosing a prompt"))
    timings["total"] = time.perf_counter() - started
    (out_dir / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2) + "\n")
    (out_dir / "README.md").write_text("# Prompt-OIRL reproduction\n\nWritten by `oirl reproduce`.\n\n" + "\n".join(sections))
    return {"timings": timings, "summary": summary_rows}


def _mean_std_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Fold "X mean" / "X std" column pairs into one "X" column of "mean ± std" strings."""
    out = table[["dataset", "K", "subsets"]].copy()
    for m in METHODS:
        mean, std = table[f"{m} mean"], table[f"{m} std"]
        out[m] = ["—" if np.isnan(a) else f"{a:.3f} ± {b:.3f}" for a, b in zip(mean, std, strict=True)]
    return out


def _oirl_ms_per_query(loaded: dict[str, Dataset], embedder) -> float:
    """Wall time to score one new query against 16 prompts: embedding (no cache) plus the model."""
    data = next(iter(loaded.values()))
    model = fit_neighbours(data, np.arange(len(data.texts))[data.split == "train"], list(range(6)), KNN_GRID[0])
    embedder.embed(["warm up"])
    queries = [f"{t} (variant)" for t in data.texts[data.split == "test"][:50]]  # distinct from anything cached
    started = time.perf_counter()
    for q in queries:
        model.predict_grid(embedder.embed([q]), data.prompt_vectors)
    return round((time.perf_counter() - started) / len(queries) * 1000, 1)
