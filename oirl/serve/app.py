"""The HTTP service: a thin FastAPI shell over :class:`oirl.recommender.recommender.Recommender`.

    app = create_app(load_bundle("models/gsm8k"))

Endpoints: ``POST /v1/recommend``, ``POST /v1/score``, ``POST /v1/feedback``,
``GET /v1/prompts``, ``GET /v1/model``, ``GET /health`` and the OpenAPI schema at ``/openapi.json`` (behind
the key when one is set; ``/docs`` and ``/redoc`` are then off).

Everything is bounded, and every bound is listed in ``/v1/model`` under ``limits``:

* per request: the field lengths the schema states, a body of ``body_bytes``, at most
  ``scored_pairs`` (query, prompt) pairs to score and ``texts_to_embed`` distinct texts
  (checked before anything is embedded: 422 naming the cap);
* per process: ``concurrent_requests`` requests under way (one more gets a 503 at once),
  an embedding queue of ``queued_texts`` texts (a request that does not fit gets a 503 at
  once), one embedding thread, and two scoring threads: one for requests of up to 1,024
  pairs, one for larger ones (one large score matrix in memory at a time, and small
  requests never wait behind it).

Concurrent requests share model calls: the :class:`EmbeddingBatcher` keeps an LRU of
vectors by text hash, queues each request's new texts, and gives each model call up to
``embed_batch`` texts taken one per waiting request in turn, oldest first; while small
requests keep coming, at most ``embed_share`` from one request. A request of a few texts
is done within a call or two while a 1,024-text one proceeds alongside. A request whose
texts see no progress for ``stall_seconds`` gets a 503 and leaves the queue; an
exception in a model call fails only the requests in that call.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from oirl.errors import OirlError, UnknownPromptError
from oirl.policy.explore import draw, explorer
from oirl.policy.policies import POLICIES
from oirl.recommender.bundle import load_bundle
from oirl.recommender.recommender import Candidate, Recommender
from oirl.serve.runtime import (
    MAX_BODY_BYTES,
    BodySizeLimit,
    ConcurrencyLimit,
    EmbeddingBatcher,
    EmbeddingFailed,
    Overloaded,
    _Gate,
    _length_sorted,
    _unavailable,
)

MAX_QUERIES = 256
MAX_CANDIDATES = 256
MAX_PAIRS = 4096
MAX_TEXT_CHARS = 20_000
MAX_ID_CHARS = 512
MAX_ERRORS = 20  # validation errors listed in one 422
PREVIEW_CHARS = 100  # of an offending value, in a 422
SMALL_SCORE_PAIRS = 1_024  # up to this many pairs a request is scored on the thread for small ones


@dataclass(frozen=True)
class ServiceLimits:
    """The service's bounds beyond the schema's field lengths (all shown in ``/v1/model``)."""

    scored_pairs: int = 16_384  # (query, prompt) pairs scored per request
    texts_to_embed: int = 1_024  # distinct texts (queries and new prompts) per request
    echoed_prompt_chars: int = 4_000_000  # prompt text one /v1/recommend answer may repeat back
    body_bytes: int = MAX_BODY_BYTES
    concurrent_requests: int = 64  # /v1 requests under way in this process; more get a 503
    queued_texts: int = 4_096  # texts waiting for the embedding model; more get a 503
    embed_batch: int = 48  # texts per model call
    embed_share: int = 4  # texts a request may put into one call while small ones come in: they wait for short calls
    stall_seconds: float = 30.0  # no progress this long: the request gets a 503, /health says unavailable
    query_cache_items: int = 50_000  # vectors kept in memory, by text hash
    retry_after_seconds: int = 2
    # The fast path: when a warm model call measures under `inline_call_ms` at startup (a
    # static embedder; a small reward model), requests of at most `inline_texts` new texts
    # are embedded, and of at most `inline_pairs` pairs scored, on the event loop itself.
    # A thread hop costs more than such a call; a slow model keeps its threads.
    inline_call_ms: float = 2.0
    inline_texts: int = 8
    inline_chars: int = 4_000  # in all, across those texts (the timed call embeds this many)
    inline_pairs: int = 64


# --------------------------------------------------------------------------- request and response models


def _unicode(text: Any) -> Any:
    """A string with any lone surrogate (JSON allows "\\ud800") replaced by U+FFFD: such a
    string can be neither validated, hashed, tokenised nor sent back."""
    if not isinstance(text, str):
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# Some character that is not white space. `\s` differs between regex engines (Python's
# str.isspace() counts \x1c-\x1f and \x85, ECMA-262 counts \ufeff), so the class leaves
# out all of them: the schema means the same to pydantic, the recommender and clients.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=NOT_BLANK), BeforeValidator(_unicode)]
PromptId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=NOT_BLANK), BeforeValidator(_unicode)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _integral(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0, not "3", true or 3.5 (the models are strict)
    return int(value) if isinstance(value, float) and value.is_integer() else value


TopK = Annotated[int, Field(ge=1, le=MAX_CANDIDATES), BeforeValidator(_integral)]
Policy = Literal[tuple(POLICIES)]  # type: ignore[valid-type]

# strict: "3" is not an integer and false is not a cost, as the schema says
_REQUEST = ConfigDict(extra="forbid", strict=True)


class CandidateIn(BaseModel):
    """A candidate prompt as an object: its text, and optionally an id and a cost."""

    model_config = _REQUEST
    prompt: Text = Field(description="The prompt text.")
    prompt_id: PromptId | None = Field(None, description="Id to report it under (default: `p-` and a hash of the text). "
                                                         "A bundle prompt's text keeps the bundle's id.")
    cost: NonNegative | None = Field(None, description="Cost of one call with this prompt, for the cost-aware policy; "
                                                       "replaces the bundle's cost for a bundle prompt.")


class EpsilonGreedy(BaseModel):
    """Explore around the policy's pick: it has probability 1 - epsilon + epsilon / K, every other candidate epsilon / K."""

    model_config = _REQUEST
    method: Literal["epsilon"]
    epsilon: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Softmax(BaseModel):
    """Draw a candidate with probability proportional to exp(score / temperature)."""

    model_config = _REQUEST
    method: Literal["softmax"]
    temperature: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


Explore = Annotated[EpsilonGreedy | Softmax, Field(discriminator="method")]
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class RecommendRequest(BaseModel):
    model_config = _REQUEST
    queries: list[Text] = Field(min_length=1, max_length=MAX_QUERIES, description="Query texts.")
    candidates: list[Text | CandidateIn] | None = Field(
        None, max_length=MAX_CANDIDATES,
        description="Candidate prompts, as texts or objects (new prompts allowed; give a `cost` to price one for the "
                    "cost-aware policy). With `candidate_ids` too, the candidates are the union: the named bundle "
                    "prompts, then these; naming one prompt twice is a 409. Neither: the bundle's prompts.")
    candidate_ids: list[PromptId] | None = Field(
        None, max_length=MAX_CANDIDATES, json_schema_extra={"uniqueItems": True},
        description="Ids of bundle prompts to choose among (unknown ids: 404), joined with `candidates`.")
    top_k: TopK = Field(3, description="Length of each ranking.")
    policy: Policy | None = Field(None, description="Selection policy; default: the bundle's, chosen by cross-validation. "
                                                    "`cost-aware` needs a cost for every candidate (the bundle's or given).")
    cost_weight: NonNegative = Field(0.0, description="Lambda of the cost-aware policy (reward minus lambda x cost); "
                                                      "other policies ignore it.")
    explore: Explore | None = Field(None, description="Serve a random candidate instead of always the policy's pick, and "
                                                      "report the probability it was drawn with (`propensity`); default: the "
                                                      "server's `--explore`, if any. `{\"method\": \"epsilon\", \"epsilon\": 0}` "
                                                      "turns a server default off.")

    @field_validator("candidate_ids")
    @classmethod
    def _unique_ids(cls, ids: list[str] | None) -> list[str] | None:
        if ids and len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        return ids


class RankedPrompt(BaseModel):
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool = Field(description="A bundle prompt (trained on), not a new one passed as text.")


class RecommendResult(BaseModel):
    index: int
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool
    ranking: list[RankedPrompt]
    decision_id: str | None = Field(None, description="Id to send the outcome to `/v1/feedback` with (when the server "
                                                       "records decisions).")
    propensity: float | None = Field(None, description="The probability with which this prompt was served (1.0 when not "
                                                       "exploring); set when the request explores or the server records decisions.")


class FeedbackRequest(BaseModel):
    model_config = _REQUEST
    decision_id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)] = Field(description="A `decision_id` from `/v1/recommend`.")
    reward: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(description="The outcome, in [0, 1].")


class FeedbackResponse(BaseModel):
    recorded: Literal[True] = True
    decision_id: str
    reward: float
    duplicate: bool = Field(description="This reward had been recorded before (a retry).")


class RecommendResponse(BaseModel):
    object: Literal["prompt.recommendation"] = "prompt.recommendation"
    model_version: str
    policy: str = Field(description="The policy applied.")
    results: list[RecommendResult]


class Pair(BaseModel):
    model_config = _REQUEST
    query: Text
    prompt: Text


class ScoreRequest(BaseModel):
    model_config = _REQUEST
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
    status: Literal["ok", "unavailable"]
    reason: str | None = Field(None, description="Why the service is unavailable.")
    model_version: str
    queued_texts: int = Field(description="Texts waiting for the embedding model.")
    queued_requests: int
    requests_in_flight: int
    embedding_call_seconds: float | None = Field(description="How long the current model call has run, if one runs.")
    texts_embedded: int = Field(description="Texts embedded since start-up.")


class ErrorResponse(BaseModel):
    detail: str


class UnknownIdsResponse(BaseModel):
    detail: str
    unknown_ids: list[str] = Field(description="The unknown ids (the first 20, each cut to 100 characters).")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: str | None = Field(None, description="The start of the offending value (at most 100 characters).")


class ValidationErrorResponse(BaseModel):
    detail: list[FieldError] = Field(description="The first 20 errors.")
    error_count: int


# --------------------------------------------------------------------------- errors


class RequestRefused(OirlError):
    """A schema-valid request refused for what the schema cannot say: a per-request cap,
    a cost the cost-aware policy lacks (422, with ``loc`` and ``type``)."""

    def __init__(self, message: str, kind: str, loc: tuple[str, ...] = ("body",)):
        super().__init__(message)
        self.kind = kind
        self.loc = loc


class CandidateConflict(OirlError):
    """A candidate set naming one prompt twice, or a bundle id for another text (409)."""


class _Unauthorized(Exception):
    pass


def _cut(text: str, limit: int) -> str:
    return _unicode(text if len(text) <= limit else text[: limit - 1] + "…")


def _preview(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float)):
        return None if value is None else str(value)
    if isinstance(value, str):
        return _cut(value, PREVIEW_CHARS)
    if isinstance(value, (list, tuple)):
        return f"array of {len(value):,} items"
    if isinstance(value, dict):
        return f"object with {len(value):,} keys"
    return type(value).__name__


def _error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422 body that does not echo the request: loc, msg, type and a short input preview."""
    shown = []
    for error in errors[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else _cut(str(part), PREVIEW_CHARS) for part in error.get("loc", ())]
        shown.append({"loc": loc, "msg": _cut(str(error.get("msg", "")), 500), "type": str(error.get("type", "value_error")),
                      "input": _preview(error.get("input"))})
    return {"detail": shown, "error_count": len(errors)}


# --------------------------------------------------------------------------- the app


def _responses(*codes: int, auth: bool) -> dict[int | str, dict[str, Any]]:
    retry_after = {"Retry-After": {"description": "Seconds to wait before trying again.", "required": True,
                                   "schema": {"type": "integer"}}}
    table: dict[int, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "A body that cannot be read as text (not UTF-8)."},
        401: {"model": ErrorResponse, "description": "No or a wrong `Authorization: Bearer` key."},
        404: {"model": UnknownIdsResponse, "description": "Unknown `candidate_ids`, named in `unknown_ids`."},
        409: {"model": ErrorResponse, "description": "The candidates name one prompt twice (by id or text), "
                                                     "or reuse a bundle prompt's id for another text."},
        413: {"model": ErrorResponse, "description": "A request body over `limits.body_bytes` (1 MiB)."},
        422: {"model": ValidationErrorResponse,
              "description": "A request the schema refuses (the first 20 errors, with `loc`); or one over a per-request cap "
                             "(`limits.scored_pairs` scored pairs, `limits.texts_to_embed` distinct texts, "
                             "`limits.echoed_prompt_chars` of prompt text to answer); or the cost-aware policy "
                             "with a candidate whose cost is unknown."},
        503: {"model": ErrorResponse, "headers": retry_after,
              "description": "Busy (`limits.concurrent_requests` requests under way, a full embedding queue, or no "
                             "embedding progress for `limits.stall_seconds`); try again after `Retry-After` seconds."},
    }
    return {code: table[code] for code in codes if code != 401 or auth}


def _cost_rule(recommender: Recommender) -> dict[str, Any]:
    """JSON Schema ``if``/``then`` for a recommend request: what the cost-aware policy
    needs from a candidate set, given which of this bundle's prompts have a cost."""
    costed = [p for p in recommender.prompts if np.isfinite(recommender.costs.get(p.prompt_id, np.nan))]
    texts = [p.prompt for p in costed]
    options: list[dict[str, Any]] = [{"type": "object", "required": ["prompt", "cost"], "properties": {"cost": {"type": "number"}}}]
    if costed:
        options += [{"type": "string", "enum": texts}, {"type": "object", "required": ["prompt"], "properties": {"prompt": {"enum": texts}}}]
    then: dict[str, Any] = {"properties": {
        "candidates": {"items": {"anyOf": options}},
        "candidate_ids": {"items": {"enum": [p.prompt_id for p in costed]}} if costed else {"maxItems": 0},
    }}
    if len(costed) < len(recommender.prompts):  # then the default candidates (all bundle prompts) will not do
        then["anyOf"] = [{"required": [field], "properties": {field: {"type": "array", "minItems": 1}}}
                         for field in ("candidates", "candidate_ids")]
    if recommender.default_policy == "cost-aware":
        condition = {"properties": {"policy": {"enum": ["cost-aware", None]}}}
    else:
        condition = {"required": ["policy"], "properties": {"policy": {"const": "cost-aware"}}}
    return {"if": condition, "then": then}


def _measure_fast_path(recommender: Recommender, embed: Callable[[list[str]], np.ndarray], limits: ServiceLimits) -> dict[str, bool]:
    """Time the largest call the fast path would make: ``inline_texts`` texts of
    ``inline_chars`` characters in all, and ``inline_pairs`` pairs scored in each shape a
    request can have (many queries x one prompt, a few queries x the bundle's prompts,
    pairs). What runs under ``inline_call_ms`` may run on the event loop (the best of
    three tries, so one hiccup of a busy machine does not decide)."""
    if limits.inline_call_ms <= 0 or limits.inline_texts <= 0:  # turned off
        return {"embed_inline": False, "score_inline": False}
    words = "how fast is one call of the embedding model at the largest size the fast path takes "
    length = max(1, limits.inline_chars // limits.inline_texts)
    texts = [(f"try {i}: " + words * (length // len(words) + 1))[:length] for i in range(limits.inline_texts)]
    embed_seconds = min(_seconds(embed, texts) for _ in range(3))
    prompts = np.asarray(recommender.prompt_vectors, dtype=np.float32)
    pairs = limits.inline_pairs
    queries = np.resize(embed(texts[:2]), (pairs, prompts.shape[1]))  # distinct rows do not matter to the timing
    shapes = [(recommender.score_vectors, queries, prompts[:1]),
              (recommender.score_vectors, queries[: max(1, pairs // len(prompts))], prompts),
              (recommender.score_pairs, queries, np.resize(prompts, (pairs, prompts.shape[1])))]
    score_seconds = max(min(_seconds(function, *args) for _ in range(3)) for function, *args in shapes)
    limit = limits.inline_call_ms / 1000
    return {"embed_inline": embed_seconds < limit, "score_inline": score_seconds < limit}


def _seconds(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def create_app(recommender: Recommender, *, api_key: str | None = None, limits: ServiceLimits | None = None,
               embedder=None, explore: tuple[str, float] | None = None, decisions: str | os.PathLike[str] | None = None) -> FastAPI:
    """Build the service around a loaded bundle.

    ``api_key`` (or ``$OIRL_API_KEY``) turns on bearer auth for everything but
    ``/health``, the schema included. ``embedder`` replaces the bundle's live embedder
    (anything with ``embed(texts, batch_size=...)``). ``explore`` (``("epsilon", 0.1)``
    or ``("softmax", 0.05)``) is the default exploration of ``/v1/recommend``.
    ``decisions`` is an SQLite file (:mod:`oirl.serve.decisions`): every recommendation is
    recorded there before it is answered, and ``/v1/feedback`` records its outcome.
    """
    from oirl.serve.decisions import Decision, DecisionStore, new_decision_id

    api_key = (api_key if api_key is not None else os.environ.get("OIRL_API_KEY")) or None  # "": no auth
    limits = limits or ServiceLimits()
    embedder = embedder if embedder is not None else recommender.embedder
    model_call = _length_sorted(embedder)
    batcher = EmbeddingBatcher(model_call, max_batch=limits.embed_batch, max_share=limits.embed_share,
                               max_queued=limits.queued_texts, stall_seconds=limits.stall_seconds, cache_items=limits.query_cache_items)
    # one large score matrix in memory at a time, on its own thread, so small ones never wait behind it
    scorers = {size: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"oirl-score-{size}") for size in ("small", "large")}
    gate = _Gate(limits.concurrent_requests)
    version = recommender.fingerprint or "unsaved"
    store = DecisionStore(decisions) if decisions is not None else None
    default_explore = None if explore is None else (EpsilonGreedy(method="epsilon", epsilon=explore[1]) if explore[0] == "epsilon"
                                                   else Softmax(method="softmax", temperature=explore[1]))

    fast_path = {"embed_inline": False, "score_inline": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        embedder.embed(["warm up the embedding model"])  # load the weights before the first request
        fast_path.update(_measure_fast_path(recommender, model_call, limits))
        batcher.inline_texts = limits.inline_texts if fast_path["embed_inline"] else 0
        batcher.inline_chars = limits.inline_chars
        await batcher.start()
        yield
        await batcher.stop()
        for pool in scorers.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if store is not None:
            store.close()

    open_docs = api_key is None
    app = FastAPI(title="oirl", version=version, summary="Recommend the best prompt per query.", lifespan=lifespan,
                  openapi_url="/openapi.json" if open_docs else None, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None)
    app.add_middleware(BodySizeLimit, limit=limits.body_bytes)
    app.add_middleware(ConcurrencyLimit, gate=gate, retry_after=limits.retry_after_seconds)  # outermost: refuse first
    app.state.batcher, app.state.gate, app.state.limits = batcher, gate, limits

    bearer = HTTPBearer(auto_error=False, description="The key the server was started with (`OIRL_API_KEY`).")

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise _Unauthorized

    protected = [Security(authorize)] if api_key else []

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized):
        return JSONResponse({"detail": "missing or wrong API key (Authorization: Bearer <key>)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(_error_body(list(exc.errors())), status_code=422)

    @app.exception_handler(UnknownPromptError)
    async def _unknown_prompt(request: Request, exc: UnknownPromptError):
        return JSONResponse({"detail": _cut(str(exc), 1000), "unknown_ids": [_cut(i, PREVIEW_CHARS) for i in exc.unknown[:20]]},
                            status_code=404)

    @app.exception_handler(CandidateConflict)
    async def _conflict(request: Request, exc: CandidateConflict):
        return JSONResponse({"detail": _cut(str(exc), 1000)}, status_code=409)

    @app.exception_handler(RequestRefused)
    async def _refused(request: Request, exc: RequestRefused):
        return JSONResponse(_error_body([{"loc": list(exc.loc), "msg": str(exc), "type": exc.kind}]), status_code=422)

    @app.exception_handler(OirlError)
    async def _bad_input(request: Request, exc: OirlError):
        return JSONResponse(_error_body([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]), status_code=422)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _unavailable(str(exc), limits.retry_after_seconds)

    @app.exception_handler(EmbeddingFailed)
    async def _embedding_failed(request: Request, exc: EmbeddingFailed):
        return JSONResponse({"detail": _cut(f"embedding failed: {exc}", 1000)}, status_code=500)

    def check_size(pairs: int, pairs_label: str, texts: list[str]) -> None:
        if pairs > limits.scored_pairs:
            raise RequestRefused(f"{pairs_label} = {pairs:,} pairs to score exceeds the cap of {limits.scored_pairs:,} per request",
                                 "too_many_pairs")
        distinct = len(set(texts))
        if distinct > limits.texts_to_embed:
            raise RequestRefused(f"{distinct:,} distinct texts to embed (queries and new prompts) exceeds the cap of "
                                 f"{limits.texts_to_embed:,} per request", "too_many_texts")

    async def score_in_thread(pairs: int, function, *args):
        if fast_path["score_inline"] and pairs <= limits.inline_pairs:
            return function(*args)
        pool = scorers["small" if pairs <= SMALL_SCORE_PAIRS else "large"]
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    @app.get("/health", response_model=Health,
             responses={503: {"model": Health, "description": "The embedding worker has stopped or is stuck (`reason`)."}})
    async def health():
        problem = batcher.problem()
        body = Health(status="unavailable" if problem else "ok", reason=problem, model_version=version,
                      queued_texts=batcher.queued_texts, queued_requests=batcher.queued_requests,
                      requests_in_flight=gate.in_flight, embedding_call_seconds=batcher.call_seconds(),
                      texts_embedded=batcher.texts_embedded)
        if problem:
            return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": str(limits.retry_after_seconds)})
        return body

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=protected,
              responses=_responses(400, 401, 404, 409, 413, 422, 503, auth=bool(api_key)))
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        candidates = [Candidate(c) if isinstance(c, str) else Candidate(c.prompt, c.prompt_id or "", c.cost)
                      for c in body.candidates or []]  # already validated: no second pydantic pass
        try:
            chosen = recommender.resolve_candidates(candidates or None, body.candidate_ids or None)
            costs = recommender.candidate_costs(candidates)
        except UnknownPromptError:
            raise
        except OirlError as exc:
            raise CandidateConflict(str(exc)) from None
        new_texts = recommender.texts_to_embed(chosen)
        n = len(body.queries)
        label = f"{n:,} `queries` x {len(chosen):,} candidates" if candidates or body.candidate_ids else \
            f"{n:,} `queries` x the bundle's {len(chosen):,} prompts"
        check_size(n * len(chosen), label, body.queries + new_texts)
        lengths = sorted((len(c.prompt) for c in chosen), reverse=True)
        echoed = n * (sum(lengths[: body.top_k]) + lengths[0])
        if echoed > limits.echoed_prompt_chars:
            raise RequestRefused(f"the answer would repeat {echoed:,} characters of prompt text ({n:,} `queries` x the "
                                 f"`top_k` longest candidates), over the cap of {limits.echoed_prompt_chars:,}; lower "
                                 "`top_k` or send fewer queries per request", "too_much_prompt_text")
        try:
            rule = recommender.policy(body.policy, chosen, costs=costs, cost_weight=body.cost_weight)  # cost-aware without costs: refused before embedding
        except OirlError as exc:
            raise RequestRefused(str(exc), "missing_cost", ("body", "policy")) from None
        policy = rule.name
        exploration = body.explore or default_explore
        vectors = await batcher.embed(body.queries + new_texts)
        candidate_vectors = recommender.candidate_vectors(chosen, vectors[n:])

        def score_and_rank():
            scores = recommender.score_vectors(vectors[:n], candidate_vectors)
            picks = propensity = None
            if exploration is not None:
                parameter = exploration.epsilon if exploration.method == "epsilon" else exploration.temperature
                picks, propensity = draw(explorer(exploration.method, parameter, rule).probabilities(scores), np.random.default_rng())
            ranked = recommender.rank(body.queries, scores, chosen, rule, top_k=body.top_k, picks=picks)
            return ranked, propensity

        ranked, propensity = await score_in_thread(n * len(chosen), score_and_rank)
        in_bundle = {c.prompt_id: recommender.is_bundle_prompt(c) for c in chosen}
        ids = [new_decision_id() if store is not None else None for _ in ranked]  # only what /v1/feedback can take
        served = [float(p) for p in propensity] if propensity is not None else [1.0 if store is not None else None] * len(ranked)
        if store is not None:  # committed before the answer leaves: nothing acknowledged is lost
            explore_json = None if exploration is None else exploration.model_dump()
            chosen_ids, chosen_prompts = tuple(c.prompt_id for c in chosen), tuple(c.prompt for c in chosen)  # shared by every query
            await asyncio.to_thread(store.record, [
                Decision(query=q, candidate_ids=chosen_ids, candidate_prompts=chosen_prompts,
                         prompt_id=r.prompt_id, prompt=r.prompt, score=r.score, policy=policy, model_version=version,
                         propensity=served[i], explore=explore_json, decision_id=ids[i])
                for i, (q, r) in enumerate(zip(body.queries, ranked, strict=True))])
        results = [RecommendResult(index=i, prompt_id=r.prompt_id, prompt=r.prompt, score=r.score, in_bundle=in_bundle[r.prompt_id],
                                   ranking=[RankedPrompt(**item, in_bundle=in_bundle[item["prompt_id"]]) for item in r.ranking],
                                   decision_id=ids[i], propensity=served[i])
                   for i, r in enumerate(ranked)]
        return RecommendResponse(model_version=version, policy=policy, results=results)

    feedback_responses = _responses(400, 401, 409, 413, 422, 503, auth=bool(api_key))
    feedback_responses[404] = {"model": ErrorResponse, "description": "An unknown `decision_id`, or a server started without `--decisions`."}
    feedback_responses[409] = {"model": ErrorResponse, "description": "The decision already has another reward."}

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=protected, responses=feedback_responses)
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Record the outcome of a decision, once: the same reward again is a success, another one a 409."""
        from oirl.serve.decisions import ConflictingFeedbackError, UnknownDecisionError

        if store is None:
            return JSONResponse({"detail": "this server records no decisions (start it with 'oirl serve --decisions PATH')"},
                                status_code=404)
        try:
            result = await asyncio.to_thread(store.feedback, body.decision_id, body.reward)
        except UnknownDecisionError:
            return JSONResponse({"detail": f"unknown decision_id {body.decision_id}"}, status_code=404)
        except ConflictingFeedbackError as exc:
            return JSONResponse({"detail": _cut(str(exc), 1000)}, status_code=409)
        return FeedbackResponse(decision_id=result.decision_id, reward=result.reward, duplicate=result.duplicate)

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=protected,
              responses=_responses(400, 401, 413, 422, 503, auth=bool(api_key)))
    async def score(body: ScoreRequest) -> ScoreResponse:
        queries = [p.query for p in body.pairs]
        resolved = [recommender.as_candidate(p.prompt) for p in body.pairs]
        new_texts = recommender.texts_to_embed(resolved)
        check_size(len(queries), "`pairs`", queries + new_texts)
        vectors = await batcher.embed(queries + new_texts)
        prompt_vectors = recommender.candidate_vectors(resolved, vectors[len(queries):])
        scores = await score_in_thread(len(queries), recommender.score_pairs, vectors[: len(queries)], prompt_vectors)
        return ScoreResponse(model_version=version, scores=[float(s) for s in scores])

    @app.get("/v1/prompts", response_model=PromptsResponse, dependencies=protected,
             responses=_responses(401, 413, 503, auth=bool(api_key)))
    async def prompts() -> PromptsResponse:
        entries = [PromptEntry(prompt_id=p.prompt_id, prompt=p.prompt, train_mean_reward=recommender.prior[p.prompt_id]) for p in recommender.prompts]
        return PromptsResponse(model_version=version, prompts=entries, default_prompt_id=recommender.default_prompt_id)

    @app.get("/v1/model", dependencies=protected, responses=_responses(401, 413, 503, auth=bool(api_key)))
    async def model() -> dict:
        return {
            "model_version": version,
            "embedder": recommender.embedder_spec,
            "model": {"kind": recommender.model.name, "params": recommender.model.get_params()},
            "features": recommender.layout,
            "policy": {"default": recommender.default_policy,
                       "conservative_margin": None if np.isinf(recommender.margin) else recommender.margin,
                       "fallback_threshold": recommender.threshold, "default_prompt_id": recommender.default_prompt_id},
            "feedback": {"decisions": str(decisions) if store is not None else None,
                         "explore": None if default_explore is None else default_explore.model_dump()},
            "limits": {"queries": MAX_QUERIES, "candidates": MAX_CANDIDATES, "pairs": MAX_PAIRS, "text_chars": MAX_TEXT_CHARS,
                       "id_chars": MAX_ID_CHARS, **asdict(limits)},
            "fast_path": dict(fast_path),
            **recommender.metadata,
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["components"]["schemas"]["RecommendRequest"].update(_cost_rule(recommender))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    if not open_docs:  # with a key the schema needs it too; the HTML pages, which cannot send it, are off

        @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
        async def openapi_json() -> JSONResponse:
            return JSONResponse(app.openapi())

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: the bundle directory comes from ``$OIRL_MODEL_DIR``, the
    default exploration from ``$OIRL_EXPLORE`` and the decision file from ``$OIRL_DECISIONS``."""
    from oirl.policy.explore import parse_exploration

    explore = os.environ.get("OIRL_EXPLORE") or None
    return create_app(load_bundle(os.environ["OIRL_MODEL_DIR"]), explore=parse_exploration(explore) if explore else None,
                      decisions=os.environ.get("OIRL_DECISIONS") or None)
