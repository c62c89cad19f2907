"""The endpoints: ``/v1/*`` on :data:`router` (behind the key when one is set) and ``/health`` on :data:`health_router`.

Every handler takes the model once (:data:`~oirl.serve.dependencies.Served`) and asks
it, never the recommender, for what it needs (:mod:`oirl.serve.scoring`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oirl.serve.decide import check_size, decide
from oirl.serve.dependencies import Limits, Scorer, Served, Store
from oirl.serve.middleware import has_key
from oirl.serve.problems import RequestRefused, responses
from oirl.serve.reload import Serving
from oirl.serve.schemas import (
    MAX_CANDIDATES,
    MAX_ID_CHARS,
    MAX_PAIRS,
    MAX_QUERIES,
    MAX_TEXT_CHARS,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    PromptEntry,
    PromptsResponse,
    RankedPrompt,
    RecommendRequest,
    RecommendResponse,
    RecommendResult,
    ScoreRequest,
    ScoreResponse,
)

router = APIRouter()
health_router = APIRouter()


@router.post("/v1/recommend", response_model=RecommendResponse, responses=responses(400, 404, 409, 413, 422, 503))
async def recommend(body: RecommendRequest, request: Request, served: Served, store: Store, limits: Limits,
                    scoring: Scorer) -> RecommendResponse:
    model = served.model
    given = [(c, None, None) if isinstance(c, str) else (c.prompt, c.prompt_id, c.cost) for c in body.candidates or []]
    candidates = model.candidate_set(given, body.candidate_ids)
    n = len(body.queries)
    label = f"{n:,} `queries` x {candidates.size:,} candidates" if candidates.given else \
        f"{n:,} `queries` x the bundle's {candidates.size:,} prompts"
    check_size(limits, n * candidates.size, label, body.queries + candidates.new_texts)
    lengths = sorted(candidates.prompt_lengths(), reverse=True)
    echoed = n * (sum(lengths[: body.top_k]) + lengths[0])
    if echoed > limits.echoed_prompt_chars:
        raise RequestRefused(f"the answer would repeat {echoed:,} characters of prompt text ({n:,} `queries` x the "
                             f"`top_k` longest candidates), over the cap of {limits.echoed_prompt_chars:,}; lower "
                             "`top_k` or send fewer queries per request", "too_much_prompt_text")
    policy = model.check_policy(body.policy, candidates)  # cost-aware without costs: refused before embedding
    exploration = body.explore or request.app.state.default_explore
    decided = await decide(request, served, store, scoring, body.queries, candidates, policy=policy, top_k=body.top_k,
                           cost_weight=body.cost_weight, exploration=exploration)
    ranked, ids, served_with = decided.ranked, decided.ids, decided.propensities
    flags = candidates.in_bundle
    results = [RecommendResult(index=i, prompt_id=r.prompt_id, prompt=r.prompt, score=r.score, in_bundle=flags[r.prompt_id],
                               ranking=[RankedPrompt(**item, in_bundle=flags[item["prompt_id"]]) for item in r.ranking],
                               decision_id=ids[i], propensity=served_with[i], reason=r.reason)
               for i, r in enumerate(ranked)]
    return RecommendResponse(model_version=model.version, policy=policy, results=results)


_FEEDBACK_RESPONSES = responses(400, 409, 413, 422, 503, _404={
    "model": ErrorResponse, "description": "A `decision_id` the store does not hold (unknown or malformed), or a server "
                                           "started without `--decisions`."}, _409={
    "model": ErrorResponse, "description": "The decision already has another reward."})


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=_FEEDBACK_RESPONSES)
async def feedback(body: FeedbackRequest, request: Request, store: Store) -> FeedbackResponse:
    """Record the outcome of a decision, once: the same reward again is a success, another one a 409."""
    if store is None:
        return JSONResponse({"detail": "this server records no decisions (start it with 'oirl serve --decisions PATH')"},
                            status_code=404)
    result = await asyncio.to_thread(store.feedback, body.decision_id, body.reward)
    if request.app.state.online is not None and not result.duplicate:
        request.app.state.online.invalidate()  # what this worker serves next rests on this outcome
    return FeedbackResponse(decision_id=result.decision_id, reward=result.reward, duplicate=result.duplicate)


@router.post("/v1/score", response_model=ScoreResponse, responses=responses(400, 413, 422, 503))
async def score(body: ScoreRequest, served: Served, limits: Limits, scoring: Scorer) -> ScoreResponse:
    model = served.model
    queries = [p.query for p in body.pairs]
    prompts, new_texts = model.pair_prompts([p.prompt for p in body.pairs])
    check_size(limits, len(queries), "`pairs`", queries + new_texts)
    vectors = await served.batcher.embed(queries + new_texts)
    scores = await scoring.run(served, len(queries), model.score_pairs, vectors[: len(queries)], prompts, vectors[len(queries):],
                                 queries)
    return ScoreResponse(model_version=model.version, scores=scores)


@router.get("/v1/prompts", response_model=PromptsResponse, response_model_exclude_none=True, responses=responses(413, 503))
async def prompts(served: Served) -> PromptsResponse:
    entries, default_prompt_id = served.model.prompt_table()
    return PromptsResponse(model_version=served.model.version, prompts=[PromptEntry(**e) for e in entries],
                           default_prompt_id=default_prompt_id)


@router.get("/v1/model", responses=responses(413, 503))
async def model(request: Request, served: Served, store: Store, limits: Limits) -> dict:
    """The bundle served now, how the service is set up, every limit (no filesystem path), and
    what it has served since it started (``live``: calls and shares per prompt, :mod:`oirl.serve.usage`)."""
    default_explore = request.app.state.default_explore
    described = served.model.describe()
    learner = request.app.state.online
    online = None
    if learner is not None:
        state = await asyncio.to_thread(learner.state, served.model.version)
        online = {"feedback": state.feedback, "strength": learner.strength, "offsets": state.offsets, "counts": state.counts}
    return {
        **described,
        "feedback": {"decisions": Path(store.path).name if store is not None else None,
                     "explore": None if default_explore is None else default_explore.model_dump(), "online": online},
        "limits": {"queries": MAX_QUERIES, "candidates": MAX_CANDIDATES, "pairs": MAX_PAIRS, "text_chars": MAX_TEXT_CHARS,
                   "id_chars": MAX_ID_CHARS, **asdict(limits)},
        "fast_path": dict(served.fast_path),
        "gateway": None if request.app.state.upstream is None else request.app.state.upstream.describe(),
        "live": request.app.state.usage.report(served.model.prompt_costs(), described["policy"]["calibration"]),
    }


@health_router.get("/health", response_model=Health, response_model_exclude_none=True,
                   responses={503: {"model": Health, "description": "The embedding worker has stopped or is stuck "
                                                                    "(`reason`, with the key or when no key is set)."}})
async def health(request: Request, served: Served, limits: Limits):
    """``ok`` or ``unavailable``; the details only with the key, or when no key is set."""
    problem = served.batcher.problem()
    status = "unavailable" if problem else "ok"
    body = Health(status=status)
    if has_key(request.scope, request.app.state.api_key):
        body = _health_details(request, served, status, problem)
    if problem:
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": str(limits.retry_after_seconds)})
    return body


def _health_details(request: Request, served: Serving, status: str, problem: str | None) -> Health:
    batcher = served.batcher
    return Health(status=status, reason=problem, model_version=served.model.version, queued_texts=batcher.queued_texts,
                  queued_requests=batcher.queued_requests, requests_in_flight=request.app.state.gate.in_flight,
                  embedding_call_seconds=batcher.call_seconds(), texts_embedded=batcher.texts_embedded)
