"""``oirl evaluate --dask``: scores computed on the workers, the report on the driver.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from oirl._json import json_safe
from oirl.distributed.blocks import build_blocks, encode_rows, worker_recommender
from oirl.distributed.cluster import n_workers
from oirl.distributed.read import _rows_of_split, read_log_partitions
from oirl.embed.base import default_cache_dir
from oirl.errors import OirlError
from oirl.evaluation.costs import cost_sweep_report
from oirl.evaluation.report import selection_report, warn_if_seen
from oirl.evaluation.scored import ScoredLogs, bundle_and_logged
from oirl.policy.policies import POLICIES
from oirl.recommender.bundle import load_bundle
from oirl.recommender.recommender import Candidate, _member
from oirl.reward.metrics import classification_metrics

# --------------------------------------------------------------------------- evaluation


def _eval_scores(block: dict[str, Any], model_dir: str, cache_dir: str, candidate_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n_i, m) of the block's instances and whether each one's text was trained on (n_i,)."""

    rec = worker_recommender(model_dir, cache_dir)
    text_scores = rec.score_vectors(block["vectors"], candidate_vectors, texts=list(block["texts"]))
    return text_scores[block["inst_text"]], _member(block["texts"], rec.train_text_hashes)[block["inst_text"]]


def _candidate_vectors(model_dir: str, cache_dir: str, candidates: list) -> np.ndarray:
    return worker_recommender(model_dir, cache_dir).candidate_vectors(candidates)


def evaluate_distributed(
    client, model_dir: str | Path, paths: list[str | Path], *, split: str = "test", split_column: str | None = "split",
    candidates: list | None = None, costs: dict[str, float] | None = None, cost_weights: list[float] | None = None,
    cache_dir: str | Path | None = None, n_partitions: int | None = None,
) -> dict[str, Any]:
    """The selection and reward-model report of ``oirl evaluate`` with the scoring on the workers.

    Full-information logs only (every prompt logged for every evaluated instance); no
    off-policy estimates. The driver gathers the reward and score matrices (n_instances x
    n_prompts) and computes the report with :mod:`oirl.evaluation.report`, as in memory.
    """
    import dask.dataframe as dd

    rec = load_bundle(model_dir, cache_dir=cache_dir)
    cache = str(Path(cache_dir or default_cache_dir()).resolve())
    bundle = str(Path(model_dir).resolve())
    source = " + ".join(map(str, paths))
    parts = []
    for path in paths:
        rows = read_log_partitions(path, columns=[split_column] if split_column else None)
        if split_column and split_column not in rows.columns:
            warnings.warn(f"{path}: no column {split_column!r}; evaluating every row (training rows included, if any)", stacklevel=2)
        parts.append(_rows_of_split(rows, split_column, split))
    encoded = encode_rows(client, dd.concat(parts) if len(parts) > 1 else parts[0], rec.question_key, source=source)
    logged = [Candidate(t, p) for p, t in encoded.prompt_texts.items()]
    chosen = rec.resolve_candidates(candidates) if candidates is not None else bundle_and_logged(rec, logged)  # as in memory
    log_id = {t: p for p, t in encoded.prompt_texts.items()}
    never = [c.prompt_id for c in chosen if c.prompt not in log_id]
    if never:
        raise OirlError(f"{source}: oirl evaluate --dask reports on full-information logs only; candidate(s) "
                        f"{', '.join(never[:5])} are never logged: run it without --dask for off-policy estimates")
    prompt_ids = [log_id[c.prompt] for c in chosen]
    vectors = client.submit(_candidate_vectors, bundle, cache, chosen, pure=False).result()
    blocks = build_blocks(client, encoded, prompt_ids, embed_with=("bundle", bundle), cache_dir=cache, n_folds=1,
                          n_partitions=n_partitions, source=source)
    rewards = np.vstack([b["rewards"] for b in blocks.meta])
    missing = int(np.isnan(rewards).sum())
    if missing:
        raise OirlError(f"{source}: oirl evaluate --dask reports on full-information logs only (every prompt logged for every "
                        f"query instance); {missing} of {rewards.size} cells are not logged: run it without --dask")
    parts = client.gather(client.map(_eval_scores, blocks.futures, model_dir=bundle, cache_dir=cache, candidate_vectors=vectors, pure=False))
    scores = np.vstack([s for s, _ in parts])
    seen = np.concatenate([t for _, t in parts])
    warn_if_seen(source, seen)
    context = rec.policy("argmax", chosen, costs={**encoded.costs, **(costs or {})}).context
    texts = np.concatenate([b["texts"] for b in blocks.meta])  # question hashes stand in for texts on the driver
    instance_text = np.concatenate([b["texts"][b["inst_text"]] for b in blocks.meta])
    scored = ScoredLogs(list(np.concatenate([b["instances"] for b in blocks.meta])), instance_text, [c.prompt_id for c in chosen],
                        rewards, scores, context, seen, margin=rec.margin, threshold=rec.threshold,
                        candidate_set="the bundle's prompts and every logged prompt" if candidates is None else "the candidates given")
    cost = None if np.isnan(context.cost).any() else context.cost
    names = [name for name in POLICIES if name != "cost-aware" or cost is not None]
    report = selection_report(scored, {name: scored.policy(name) for name in names})
    report.update({
        "feedback": "full", "candidates": {"set": scored.candidate_set, "ids": scored.prompt_ids, "never_logged": []},
        "default_policy": rec.default_policy,
        "seen_in_training": {"query_instances": int(seen.sum()), "of": int(len(seen))},
        "reward_model": classification_metrics(rewards.ravel(), scores.ravel()),
        "conservative_margin": None if np.isinf(rec.margin) else rec.margin,
        "ope": {"refused": {"estimates": "off-policy estimates are not computed under --dask; run oirl evaluate without --dask"}},
        "model_selection": rec.metadata.get("metrics", {}).get("model_selection"),
        "distributed": {"workers": n_workers(client), "partitions": len(blocks.futures), "distinct_questions": int(len(texts))},
    })
    if cost is not None and cost_weights:
        report["cost_sweep"] = cost_sweep_report(scores, rewards, context, cost_weights)
    return json_safe(report)
