"""Reproduce the Prompt-OIRL tables (LLaMA-2-7B-chat; GSM8K, SVAMP, MAWPS) on the shipped path.

Every number comes from :meth:`Recommender.train` and :func:`oirl.evaluation.report.score_logs`,
the code behind ``oirl train`` and ``oirl evaluate``, with their defaults; the only
setting a protocol changes is ``cv_groups`` (what "new" means in cross-validation):

* ``paper`` — the paper's splits, ``cv_groups="instance"``. On SVAMP and MAWPS every
  test question also occurs among the training questions (as other samples), so this
  protocol rewards memorisation; grouping cross-validation by query instance mirrors it.
  Same as ``oirl train LOG --cv-groups instance`` then ``oirl evaluate MODEL LOG``.
* ``disjoint`` — no question text on both sides, every default (``cv_groups="text"``).
  GSM8K keeps its paper split (already disjoint); SVAMP and MAWPS pool all rows and hold
  out 20% of the question texts (chosen by a hash of the text) as test.

The K = 6 columns and the held-out-prompt table are exactly what the bundle's
evaluation reports. For K < 6 the same bundle scores only the subset's prompts, with
the subset's training prior and the bundle's margin and default policy: for the
neighbour model (a prompt's scores depend on its own rows only) that equals a fit on
the subset's rows; for other models it reuses the model chosen for the fold.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import write_text_atomic
from oirl.data.importers.prompt_oirl import DATASETS, HELDOUT_PROMPTS, LAYOUTS, PROMPTS, TRAINING_PROMPTS, build_logs
from oirl.data.matrix import LogMatrix
from oirl.data.questions import QuestionKey
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.errors import OirlError
from oirl.evaluation.report import evaluate_recommender
from oirl.evaluation.scored import ScoredLogs, score_logs
from oirl.learn.candidates import spec
from oirl.learn.crossfit import fit_on
from oirl.learn.train import train_recommender
from oirl.ope.bootstrap import cluster_bootstrap_mean
from oirl.recommender.recommender import Recommender
from oirl.reproduce.report import plot_success_vs_k, write_table
from oirl.reward.metrics import classification_metrics

PROTOCOLS = ("paper", "disjoint")
CV_GROUPS = {"paper": "instance", "disjoint": "text"}
DISJOINT_TEST_FRACTION = 0.2
# Published reference points (authors' per-query results, from the issue), never computed here.
AUTHORS_MEAN_BY_K = {
    "gsm8k": {2: 0.233, 3: 0.246, 4: 0.245, 5: 0.253, 6: 0.258},
    "svamp": {2: 0.560, 3: 0.611, 4: 0.637, 5: 0.654, 6: 0.672},
    "mawps": {2: 0.563, 3: 0.621, 4: 0.651, 5: 0.671, 6: 0.686},
}
AUTHORS_HELDOUT_FALLBACK = {"gsm8k": 0.205, "svamp": 0.660, "mawps": 0.677}
TARGETS_K6 = {"gsm8k": 0.270, "svamp": 0.700, "mawps": 0.720}
METHODS = ("random", "best prompt (train)", "best prompt (test, hindsight)", "self-critique (argmax)", "self-critique (random ties)",
           "oirl (default policy)", "oirl argmax", "oirl conservative", "oracle")


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """One dataset under one protocol: training rows (6 prompts), test rows (6 prompts),
    and the test rows with all 16 prompts for the held-out-prompt table."""

    dataset: str
    protocol: str
    train: pd.DataFrame
    test: pd.DataFrame
    test16: pd.DataFrame | None

    @property
    def cv_groups(self) -> str:
        return CV_GROUPS[self.protocol]


def dataset_logs(data_dir: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The imported logs of ``name``: six training prompts, and the ten held-out prompts."""
    return build_logs(data_dir, name, TRAINING_PROMPTS), build_logs(data_dir, name, HELDOUT_PROMPTS)


def in_test_fraction(texts: pd.Series, fraction: float = DISJOINT_TEST_FRACTION, seed: int = 0) -> pd.Series:
    """A fixed, order-free choice of held-out questions: by a hash of the question key
    (:mod:`oirl.data.questions`), so that variants of one question fall on one side.
    ``seed`` 0 is the README's split; another seed hashes ``"<seed>:<key>"`` instead."""
    key = QuestionKey(casefold=True)
    if seed == 0:
        hashes = key.hashes(texts.tolist())
    else:
        hashes = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{key(t)}".encode()).digest()[:8], "little") for t in texts], dtype="<u8")
    return pd.Series(hashes / 2**64 < fraction, index=texts.index)


def protocol_split(name: str, six: pd.DataFrame, heldout: pd.DataFrame, protocol: str, *, limit: int | None = None,
                   seed: int = 0) -> Split:
    """The train/test rows of a protocol (see the module docstring). ``limit`` keeps the
    first N training and N test query instances (for toy-size runs); ``seed`` picks
    another question-disjoint split of SVAMP and MAWPS (:func:`in_test_fraction`)."""
    if protocol not in PROTOCOLS:
        raise OirlError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if protocol == "paper" or name == "gsm8k":
        train, test = six[six["split"] == "train"], six[six["split"] == "test"]
    else:
        held = in_test_fraction(six["query"], seed=seed)
        train, test = six[~held], six[held]
    if limit is not None:
        train = train[train["query_id"].isin(pd.unique(train["query_id"])[:limit])]
        test = test[test["query_id"].isin(pd.unique(test["query_id"])[:limit])]
    test16 = None
    if protocol == "paper" or name == "gsm8k":
        test16 = pd.concat([test, heldout[heldout["query_id"].isin(test["query_id"])]], ignore_index=True)
    return Split(name, protocol, train.reset_index(drop=True), test.reset_index(drop=True), test16)


def disjoint_heldout_split(name: str, six: pd.DataFrame, heldout: pd.DataFrame, *, limit: int | None = None) -> Split:
    """The held-out prompts ran on the paper's test rows only: for a question-disjoint
    held-out table, train on the paper's training rows minus every question among them."""
    paper = protocol_split(name, six, heldout, "paper", limit=limit)
    key = QuestionKey(casefold=True)
    test_questions = set(key.keys(paper.test["query"]))
    train = paper.train[[q not in test_questions for q in key.keys(paper.train["query"])]]
    return Split(name, "disjoint", train.reset_index(drop=True), paper.test, paper.test16)


# --------------------------------------------------------------------------- one split, the shipped path


@dataclass
class SplitResult:
    split: Split
    rec: Recommender
    scored: ScoredLogs  # the test rows, six training prompts
    report: dict  # what `oirl evaluate` reports on them
    seconds: float


def run_split(split: Split, *, cache_dir, embedder: str = "minilm", progress: bool = False) -> SplitResult:
    """``oirl train`` on the split's training rows, ``oirl evaluate`` on its test rows."""
    started = time.perf_counter()
    rec = train_recommender(split.train, embedder=embedder, cv_groups=split.cv_groups, cache_dir=cache_dir, progress=progress,
                            source=f"{split.dataset} ({split.protocol})")
    seconds = time.perf_counter() - started
    scored = score_logs(rec, split.test)
    report = evaluate_recommender(rec, split.test, source=f"{split.dataset} test")
    return SplitResult(split, rec, scored, report, seconds)


def critique(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The LLM self-critique baseline on the paper's test rows: confidence and 0/1 verdict,
    each (n_test, 16) in the order of :data:`PROMPTS`."""
    layout = LAYOUTS[name]
    confidence, verdict = np.empty((layout.n_test, 16)), np.empty((layout.n_test, 16))
    for i in range(16):
        base = data_dir / "prompt-oirl-llama2" / "critics" / f"Processed_llama_{name}_prompt_{i}"
        conf = np.load(f"{base}_confidence.npy", allow_pickle=False).astype(float)
        crit = np.load(f"{base}_critic.npy", allow_pickle=False).astype(float)
        if len(conf) != layout.n_test or len(crit) != layout.n_test:
            raise OirlError(f"{base}_*.npy: {len(conf)} values, expected one per test query ({layout.n_test})")
        confidence[:, i], verdict[:, i] = conf, crit
    return confidence, verdict


def critique_rows(name: str, query_ids: list[str], columns: list[str], arrays: np.ndarray) -> np.ndarray:
    """Rows of a critique array for paper test query ids ``{ds}-{row}``, in ``columns`` order."""
    rows = np.array([int(q.rsplit("-", 1)[1]) - LAYOUTS[name].n_train for q in query_ids])
    order = [list(PROMPTS).index(c) for c in columns]
    return arrays[np.ix_(rows, order)]


def critique_picks(confidence: np.ndarray, columns: list[str]) -> np.ndarray:
    """The self-critique's pick per row: the most confident prompt, ties to the first in
    the paper's prompt order (as the authors' argmax over their arrays)."""
    paper_order = np.argsort([list(PROMPTS).index(c) for c in columns], kind="stable")
    return paper_order[np.argmax(confidence[:, paper_order], axis=1)]


def subset_values(result: SplitResult, columns: list[int], confidence: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per test instance, the reward each method earns choosing among ``columns``."""
    sub = result.scored.subset(columns)
    rewards = sub.rewards
    prior = sub.context.prior
    rows = np.arange(len(rewards))
    out = {
        "random": rewards.mean(axis=1),
        "best prompt (train)": rewards[:, int(np.argmax(prior))],
        "best prompt (test, hindsight)": rewards[:, int(np.argmax(rewards.mean(axis=0)))],
        "oirl (default policy)": sub.values(result.rec.default_policy),
        "oirl argmax": sub.values("argmax"),
        "oirl conservative": sub.values("conservative"),
        "oracle": rewards.max(axis=1),
    }
    if confidence is not None:
        conf = confidence[:, columns]
        out["self-critique (argmax)"] = rewards[rows, critique_picks(conf, sub.prompt_ids)]
        tied = conf >= conf.max(axis=1, keepdims=True)
        out["self-critique (random ties)"] = (rewards * tied).sum(axis=1) / tied.sum(axis=1)
    return out


def selection_vs_k(result: SplitResult, confidence: np.ndarray | None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Mean ± std over the C(6, K) subsets of training prompts per K; and the K = 6 rows."""
    rows, k6 = [], {}
    for k in range(1, 7):
        per_subset = [subset_values(result, list(s), confidence) for s in itertools.combinations(range(6), k)]
        row = {"K": k, "subsets": len(per_subset)}
        for m in METHODS:
            values = np.array([float(np.mean(p[m])) if m in p else np.nan for p in per_subset])
            row[f"{m} mean"], row[f"{m} std"] = values.mean(), values.std()
        rows.append(row)
        k6 = per_subset[0]
    return pd.DataFrame(rows), k6


def heldout_row(result: SplitResult, confidence: np.ndarray | None) -> tuple[dict, dict]:
    """Selection among all 16 prompts (6 trained, 10 never seen) on the paper's test rows."""
    rec, test16 = result.rec, result.split.test16
    report = evaluate_recommender(rec, test16, source=f"{result.split.dataset} test, 16 prompts")
    scored = score_logs(rec, test16)
    rewards = scored.rewards
    held = [j for j, p in enumerate(scored.prompt_ids) if p in HELDOUT_PROMPTS]
    trained = [j for j, p in enumerate(scored.prompt_ids) if p in TRAINING_PROMPTS]
    row = {
        "training questions": int(result.split.train["query"].nunique()),
        "best training prompt (train)": report["best_single_prompt"]["success_rate"],
        "best of 16 (test, hindsight)": float(rewards.mean(axis=0).max()),
        "random of 16": report["random"],
        "oirl default policy, all 16": report["policies"][rec.default_policy],
        "oirl argmax, all 16": report["policies"]["argmax"],
        "oirl conservative, all 16": report["policies"]["conservative"],
        "oirl fallback (<0.5), all 16": report["policies"]["fallback"],
        "oirl argmax, 10 held-out": float(rewards[np.arange(len(rewards)), np.array(held)[scored.scores[:, held].argmax(axis=1)]].mean()),
        "Prompt-OIRL (authors), fallback": AUTHORS_HELDOUT_FALLBACK[result.split.dataset],
        "oracle of 16": report["oracle"],
    }
    quality = {}
    for label, cols in (("held-out queries (6 training prompts)", trained), ("held-out prompts (10 gpt4 prompts)", held)):
        r, s = rewards[:, cols].ravel(), scored.scores[:, cols].ravel()
        quality[f"oirl: {label}"] = classification_metrics(r, s)
        if confidence is not None:
            conf = critique_rows(result.split.dataset, scored.query_ids, [scored.prompt_ids[c] for c in cols], confidence[0]).ravel()
            verdict = critique_rows(result.split.dataset, scored.query_ids, [scored.prompt_ids[c] for c in cols], confidence[1]).ravel()
            metrics = classification_metrics(r, np.clip(conf, 0, 1))
            # Accuracy, precision, recall and F1 of the critique come from its 0/1 verdict.
            metrics.update({k: v for k, v in classification_metrics(r, verdict).items() if k in ("accuracy", "precision", "recall", "f1")})
            quality[f"self-critique: {label}"] = metrics
    if confidence is not None:
        conf16 = critique_rows(result.split.dataset, scored.query_ids, scored.prompt_ids, confidence[0])
        row["self-critique, all 16"] = float(rewards[np.arange(len(rewards)), critique_picks(conf16, scored.prompt_ids)].mean())
    return row, quality


def leakage(split: Split) -> dict:
    train_texts = set(split.train["query"])
    test = split.test.drop_duplicates("query_id")["query"]
    return {"dataset": split.dataset, "protocol": split.protocol, "test queries": int(len(test)),
            "distinct test questions": int(test.nunique()), "test questions also in train": int(len(set(test) & train_texts)),
            "test queries whose question is in train": int(test.isin(train_texts).sum())}


# --------------------------------------------------------------------------- the run


def reproduce(
    data_dir: Path, out_dir: Path, *, datasets: tuple[str, ...] = DATASETS, protocols: tuple[str, ...] = PROTOCOLS,
    cache_dir=None, embedder: str = "minilm", authors_config: bool = True, n_boot: int = 2000, limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Run everything and write the tables, CSVs and plots under ``out_dir``; returns a summary."""
    from tqdm import tqdm

    started = time.perf_counter()
    timings: dict[str, float] = {}
    summary, intervals, heldout_rows, quality_rows, leak_rows, prompt_rows, choices = [], [], [], [], [], [], []
    for name in datasets:
        six, heldout = dataset_logs(data_dir, name)
        confidence = critique(data_dir, name)
        for alias, group in six.groupby("prompt_id", sort=False):
            prompt_rows.append({"dataset": name, "prompt": alias, "kind": "training",
                                "train accuracy": group.loc[group["split"] == "train", "reward"].mean(),
                                "test accuracy": group.loc[group["split"] == "test", "reward"].mean()})
        for alias, group in heldout.groupby("prompt_id", sort=False):
            prompt_rows.append({"dataset": name, "prompt": alias, "kind": "held-out", "train accuracy": np.nan, "test accuracy": group["reward"].mean()})
        for protocol in tqdm(protocols, desc=f"{name}", disable=not progress):
            split = protocol_split(name, six, heldout, protocol, limit=limit)
            t0 = time.perf_counter()
            result = run_split(split, cache_dir=cache_dir, embedder=embedder, progress=False)
            on_paper_rows = split.test16 is not None
            table, k6 = selection_vs_k(result, critique_rows(name, result.scored.query_ids, result.scored.prompt_ids, confidence[0]) if on_paper_rows else None)
            timings[f"{protocol}/{name} train + evaluate"] = time.perf_counter() - t0
            _check_same_as_evaluate(k6, result)
            table.insert(0, "dataset", name)
            write_table(_mean_std_columns(table), out_dir, f"selection_vs_k_{protocol}_{name}",
                        f"{name}, {protocol} protocol (--cv-groups {split.cv_groups}): test success rate vs K (mean ± std over subsets)",
                        f"Chosen by cross-validation: {result.rec.model.name} {result.rec.model.get_params()}, default policy "
                        f"{result.rec.default_policy}, margin {result.rec.margin}.")
            plot_success_vs_k(table, list(METHODS), out_dir / f"success_vs_k_{protocol}_{name}.png", f"{name} ({protocol} protocol)",
                              AUTHORS_MEAN_BY_K[name] if protocol == "paper" else None)
            k6_row = table.iloc[-1]
            summary.append({"dataset": name, "protocol": protocol, "cv groups": split.cv_groups,
                            **{m: k6_row[f"{m} mean"] for m in METHODS},
                            "Prompt-OIRL (authors)": AUTHORS_MEAN_BY_K[name][6] if protocol == "paper" else np.nan,
                            "target": TARGETS_K6[name] if protocol == "paper" else np.nan})
            choices.append({"dataset": name, "protocol": protocol, "cv groups": split.cv_groups, "model": result.rec.model.name,
                            "params": json.dumps(result.rec.model.get_params()),
                            "layout": result.rec.layout, "default policy": result.rec.default_policy,
                            "margin": result.rec.margin, "train seconds": round(result.seconds, 1)})
            by_k = table[["oirl (default policy) mean", "best prompt (train) mean"]]
            summary[-1]["default >= best (train) - .005 at every K"] = bool((by_k.iloc[:, 0] >= by_k.iloc[:, 1] - 0.005).all())
            for policy in ("oirl (default policy)", "oirl argmax", "oirl conservative"):
                mean, low, high = cluster_bootstrap_mean(k6[policy] - k6["best prompt (train)"], result.scored.questions, n_boot=n_boot)
                intervals.append({"dataset": name, "protocol": protocol, "policy": policy, "gain over best prompt (train)": mean,
                                  "95% low": low, "95% high": high, "questions resampled": int(len(np.unique(result.scored.questions)))})
            leak_rows.append(leakage(split))
            t0 = time.perf_counter()
            if on_paper_rows:  # the same training rows: the same bundle
                held_result = result
            else:
                held_result = run_split(disjoint_heldout_split(name, six, heldout, limit=limit), cache_dir=cache_dir, embedder=embedder)
            row, quality = heldout_row(held_result, confidence)
            timings[f"{protocol}/{name} held-out prompts"] = time.perf_counter() - t0
            heldout_rows.append({"dataset": name, "protocol": protocol, **row})
            for label, metrics in quality.items():
                quality_rows.append({"dataset": name, "protocol": protocol, "model": label, **metrics})
            if authors_config and name == "mawps" and protocol == "paper":
                t0 = time.perf_counter()
                authors = authors_config_timing(result, cache_dir=cache_dir, embedder=embedder)
                timings["authors' XGBoost configuration"] = time.perf_counter() - t0
    sections = [
        write_table(pd.DataFrame(summary), out_dir, "summary_k6", "Test success rate with the 6 training prompts (K = 6)"),
        write_table(pd.DataFrame(choices), out_dir, "model_choice", "What cross-validation chose on each training set"),
        write_table(pd.DataFrame(intervals), out_dir, "bootstrap_k6",
                    "Gain over the best training prompt at K = 6, paired cluster bootstrap over questions (95%)"),
        write_table(pd.DataFrame(heldout_rows), out_dir, "heldout_prompts", "Selection with the 10 held-out prompts (paper test rows)"),
        write_table(pd.DataFrame(quality_rows), out_dir, "reward_model_quality", "Reward-model quality vs LLM self-critique"),
        write_table(pd.DataFrame(prompt_rows), out_dir, "prompts", "Accuracy of each prompt (paper split)"),
        write_table(pd.DataFrame(leak_rows), out_dir, "leakage", "Test questions that also occur in training"),
    ]
    if authors_config and "mawps" in datasets and "paper" in protocols:
        sections.append(write_table(pd.DataFrame([authors]), out_dir, "authors_config",
                                    "The authors' reward-model configuration vs oirl (MAWPS, paper split, K = 6)"))
    timings["total"] = time.perf_counter() - started
    write_text_atomic(out_dir / "timings.json", json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2) + "\n")
    write_text_atomic(out_dir / "README.md", "# Prompt-OIRL reproduction\n\nWritten by `oirl reproduce`: every figure from "
                      "`Recommender.train` + `oirl.evaluation.report` (the code of `oirl train` and `oirl evaluate`).\n\n" + "\n".join(sections))
    return {"timings": timings, "summary": summary, "choices": choices, "heldout": heldout_rows}


def _check_same_as_evaluate(k6: dict[str, np.ndarray], result: SplitResult) -> None:
    """The K = 6 cells must be the evaluation report's own figures (one path)."""
    report = result.report
    for method, value in (("oirl argmax", report["policies"]["argmax"]), ("oirl conservative", report["policies"]["conservative"]),
                          ("best prompt (train)", report["best_single_prompt"]["success_rate"]), ("oracle", report["oracle"])):
        if abs(float(np.mean(k6[method])) - value) > 1e-12:
            raise AssertionError(f"reproduction and evaluation disagree on {method}: {np.mean(k6[method])} vs {value}")


def _mean_std_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Fold "X mean" / "X std" column pairs into one "X" column of "mean ± std" strings."""
    out = table[["dataset", "K", "subsets"]].copy()
    for m in METHODS:
        mean, std = table[f"{m} mean"], table[f"{m} std"]
        out[m] = ["—" if np.isnan(a) else f"{a:.3f} ± {b:.3f}" for a, b in zip(mean, std, strict=True)]
    return out


def authors_config_timing(result: SplitResult, *, cache_dir, embedder: str, n_estimators: int = 2000) -> dict:
    """The authors' reward model (XGBoost, depth 10, eta 0.001, 2,000 rounds, concatenated
    vectors, argmax) against the bundle oirl chose, on the same training and test rows."""

    cached = CachedEmbedder(get_embedder(embedder), cache_dir)
    matrix = LogMatrix.from_logs(result.split.train, cached.embed)
    authors = spec("xgboost", 1, "concat", n_estimators=n_estimators, learning_rate=0.001, max_depth=10, colsample=1.0, min_child_weight=1.0)
    started = time.perf_counter()
    model = fit_on(authors.make(), matrix, "concat")
    seconds = time.perf_counter() - started
    s = result.scored
    test_vectors = cached.embed(list(s.texts))
    scores = model.predict_grid(test_vectors, result.rec.candidate_vectors([result.rec.as_candidate(PROMPTS[p]) for p in s.prompt_ids]), "concat")
    picks = replace(s, scores=scores).picks("argmax")
    return {
        "dataset": result.split.dataset,
        "authors' XGBoost seconds (one fit)": round(seconds, 1),
        "authors' XGBoost success (argmax)": float(s.rewards[np.arange(len(picks)), picks].mean()),
        "oirl seconds (model selection + fit)": round(result.seconds, 1),
        "oirl success (default policy)": result.report["policies"][result.rec.default_policy],
    }
