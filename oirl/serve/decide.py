"""The one decision path: embed, rank, draw (:func:`choose`), record (:func:`record`).
``/v1/recommend`` and the gateway's ``/v1/chat/completions`` both decide here, so a gateway
decision is recorded exactly as a recommendation is (same fields, same store call,
committed before any answer carrying its id leaves) and ``/v1/feedback`` and ``oirl
export-decisions`` take either alike. The gateway runs the commit while the upstream
works, and waits for it before it answers (:mod:`oirl.serve.gateway`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from oirl.decisions.records import Decision, new_decision_id
from oirl.decisions.store import DecisionStore
from oirl.serve.dependencies import Scoring
from oirl.serve.limits import ServiceLimits
from oirl.serve.problems import RequestRefused
from oirl.serve.reload import Serving
from oirl.serve.schemas import EpsilonGreedy, Softmax, SquareCB, exploration_of
from oirl.serve.scoring import CandidateSet, Ranked


def check_size(limits: ServiceLimits, pairs: int, pairs_label: str, texts: list[str]) -> None:
    """The per-request caps, checked before anything is embedded."""
    if pairs > limits.scored_pairs:
        raise RequestRefused(f"{pairs_label} = {pairs:,} pairs to score exceeds the cap of {limits.scored_pairs:,} per request",
                             "too_many_pairs")
    distinct = len(set(texts))
    if distinct > limits.texts_to_embed:
        raise RequestRefused(f"{distinct:,} distinct texts to embed (queries and new prompts) exceeds the cap of "
                             f"{limits.texts_to_embed:,} per request", "too_many_texts")


@dataclass(frozen=True)
class Decided:
    """Each query's served prompt, its decision id (None: no store) and the probability it was served with;
    ``pending`` is the store write not yet made (run it with :func:`record`)."""

    ranked: list[Ranked]
    ids: list[str | None]
    propensities: list[float | None]
    pending: list[Decision]


async def decide(request: Request, served: Serving, store: DecisionStore | None, scoring: Scoring, queries: list[str],
                 candidates: CandidateSet, *, policy: str, top_k: int, cost_weight: float | None,
                 exploration: EpsilonGreedy | Softmax | SquareCB | None) -> Decided:
    """:func:`choose`, then :func:`record`: the decisions are committed when it returns."""
    decided = await choose(request, served, store, scoring, queries, candidates, policy=policy, top_k=top_k, cost_weight=cost_weight,
                           exploration=exploration)
    await record(request, store, decided)
    return decided


async def choose(request: Request, served: Serving, store: DecisionStore | None, scoring: Scoring, queries: list[str],
                 candidates: CandidateSet, *, policy: str, top_k: int, cost_weight: float | None,
                 exploration: EpsilonGreedy | Softmax | SquareCB | None, ids: list[str] | None = None) -> Decided:
    """Rank ``candidates`` for ``queries`` under ``policy`` (drawing by ``exploration``), the scores moved
    by the service's online offsets (:mod:`oirl.decisions.online`) when it learns between retrains; the
    decisions to record in ``store`` are in ``pending``, under ``ids`` if given (else new ones). The
    caller has checked the caps."""
    model = served.model
    n = len(queries)
    explore = exploration_of(exploration)
    vectors = await served.batcher.embed(queries + candidates.new_texts)
    learner = request.app.state.online
    online = None if learner is None else await asyncio.to_thread(learner.state, model.version)
    ranked = await scoring.run(served, n * candidates.size, model.rank, queries, vectors[:n], vectors[n:], candidates,
                               policy=policy, top_k=top_k, cost_weight=cost_weight, explore=explore, rng=np.random.default_rng(),
                               offsets=None if online is None else online.for_candidates(candidates.ids()))
    if ids is None:
        ids = [new_decision_id() if store is not None else None for _ in ranked]  # only what /v1/feedback can take
    served_with = [r.propensity if r.propensity is not None else (1.0 if store is not None else None) for r in ranked]
    pending = []
    if store is not None:
        explore_json = None if exploration is None else exploration.model_dump()
        offered_ids, offered_prompts = candidates.ids(), candidates.prompts()  # shared by every query
        online_json = None if online is None else online.record(offered_ids)
        pending = [Decision(query=q, candidate_ids=offered_ids, candidate_prompts=offered_prompts, prompt_id=r.prompt_id, prompt=r.prompt,
                            score=r.score, policy=policy, model_version=model.version, propensity=served_with[i], explore=explore_json,
                            online=online_json, decision_id=ids[i])
                   for i, (q, r) in enumerate(zip(queries, ranked, strict=True))]
    return Decided(ranked, ids, served_with, pending)


async def record(request: Request, store: DecisionStore | None, decided: Decided) -> None:
    """Commit the decisions (raises :class:`~oirl.decisions.records.DecisionStoreError`) and count what was served.
    Every answer that carries a decision id leaves after this returns: nothing acknowledged is lost."""
    if store is not None and decided.pending:
        await asyncio.to_thread(store.record, decided.pending)
    request.app.state.usage.add(r.prompt_id for r in decided.ranked)  # served (and recorded, if recording): the live shares
