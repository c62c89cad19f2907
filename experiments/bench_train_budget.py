"""Training-time budget of the ``--model auto`` grid on GSM8K (issue 22: at most 2x).

Model selection (3-fold cross-fitting of every candidate, the selection rule) dominates
``oirl train`` once the embedding cache is warm. This times it on the GSM8K training
split (the paper's training questions x 6 prompts) for the grid as it
was before the lexical and low-rank families (``--model auto`` of the previous release)
and for today's grid, in one process one after the other, and prints the ratio (a ratio,
so that a busy machine slows both alike), with each candidate family's cross-fit time.

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
    result = {
        "rows": int(len(train)), "query_instances": int(len(matrix.query_ids)), "prepare_seconds (warm cache)": round(prepare, 1),
        "selection_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "ratio (auto / previous)": round(seconds["auto grid"] / seconds["previous grid"], 2),
        # Each family's cross-fit time summed over both runs (the old families ran twice).
        "cross_fit_seconds_by_family": {k: round(v, 1) for k, v in sorted(family_seconds.items())},
    }
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
