"""The HTTP service: a thin FastAPI shell over :class:`oirl.recommender.Recommender`.

    app = create_app(Recommender.load("models/gsm8k"))

Endpoints: ``POST /v1/recommend``, ``POST /v1/score``, ``GET /v1/prompts``,
``GET /v1/model``, ``GET /health`` and the OpenAPI schema at ``/openapi.json``.

Concurrent requests are embedded together: each request hands its texts to one
:class:`EmbeddingBatcher`, which embeds whatever has queued up while the previous
batch ran, in one model call. An idle server adds no wait, a busy one amortises the
model over many queries. Query vectors are kept in a bounded in-memory LRU cache;
the bundle's prompt vectors are loaded once, at start-up.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from oirl.embed import MemoryCachedEmbedder, get_embedder
from oirl.errors import OirlError, UnknownPromptError
from oirl.recommender import Candidate, Recommender

MAX_QUERIES = 256
MAX_CANDIDATES = 256
MAX_PAIRS = 4096
MAX_BODY_BYTES = 1 << 20  # 1 MiB
MAX_TEXT_CHARS = 20_000
QUERY_CACHE_ITEMS = 50_000

Policy = Literal["argmax", "conservative", "fallback"]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


def _non_blank(values: list[str] | None, what: str) -> list[str] | None:
    for i, value in enumerate(values or []):
        if not value.strip():
            raise ValueError(f"{what} {i} is empty")
    return values


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[Text] = Field(min_length=1, max_length=MAX_QUERIES, description="Query texts.")
    candidates: list[Text] | None = Field(None, max_length=MAX_CANDIDATES, description="Candidate prompt texts; new prompts allowed.")
    candidate_ids: list[str] | None = Field(None, max_length=MAX_CANDIDATES, description="Ids of bundle prompts to choose among.")
    top_k: int = Field(3, ge=1, le=MAX_CANDIDATES, description="Length of each ranking.")
    policy: Policy | None = Field(None, description="Selection policy; default: the bundle's, chosen by cross-validation.")

    _check_queries = field_validator("queries")(lambda v: _non_blank(v, "query"))
    _check_candidates = field_validator("candidates")(lambda v: _non_blank(v, "candidate"))


class RankedPrompt(BaseModel):
    prompt_id: str
    prompt: str
    score: float


class RecommendResult(BaseModel):
    index: int
    prompt_id: str
    prompt: str
    score: float
    ranking: list[RankedPrompt]


class RecommendResponse(BaseModel):
    object: Literal["prompt.recommendation"] = "prompt.recommendation"
    model_version: str
    results: list[RecommendResult]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text
    prompt: Text

    @field_validator("query", "prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty text")
        return value


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_PAIRS)


class ScoreResponse(BaseModel):
    model_version: str
    scores: list[float]


class PromptEntry(BaseModel):
    prompt_id: str
    prompt: str
    train_mean_reward: float


class PromptsResponse(BaseModel):
    model_version: str
    prompts: list[PromptEntry]
    default_prompt_id: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model_version: str


class EmbeddingBatcher:
    """Collects texts from concurrent requests and embeds them in one call per batch."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], max_batch: int = 512):
        self._embed = embed
        self._max_batch = max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oirl-embed")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=False)

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            size = len(items[0][0])
            while not self._queue.empty() and size < self._max_batch:
                items.append(self._queue.get_nowait())
                size += len(items[-1][0])
            texts = [t for batch, _ in items for t in batch]
            try:
                vectors = await loop.run_in_executor(self._executor, self._embed, texts)
            except Exception as exc:  # hand the failure to every waiting request
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in items:
                if not future.done():
                    future.set_result(vectors[start : start + len(batch)])
                start += len(batch)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        received = 0
        rejected = False

        async def limited_receive():
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not rejected:
                        rejected = True
                        await self._reject(send)
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded_send(message):
            if not rejected:  # the 413 is already out: drop whatever the app answers
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def create_app(recommender: Recommender, *, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the service around a loaded bundle. ``api_key`` (or ``$OIRL_API_KEY``) turns on auth."""
    api_key = api_key if api_key is not None else os.environ.get("OIRL_API_KEY") or None
    query_embedder = MemoryCachedEmbedder(get_embedder(recommender.embedder_spec), max_items=QUERY_CACHE_ITEMS)
    recommender.set_query_embedder(query_embedder)
    batcher = EmbeddingBatcher(query_embedder.embed)
    version = recommender.fingerprint or "unsaved"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        query_embedder.embed(["warm up the embedding model"])  # load weights before the first request
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="oirl", version=version, summary="Recommend the best prompt per query.", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, limit=max_body_bytes)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized):
        return JSONResponse({"detail": "missing or wrong API key (Authorization: Bearer <key>)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UnknownPromptError)
    async def _unknown_prompt(request: Request, exc: UnknownPromptError):
        return JSONResponse({"detail": str(exc), "unknown_ids": exc.unknown}, status_code=404)

    @app.exception_handler(OirlError)
    async def _bad_input(request: Request, exc: OirlError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    protected = [Depends(authorize)]

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(model_version=version)

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=protected)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        candidates = [Candidate(text) for text in body.candidates] if body.candidates else None
        chosen = recommender.resolve_candidates(candidates, body.candidate_ids)
        new_texts = recommender.texts_to_embed(chosen)
        vectors = await batcher.embed(body.queries + new_texts)
        n = len(body.queries)
        candidate_vectors = recommender.candidate_vectors(chosen, vectors[n:])
        scores = await asyncio.to_thread(recommender.score_vectors, vectors[:n], candidate_vectors)
        ranked = recommender.rank(body.queries, scores, chosen, policy=body.policy, top_k=body.top_k)
        results = [RecommendResult(index=i, prompt_id=r.prompt_id, prompt=r.prompt, score=r.score, ranking=r.ranking) for i, r in enumerate(ranked)]
        return RecommendResponse(model_version=version, results=results)

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=protected)
    async def score(body: ScoreRequest) -> ScoreResponse:
        queries = [p.query for p in body.pairs]
        resolved = [recommender.as_candidate(p.prompt) for p in body.pairs]
        new_texts = recommender.texts_to_embed(resolved)
        vectors = await batcher.embed(queries + new_texts)
        prompt_vectors = recommender.candidate_vectors(resolved, vectors[len(queries):])
        scores = await asyncio.to_thread(recommender.score_pairs, vectors[: len(queries)], prompt_vectors)
        return ScoreResponse(model_version=version, scores=[float(s) for s in scores])

    @app.get("/v1/prompts", response_model=PromptsResponse, dependencies=protected)
    async def prompts() -> PromptsResponse:
        entries = [PromptEntry(prompt_id=p.prompt_id, prompt=p.prompt, train_mean_reward=recommender.prior[p.prompt_id]) for p in recommender.prompts]
        return PromptsResponse(model_version=version, prompts=entries, default_prompt_id=recommender.default_prompt_id)

    @app.get("/v1/model", dependencies=protected)
    async def model() -> dict:
        return {
            "model_version": version,
            "embedder": recommender.embedder_spec,
            "model": {"kind": recommender.model.name, "params": recommender.model.get_params()},
            "features": recommender.layout,
            "policy": {"default": recommender.default_policy,
                       "conservative_margin": None if np.isinf(recommender.margin) else recommender.margin,
                       "fallback_threshold": recommender.threshold, "default_prompt_id": recommender.default_prompt_id},
            "limits": {"queries": MAX_QUERIES, "candidates": MAX_CANDIDATES, "pairs": MAX_PAIRS, "body_bytes": max_body_bytes},
            **recommender.metadata,
        }

    return app


class _Unauthorized(Exception):
    pass


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: the bundle directory comes from ``$OIRL_MODEL_DIR``."""
    return create_app(Recommender.load(os.environ["OIRL_MODEL_DIR"]))
