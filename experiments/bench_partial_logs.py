"""A deployed system's log: one prompt per query, chosen by the query, no propensities.

    python experiments/bench_partial_logs.py --data-dir ../shared/data

For MAWPS and SVAMP (the paper's split), the training rows are reduced to what a deployed
system would have logged: for each query instance one prompt, drawn by a logger that
prefers one prompt per query-length quartile (the favourite with probability .6, each
other prompt .08), and no propensity column. The test rows stay full (every prompt).
``oirl train`` runs with every default on that partial log (it estimates the logging
policy; see oirl/learn/logging_policy.py) and ``oirl evaluate``'s code scores the bundle's
default policy on the test rows. The bar: the best single prompt by its true training
mean (from the full log, which the partial log hides), valued on the test rows.

Prints a table and writes experiments/results/bench_partial_logs.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

FAVOURITE_PROBABILITY = 0.6


def deployed_log(train: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per training instance, drawn by the length-quartile logger; no propensity column.
    Returns the rows and each quartile's favourite prompt."""
    rng = np.random.default_rng(seed)
    prompts = list(dict.fromkeys(train["prompt_id"]))
    instances = train.drop_duplicates("query_id")[["query_id", "query"]]
    lengths = instances["query"].str.len().to_numpy()
    quartile = np.searchsorted(np.quantile(lengths, [0.25, 0.5, 0.75]), lengths, side="right")
    favourites = {q: prompts[i] for q, i in enumerate(rng.permutation(len(prompts))[:4])}
    others = (1 - FAVOURITE_PROBABILITY) / (len(prompts) - 1)
    chosen = []
    for q in quartile:
        weights = np.array([FAVOURITE_PROBABILITY if p == favourites[q] else others for p in prompts])
        chosen.append(prompts[rng.choice(len(prompts), p=weights)])
    pick = pd.DataFrame({"query_id": instances["query_id"].to_numpy(), "prompt_id": chosen})
    rows = train.merge(pick, on=["query_id", "prompt_id"])
    return rows.drop(columns=[c for c in ("propensity",) if c in rows.columns]).reset_index(drop=True), favourites


def run_one(name: str, logs: pd.DataFrame, seed: int, *, cache_dir: Path, embedder: str, limit: int | None) -> dict:
    from oirl.evaluation.report import evaluate_recommender
    from oirl.learn.train import train_recommender

    train, test = logs[logs["split"] == "train"], logs[logs["split"] == "test"]
    if limit:
        train = train[train["query_id"].isin(train["query_id"].unique()[:limit])]
        test = test[test["query_id"].isin(test["query_id"].unique()[:limit])]
    partial, favourites = deployed_log(train, seed)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = train_recommender(partial.drop(columns="split"), embedder=embedder, cache_dir=cache_dir, source=f"{name} deployed log")
        report = evaluate_recommender(rec, test, source=f"{name} test", n_boot=200)
    seconds = time.perf_counter() - started
    true_train_means = train.groupby("prompt_id")["reward"].mean()
    naive_means = partial.groupby("prompt_id")["reward"].mean()
    test_means = test.groupby("prompt_id")["reward"].mean()
    best = true_train_means.idxmax()
    chosen = next(r for r in rec.metadata["metrics"]["model_selection"] if r["chosen"])
    shipped = report["policies"][rec.default_policy]
    return {
        "dataset": name, "seed": seed, "favourites": {str(q): p for q, p in favourites.items()},
        "train_instances": int(partial["query_id"].nunique()), "test_instances": int(test["query_id"].nunique()),
        "shipped_option": chosen["option"], "shipped_policy": rec.default_policy, "default_prompt": rec.default_prompt_id,
        "shipped_test_value": shipped, "argmax_test_value": report["policies"]["argmax"],
        "best_prompt": best, "best_prompt_test_value": float(test_means[best]),
        "naive_best_prompt": str(naive_means.idxmax()), "naive_best_prompt_test_value": float(test_means[naive_means.idxmax()]),
        "shipped_minus_best": shipped - float(test_means[best]),
        "propensities": rec.metadata["training"]["propensities"],
        "warnings": [str(w.message) for w in caught if "partial feedback" in str(w.message)],
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--datasets", default="mawps,svamp")
    parser.add_argument("--seeds", default="0,1,2", help="Logger draws (and quartile favourites) to run.")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--limit", type=int, default=None, help="Keep the first N training and N test instances (toy size).")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_partial_logs.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    results = []
    for name in args.datasets.split(","):
        logs = build_logs(args.data_dir, name, TRAINING_PROMPTS)
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run_one(name, logs, seed, cache_dir=args.cache_dir, embedder=args.embedder, limit=args.limit)
            results.append(result)
            print(f"{name} seed {seed}: shipped {result['shipped_option']} = {result['shipped_test_value']:.4f}; best prompt "
                  f"{result['best_prompt']} = {result['best_prompt_test_value']:.4f} (difference {result['shipped_minus_best']:+.4f}); "
                  f"naive best {result['naive_best_prompt']} = {result['naive_best_prompt_test_value']:.4f}; {result['seconds']} s", flush=True)
    summary = {"favourite_probability": FAVOURITE_PROBABILITY, "embedder": args.embedder, "results": results,
               "worst_shipped_minus_best": min(r["shipped_minus_best"] for r in results)}
    write_text_atomic(args.out, json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
