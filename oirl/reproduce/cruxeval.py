"""CRUXEval input prediction: choose the (model, prompting style) arm per function.

The shipped path with every default: :meth:`Recommender.train` on 80% of the samples
(chosen by a hash of the sample id, so no function is on both sides), evaluated with
:func:`oirl.evaluation.report.score_logs` on the other 20%, as ``oirl train`` and ``oirl
evaluate`` would. Rewards are fractions (n_correct / n_generations), so every success
rate here is an *expected* reward.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import write_text_atomic
from oirl.data.importers.cruxeval import build_logs
from oirl.evaluation.costs import plot_reward_cost
from oirl.evaluation.report import evaluate_recommender
from oirl.evaluation.scored import score_logs
from oirl.learn.train import train_recommender
from oirl.ope.bootstrap import cluster_bootstrap_mean
from oirl.reproduce.report import write_table

TEST_FRACTION = 0.2
COST_WEIGHTS = (0.0, 0.0003, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.3, 1.0)


def sample_split(logs: pd.DataFrame, fraction: float = TEST_FRACTION) -> pd.Series:
    """True for the rows of held-out samples: a fixed choice by a hash of the sample id."""
    return logs["query_id"].map(lambda s: int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little") / 2**64 < fraction)


def split_logs(data_dir: Path, temperature: float = 0.2) -> pd.DataFrame:
    """The imported log with a ``split`` column: ``train`` (80% of samples) / ``test``."""
    logs = build_logs(data_dir, temperature)
    return logs.assign(split=np.where(sample_split(logs), "test", "train"))


def reproduce_cruxeval(data_dir: Path, out_dir: Path, *, cache_dir=None, embedder: str = "minilm", n_boot: int = 2000,
                       limit: int | None = None, progress: bool = True) -> dict:
    """Write the CRUXEval tables, CSVs and plots under ``out_dir``; returns a summary."""
    started = time.perf_counter()
    logs = split_logs(data_dir)
    if limit is not None:
        keep = pd.unique(logs["query_id"])[:limit]
        logs = logs[logs["query_id"].isin(keep)]
    train, test = logs[logs["split"] == "train"].reset_index(drop=True), logs[logs["split"] == "test"].reset_index(drop=True)
    rec = train_recommender(train, embedder=embedder, cache_dir=cache_dir, progress=progress, source="cruxeval train (80%)")
    train_seconds = time.perf_counter() - started
    report = evaluate_recommender(rec, test, cost_weights=list(COST_WEIGHTS), source="cruxeval test (20%)")
    scored = score_logs(rec, test)
    R = scored.rewards
    best = report["best_single_prompt"]
    per_row = {
        "random": R.mean(axis=1),
        f"best single arm (train: {best['prompt_id']})": R[:, scored.prompt_ids.index(best["prompt_id"])],
        "best single arm (test, hindsight)": R[:, R.mean(axis=0).argmax()],
        f"oirl default policy ({rec.default_policy})": scored.values(rec.default_policy),
        "oirl argmax": scored.values("argmax"),
        "oirl conservative": scored.values("conservative"),
        "oracle": R.max(axis=1),
    }
    base, oracle = best["success_rate"], float(R.max(axis=1).mean())
    overall = pd.DataFrame([{"method": m, "expected reward": v.mean(), "gap recovered": (v.mean() - base) / (oracle - base)}
                            for m, v in per_row.items()])
    chosen = f"{rec.model.name} {json.dumps({k: v for k, v in rec.model.get_params().items() if k != 'dimension'})}"
    sections = [write_table(overall, out_dir, "cruxeval_overall",
                            f"CRUXEval input prediction, {R.shape[1]} arms, {R.shape[0]} held-out samples (20%), every default (expected reward)",
                            f"Chosen by cross-validation on the 80% training samples: {chosen}, default policy {rec.default_policy}.")]
    intervals = []
    for policy in (f"oirl default policy ({rec.default_policy})", "oirl argmax", "oirl conservative"):
        mean, low, high = cluster_bootstrap_mean(per_row[policy] - per_row[f"best single arm (train: {best['prompt_id']})"],
                                                   np.asarray(scored.query_ids), n_boot=n_boot)
        intervals.append({"policy": policy, "gain over best single arm": mean, "95% low": low, "95% high": high})
    sections.append(write_table(pd.DataFrame(intervals), out_dir, "cruxeval_bootstrap", "Gain over the best single arm (bootstrap over samples, 95%)"))

    # Direct vs step-by-step within each model that has both: the bundle's scores of the two arms.
    style_rows = []
    models = sorted({a.split(":")[0] for a in scored.prompt_ids if a.endswith(":cot")})
    for model in models:
        pair = [scored.prompt_ids.index(f"{model}:direct"), scored.prompt_ids.index(f"{model}:cot")]
        sub = R[:, pair]
        better = sub[:, int(np.argmax(scored.context.prior[pair]))]
        ours = scored.values("argmax", mask=np.isin(np.arange(R.shape[1]), pair)[None, :].repeat(len(R), axis=0))
        mean, low, high = cluster_bootstrap_mean(ours - better, np.asarray(scored.query_ids), n_boot=n_boot)
        style_rows.append({"model": model, "direct": sub[:, 0].mean(), "step-by-step": sub[:, 1].mean(), "better style (train)": better.mean(),
                           "oirl per query": ours.mean(), "oracle of two": sub.max(axis=1).mean(), "gain": mean, "95% low": low, "95% high": high})
    styles = pd.DataFrame(style_rows)
    if len(styles):
        styles = pd.concat([styles, pd.DataFrame([{"model": f"average of the {len(style_rows)}",
                                                   **{c: styles[c].mean() for c in styles.columns if c != "model"}}])], ignore_index=True)
        sections.append(write_table(styles, out_dir, "cruxeval_styles", "Direct vs step-by-step per query, within each model that has both"))

    sweep = report.get("cost_sweep")
    if sweep:
        curve = pd.DataFrame(sweep["curve"])
        arms = pd.DataFrame(sweep["single_prompts"])
        areas = pd.DataFrame([{"curve": "oirl cost-aware (lambda sweep)", "area": sweep["area"]},
                              {"curve": "best single arm per budget", "area": sweep["single_prompts_area"]}])
        sections.append(write_table(curve, out_dir, "cruxeval_cost_sweep", "Cost-aware policy: expected reward and mean cost per query vs lambda",
                                    "Costs: milli-dollars per call from the default table in oirl/importers/cruxeval.py."))
        sections.append(write_table(areas, out_dir, "cruxeval_cost_area", "Normalised area under the reward-cost curve (higher is better)"))
        plot_reward_cost({"oirl cost-aware": curve}, arms, out_dir / "cruxeval_reward_cost.png", "CRUXEval input prediction: reward vs cost (test samples)",
                         unit="milli-dollars per call")  # the importer's price table
    total = time.perf_counter() - started
    timings = {"train (embedding + model selection)": round(train_seconds, 1), "total": round(total, 1)}
    write_text_atomic(out_dir / "cruxeval_timings.json", json.dumps(timings, indent=2) + "\n")
    write_text_atomic(out_dir / "README.md", "# CRUXEval input prediction\n\nWritten by `oirl reproduce --benchmark cruxeval-input`.\n\n" + "\n".join(sections))
    return {"overall": overall, "styles": styles, "report": report, "timings": timings, "model": chosen, "default_policy": rec.default_policy}

