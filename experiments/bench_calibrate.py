"""Routing on a budget, measured: does `oirl calibrate` hold its target on queries it never saw?

    python experiments/bench_calibrate.py --data-dir ../shared/data

On CRUXEval input prediction (T = 0.2, 800 functions):

The functions are split by a hash of their id (as the reproduction splits them):
``--train-fraction`` of them (default half) train the bundles (every default of ``oirl
train``), the others are the queries, never trained on, as a user's traffic would be
(a bundle scores the queries it was trained on differently: calibrated on those, its
weight would not carry over to new ones).

1. **Two arms** — the cheapest and the dearest arm of the imported log's ``cost`` column
   (ties: the better mean reward). The queries are cut in
   two random halves: ``oirl calibrate --max-share DEAREST=0.3`` on half A, then
   ``oirl recommend`` with the calibrated bundle (its default policy) on half B, and the
   share of B's picks that go to the dearest arm is counted. Through the CLI, as a user
   would. Then the same over ``--splits`` random halvings (the queries scored once, the
   weight found as ``oirl calibrate`` finds it): how the share on B spreads.
2. **Every arm** (``--all-arms``) — a bundle on all 37 arms, ``--budget COST`` (mean cost
   per query) instead, the same halves.

Each calibrated bundle is also evaluated on the query functions (``oirl evaluate``,
``--split test``): RouteLLM's APGR and CPT(50%) of its router, and where the calibrated
policy stands on that curve.

Prints and writes experiments/results/bench_calibrate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def oirl(*args: str) -> str:
    """Run the oirl CLI as a user would; its stdout."""
    done = subprocess.run([sys.executable, "-m", "oirl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"oirl {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


def extreme_arms(logs: pd.DataFrame) -> tuple[str, str]:
    """The cheapest and the dearest arm of the cost column (ties: the better mean reward)."""
    arms = logs.groupby("prompt_id").agg(cost=("cost", "mean"), reward=("reward", "mean")).reset_index()
    cheap = arms.sort_values(["cost", "reward"], ascending=[True, False]).iloc[0]["prompt_id"]
    dear = arms.sort_values(["cost", "reward"], ascending=[False, False]).iloc[0]["prompt_id"]
    return str(cheap), str(dear)


def write_queries(texts: list[str], path: Path) -> Path:
    path.write_text("".join(json.dumps({"query": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def calibrate_and_check(model: Path, texts: list[str], option: list[str], work: Path, cache_dir: Path, measure) -> tuple[dict, Path]:
    """``oirl calibrate`` on half A, ``oirl recommend`` on half B; ``measure(prompt_ids)`` of B's picks (and the calibrated bundle)."""
    a, b = halves(len(texts), 0)
    calibrated = work / f"calibrated-{option[0].lstrip('-')}"
    summary = json.loads(oirl("calibrate", model, "--queries", write_queries([texts[i] for i in a], work / "half_a.jsonl"), *option,
                              "--out", calibrated, "--cache-dir", cache_dir))
    picks = [json.loads(line)["prompt_id"] for line in oirl("recommend", calibrated, "--queries",
                                                            write_queries([texts[i] for i in b], work / "half_b.jsonl"),
                                                            "--cache-dir", cache_dir).splitlines()]
    return {"queries": [len(a), len(b)], "cost_weight": summary["cost_weight"], "on_calibration_half": summary["calibration"]["measured"],
            "on_other_half": measure(picks)}, calibrated


def router_metrics(model: Path, log: Path, cache_dir: Path) -> dict:
    """``oirl evaluate`` on the held-out functions: the router metrics of the whole set and
    where the calibrated policy stands (its share of each arm, PGR)."""
    whole = json.loads(oirl("evaluate", model, log, "--split", "test", "--cache-dir", cache_dir))["routing"]["all_arms"]
    return {key: whole[key] for key in ("cheap", "expensive", "apgr", "query_blind_apgr", "cpt50", "cpt80", "at_bundle_cost_weight")}


def repeated(model: Path, texts: list[str], splits: int, target, cache_dir: Path) -> dict:
    """The same over ``splits`` random halvings: the spread of the measure on half B."""
    from oirl.learn.calibration import check_target
    from oirl.policy.budget import weight_for_limit
    from oirl.policy.policies import CostAware
    from oirl.recommender.bundle import load_bundle

    rec = load_bundle(model, cache_dir=cache_dir)
    cost = check_target(rec, target)
    scores = rec.score(texts)
    context = rec.policy("cost-aware", cost_weight=0.0).context
    ids = list(context.ids)
    values, limit = ((np.arange(len(ids)) == ids.index(target.prompt_id)).astype(float), target.share) if hasattr(target, "share") \
        else (cost, target.cost)
    found = []
    for seed in range(splits):
        a, b = halves(len(texts), seed)
        weight = weight_for_limit(scores[a], context, values, limit).cost_weight
        found.append(float(values[CostAware(context, weight).choose(scores[b])].mean()))
    found = np.array(found)
    return {"splits": splits, "mean": float(found.mean()), "sd": float(found.std(ddof=1)) if splits > 1 else 0.0,
            "min": float(found.min()), "max": float(found.max()), "values": found.round(4).tolist()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--model", default="auto", help="'auto' (oirl train's default) or a reward model name.")
    parser.add_argument("--share", type=float, default=0.3, help="--max-share of the dearest arm.")
    parser.add_argument("--budget", type=float, default=5.0, help="--budget (mean milli-dollars per query) with --all-arms.")
    parser.add_argument("--all-arms", action=argparse.BooleanOptionalAction, default=True, help="Also calibrate a bundle on every arm to --budget.")
    parser.add_argument("--train-fraction", type=float, default=0.5,
                        help="Train on this share of the functions (by a hash of the id); the others, never trained on, are the queries.")
    parser.add_argument("--splits", type=int, default=100, help="Random halvings for the spread.")
    parser.add_argument("--limit", type=int, default=None, help="Keep only the first N functions (smoke tests).")
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_calibrate.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.cruxeval import build_logs
    from oirl.data.logs import write_logs
    from oirl.learn.calibration import Budget, ShareCap
    from oirl.reproduce.cruxeval import sample_split

    logs = build_logs(args.data_dir, 0.2)
    if args.limit:
        logs = logs[logs["query_id"].isin(pd.unique(logs["query_id"])[: args.limit])]
    logs = logs.assign(split=np.where(sample_split(logs, 1 - args.train_fraction), "test", "train"))
    cheap, dear = extreme_arms(logs)
    texts = logs[logs["split"] == "test"].drop_duplicates("query_id")["query"].tolist()
    costs = logs.groupby("prompt_id")["cost"].mean().to_dict()
    result: dict = {"log": "CRUXEval input prediction, T = 0.2", "train_fraction": args.train_fraction,
                    "trained_on": int(logs.loc[logs["split"] == "train", "query_id"].nunique()), "queries": len(texts),
                    "embedder": args.embedder, "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = [("max_share", [cheap, dear], ShareCap(dear, args.share), ["--max-share", f"{dear}={args.share}"],
                 lambda ids: float(np.mean([p == dear for p in ids])))]
        if args.all_arms:
            runs.append(("budget", sorted(costs), Budget(args.budget), ["--budget", str(args.budget)],
                         lambda ids: float(np.mean([costs[p] for p in ids]))))
        for name, arms, target, option, measure in runs:
            log = write_logs(logs[logs["prompt_id"].isin(arms)], work / f"{name}.parquet")
            model = work / f"model-{name}"
            oirl("train", log, "--out", model, "--model", args.model, "--embedder", args.embedder, "--cache-dir", args.cache_dir)
            checked, calibrated = calibrate_and_check(model, texts, option, work, args.cache_dir, measure)
            block = {"arms": arms if len(arms) == 2 else len(arms), "target": option[1], **checked,
                     "repeated": repeated(model, texts, args.splits, target, args.cache_dir),
                     "evaluate_test": router_metrics(calibrated, log, args.cache_dir)}
            if name == "max_share":
                block["within_3_points"] = abs(block["on_other_half"] - args.share) <= 0.03
                block["repeated"]["within_3_points"] = float(np.mean(np.abs(np.array(block["repeated"]["values"]) - args.share) <= 0.03))
                block["repeated"]["binomial_sd_of_a_half"] = float(np.sqrt(args.share * (1 - args.share) / (len(texts) // 2)))
            result[name] = block
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text + "\n")
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "repeated"} | {"repeated": {kk: vv for kk, vv in v["repeated"].items() if kk != "values"}}
                          if isinstance(v, dict) else v) for k, v in result.items()}, indent=2))
    return result


if __name__ == "__main__":
    main()
