"""Throughput of the static embedder (minilm-static) against MiniLM on GSM8K questions.

    python experiments/bench_embed.py --data-dir ../shared/data

Prints (and writes to experiments/results/bench_embed.json):
- questions embedded per second by each embedder, raw (no cache), on the same N GSM8K
  training questions after a warm-up call (median over repeats);
- the static embedder through a cold SQLite cache (``CachedEmbedder``), which adds the
  hashing, claims and writes;
- the ratio static / MiniLM (the target is at least 20x);
- how far the static embedder agrees with MiniLM: the correlation of the pairwise
  cosine similarities of the first 300 questions under both;
- the build time of minilm-static if this run had to distil it (it is built once under
  the embedding cache directory, ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _rate(embed, texts: list[str], repeats: int) -> float:
    """Median texts per second of ``embed(texts)`` over ``repeats`` timed calls."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        embed(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--questions", type=int, default=2000, help="GSM8K training questions to embed.")
    parser.add_argument("--baseline", default="minilm", help="The embedder to compare against.")
    parser.add_argument("--static", default="minilm-static", help="The static embedder (a name or static:FOLDER).")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--static-repeats", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None, help="Embedding cache dir (where minilm-static is built).")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_embed.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from oirl.embed.base import default_cache_dir
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder

    with (args.data_dir / "gsm8k" / "train.jsonl").open(encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for line in handle][: args.questions]

    baseline = get_embedder(args.baseline)
    baseline.embed(["load the model before timing"])
    baseline_rate = _rate(baseline.embed, questions, args.baseline_repeats)

    static = get_embedder(args.static)
    static.use_cache_dir(args.cache_dir or default_cache_dir())
    started = time.perf_counter()
    static.embed(["load (or first build) the static model before timing"])
    load_seconds = time.perf_counter() - started
    static_rate = _rate(static.embed, questions, args.static_repeats)
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedEmbedder(static, tmp)
        cached_rate = _rate(cached.embed, questions, 1)  # one run: the second would be all cache hits

    sample = questions[:300]
    a, b = baseline.embed(sample), static.embed(sample)
    upper = np.triu_indices(len(sample), k=1)
    correlation = float(np.corrcoef((a @ a.T)[upper], (b @ b.T)[upper])[0, 1])

    result = {
        "questions": len(questions),
        "baseline": {"spec": args.baseline, "dimension": baseline.dimension, "queries_per_second": round(baseline_rate, 1)},
        "static": {
            "spec": args.static,
            "revision": static.revision,
            "dimension": static.dimension,
            "queries_per_second": round(static_rate, 1),
            "cached_cold_queries_per_second": round(cached_rate, 1),
            "load_or_build_seconds": round(load_seconds, 1),
        },
        "speedup": round(static_rate / baseline_rate, 1),
        "target_speedup": 20,
        "similarity_correlation_300": round(correlation, 3),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")  # beside it, then rename: atomic, umask kept
    try:
        tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_out, args.out)
    finally:
        tmp_out.unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    main()
