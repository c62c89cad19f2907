"""Benchmark the core: training time on GSM8K and recommendation latency.

    python experiments/bench_core.py --data-dir ../shared/data

Prints (and writes to experiments/results/bench_core.json):
- embedding time for the training questions (cold cache) and training time of the
  default reward model (3-fold cross-fitting + final fit) on the GSM8K train split;
- latency of one recommendation (one query, 16 candidates: the 6 training prompts
  and the 10 held-out prompts) over many calls, each with a distinct query, so every
  call embeds its query: p50 / p95 / p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from oirl.learn.train import train_recommender
from oirl.recommender.bundle import load_bundle, save_bundle


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="auto", help="'auto' (the default of oirl train) or a reward model name.")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--max-train-queries", type=int, default=None, help="Train on a slice (for smoke tests).")
    parser.add_argument("--calls", type=int, default=500, help="Recommendation calls to time.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_core.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic
    from oirl.data.importers import import_prompt_oirl
    from oirl.data.importers.prompt_oirl import HELDOUT_PROMPTS, PROMPTS
    from oirl.data.logs import read_logs, training_rows
    from oirl.embed.cached import CachedEmbedder, MemoryCachedEmbedder
    from oirl.embed.registry import get_embedder
    from oirl.recommender.recommender import Candidate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import_prompt_oirl(args.data_dir, tmp / "logs", datasets=("gsm8k",))
        logs = read_logs(tmp / "logs" / "gsm8k.parquet")
        train = training_rows(logs, "split", "train", source="gsm8k")
        if args.max_train_queries:
            keep = train["query_id"].drop_duplicates().head(args.max_train_queries)
            train = train[train["query_id"].isin(keep)]

        # Embedding into a fresh (cold) cache, then training on the warm cache, timed apart.
        embedder = get_embedder(args.embedder)
        embedder.embed(["load the model before timing"])
        texts = train["query"].drop_duplicates().tolist()
        started = time.perf_counter()
        CachedEmbedder(embedder, tmp / "emb").embed(texts, progress=True)
        embed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        rec = train_recommender(train, model=args.model, embedder=args.embedder, cache_dir=tmp / "emb", progress=True)
        train_seconds = time.perf_counter() - started
        save_bundle(rec, tmp / "model")

        # Latency as the service sees it: a loaded bundle, an in-memory query cache,
        # distinct queries (no cache hits), 16 candidates of which 10 are new prompts.
        rec = load_bundle(tmp / "model")
        rec = rec.with_query_embedder(MemoryCachedEmbedder(get_embedder(args.embedder)))
        candidates = [Candidate(text, alias) for alias, text in PROMPTS.items()]
        assert len(candidates) == 16 and sum(c.prompt_id in HELDOUT_PROMPTS for c in candidates) == 10
        test_queries = logs.loc[logs["split"] == "test", "query"].drop_duplicates().tolist()
        rec.recommend([test_queries[-1]], candidates)  # warm-up: embeds the 10 new prompts once
        latencies = []
        for query in test_queries[: args.calls]:
            started = time.perf_counter()
            rec.recommend([query], candidates, policy="conservative")
            latencies.append((time.perf_counter() - started) * 1000)

    lat = np.array(latencies)
    result = {
        "train_queries": int(train["query_id"].nunique()),
        "train_rows": int(len(train)),
        "model": args.model,
        "embedder": args.embedder,
        "embed_seconds_cold": round(embed_seconds, 1),
        "embed_queries_per_second": round(len(texts) / embed_seconds, 1),
        "train_seconds_warm_cache": round(train_seconds, 1),
        "recommend_calls": len(lat),
        "recommend_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 2) for q in ("p50", "p95", "p99")},
    }
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
