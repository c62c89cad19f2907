"""Training-time budget of the ``--model auto`` grid on GSM8K (issue 22: at most 2x).

Model selection (3-fold cross-fitting of every candidate, the selection rule) dominates
``oirl train`` once the embedding cache is warm. This times it on the GSM8K training
split (the paper's training questions x 6 prompts) for the grid as it
was before the lexical and low-rank families (``--model auto`` of the previous release)
and for today's grid, in one process one after the other, and prints the ratio (a ratio,
so that a busy machine slows both alike), with each candidate family's cross-fit time.
Then the latency of one recommendation (one query x 16 candidates, 10 of them prompts
never trained on; distinct queries, so every call embeds its query, as in
``bench_core.py``) for a bundle of each new family beside the neighbour model's.

    python experiments/bench_train_budget.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train_budget.json"
NEW_FAMILIES = ("lexical", "lowrank")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", default="embeddings")
    parser.add_argument("--max-train-queries", type=int, default=None, help="Train on a slice (for smoke tests).")
    parser.add_argument("--calls", type=int, default=300, help="Recommendation calls to time per bundle.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import pandas as pd

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs
    from oirl.learn.candidates import AUTO_CANDIDATES
    from oirl.learn.crossfit import cross_fit, make_folds
    from oirl.learn.engine import InMemoryEngine, TrainOptions
    from oirl.learn.selection import select_model

    logs = build_logs(args.data_dir, "gsm8k", TRAINING_PROMPTS)
    train = logs[logs["split"] == "train"]
    if args.max_train_queries:
        train = train[train["query_id"].isin(pd.unique(train["query_id"])[: args.max_train_queries])]
    started = time.perf_counter()
    matrix = InMemoryEngine().prepare(train.reset_index(drop=True), TrainOptions(cache_dir=args.cache_dir)).matrix
    prepare = time.perf_counter() - started
    folds = make_folds(matrix, 3, "text")
    family_seconds: dict[str, float] = defaultdict(float)

    def timed_fitter(candidate, matrix, folds):
        began = time.perf_counter()
        fit = cross_fit(candidate, matrix, folds)
        family_seconds[candidate.model] += time.perf_counter() - began
        return fit

    before = tuple(c for c in AUTO_CANDIDATES if c.model not in NEW_FAMILIES)
    seconds = {}
    for name, grid in (("previous grid", before), ("auto grid", AUTO_CANDIDATES)):
        began = time.perf_counter()
        choice = select_model(matrix, grid, folds=folds, fitter=timed_fitter)
        seconds[name] = time.perf_counter() - began
        print(f"{name}: {len(grid)} candidates, {seconds[name]:.1f} s, chose {choice.spec.label} {choice.policy}", flush=True)
    latency = recommend_latency(train, logs, args.cache_dir, args.calls)
    result = {
        "rows": int(len(train)), "query_instances": int(len(matrix.query_ids)), "prepare_seconds (warm cache)": round(prepare, 1),
        "selection_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "ratio (auto / previous)": round(seconds["auto grid"] / seconds["previous grid"], 2),
        # Each family's cross-fit time summed over both runs (the old families ran twice).
        "cross_fit_seconds_by_family": {k: round(v, 1) for k, v in sorted(family_seconds.items())},
        "recommend_ms (1 query x 16 candidates)": latency,
    }
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


def recommend_latency(train, logs, cache_dir, calls: int) -> dict[str, dict[str, float]]:
    """p50/p95 ms of ``recommend`` for bundles of the new families and the neighbour model."""
    import numpy as np

    from oirl.data.importers.prompt_oirl import PROMPTS
    from oirl.embed.cached import MemoryCachedEmbedder
    from oirl.embed.registry import get_embedder
    from oirl.learn.train import train_recommender
    from oirl.recommender.recommender import Candidate

    candidates = [Candidate(text, alias) for alias, text in PROMPTS.items()]
    queries = logs.loc[logs["split"] == "test", "query"].drop_duplicates().tolist()
    out = {}
    for model in ("knn", "lexical", "lowrank"):
        rec = train_recommender(train, model=model, cache_dir=cache_dir, source=f"gsm8k ({model})")
        rec = rec.with_query_embedder(MemoryCachedEmbedder(get_embedder("minilm")))
        rec.recommend([queries[-1]], candidates)  # warm-up: embeds the 10 new prompts once
        times = []
        for query in queries[:calls]:
            began = time.perf_counter()
            rec.recommend([query], candidates, policy="conservative")
            times.append((time.perf_counter() - began) * 1000)
        out[model] = {q: round(float(np.percentile(times, int(q[1:]))), 2) for q in ("p50", "p95")}
        print(f"recommend, {model}: {out[model]}", flush=True)
    return out


if __name__ == "__main__":
    main()
