"""Selection quality and speed of the embedders, side by side, on every benchmark log.

    python experiments/compare_embedders.py --data-dir ../shared/data

For each log (GSM8K, SVAMP and MAWPS on the paper split with the six training prompts,
CRUXEval 80/20 by sample) and each embedder (``minilm``, ``minilm-static``), trains a
bundle with every default (``oirl train``: --model auto, --cv-groups text) on the
training rows and evaluates its default policy on the test rows (``oirl evaluate``).
Reports each value, the paired difference static - MiniLM with its standard error and
95% interval from a cluster bootstrap over question texts, the embedding throughput of
each embedder on the log's distinct questions (cold: no cache), and the training time.
Writes ``experiments/results/compare_embedders.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oirl.learn.train import train_recommender

EMBEDDERS = ("minilm", "minilm-static")
LOGS = ("gsm8k", "svamp", "mawps", "cruxeval")


def split_log(data_dir: Path, name: str):
    if name == "cruxeval":
        from oirl.reproduce.cruxeval import split_logs

        logs = split_logs(data_dir)
    else:
        from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

        logs = build_logs(data_dir, name, TRAINING_PROMPTS)
    return logs[logs["split"] == "train"].reset_index(drop=True), logs[logs["split"] == "test"].reset_index(drop=True)


def throughput(embedder: str, texts: list[str], cache_dir: Path) -> float:
    """Texts per second through the raw embedder (no vector cache), model already loaded."""
    from oirl.embed.registry import get_embedder

    model = get_embedder(embedder)
    model.use_cache_dir(cache_dir)  # where the static model was built
    model.embed(["warm up"])
    started = time.perf_counter()
    model.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--logs", default=",".join(LOGS))
    parser.add_argument("--limit", type=int, default=None, help="Keep the first N train and N test instances (toy runs).")
    parser.add_argument("--throughput-texts", type=int, default=1000)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/compare_embedders.json"))
    args = parser.parse_args(argv)

    import pandas as pd

    from oirl._atomic import write_text_atomic
    from oirl.evaluation.scored import score_logs
    from oirl.ope.bootstrap import cluster_bootstrap_mean
    from oirl.reproduce.report import markdown_table

    rows = []
    for name in args.logs.split(","):
        train, test = split_log(args.data_dir, name)
        if args.limit:
            train = train[train["query_id"].isin(pd.unique(train["query_id"])[: args.limit])]
            test = test[test["query_id"].isin(pd.unique(test["query_id"])[: args.limit])]
        values, row = {}, {"log": name, "test queries": int(test["query_id"].nunique())}
        texts = list(pd.unique(test["query"]))[: args.throughput_texts]
        for embedder in EMBEDDERS:
            started = time.perf_counter()
            rec = train_recommender(train, embedder=embedder, cache_dir=args.cache_dir, source=f"{name} train")
            seconds = time.perf_counter() - started
            scored = score_logs(rec, test)
            values[embedder] = scored.values(rec.default_policy)
            best = scored.rewards[:, scored.prompt_ids.index(rec.default_prompt_id)]
            row[f"{embedder}: default policy"] = float(values[embedder].mean())
            row[f"{embedder}: model"] = f"{rec.model.name} {rec.default_policy}"
            row[f"{embedder}: train s"] = round(seconds, 1)
            row[f"{embedder}: texts/s"] = round(throughput(embedder, texts, args.cache_dir), 1)
            row["best training prompt"] = float(best.mean())
        difference = values["minilm-static"] - values["minilm"]
        mean, low, high = cluster_bootstrap_mean(difference, score_logs(rec, test).questions, n_boot=args.n_boot)
        row.update({"static - minilm": mean, "95% low": low, "95% high": high,
                    "speed-up": round(row["minilm-static: texts/s"] / row["minilm: texts/s"], 1)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown_table(pd.DataFrame(rows))
    write_text_atomic(args.out, json.dumps({"rows": rows}, indent=2) + "\n")
    write_text_atomic(args.out.with_suffix(".md"), "### Embedders side by side (paper split, K = 6, every default)\n\n" + table + "\n")
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
