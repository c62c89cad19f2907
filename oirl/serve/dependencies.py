"""What a route gets from the app, as FastAPI dependencies (``app.state`` is set by :func:`oirl.serve.app.create_app`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from oirl.decisions.store import DecisionStore
from oirl.serve.limits import SMALL_SCORE_PAIRS, ServiceLimits
from oirl.serve.middleware import key_matches
from oirl.serve.reload import Serving

bearer = HTTPBearer(auto_error=False, description="The key the server was started with (`OIRL_API_KEY`).")


async def require_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The key, when one is set. :class:`oirl.serve.middleware.KeyCheck` has refused requests
    without it before their body was read; this declares the scheme in the OpenAPI schema
    and holds should the router be mounted without that middleware."""
    key = request.app.state.api_key
    if key and (credentials is None or not key_matches(f"Bearer {credentials.credentials}", key)):
        raise HTTPException(401, "missing or wrong API key (Authorization: Bearer <key>)", headers={"WWW-Authenticate": "Bearer"})


async def _serving(request: Request) -> AsyncIterator[Serving]:
    async with request.app.state.slot.use() as serving:  # taken once: a reload meanwhile does not change this request's model
        yield serving


def _store(request: Request) -> DecisionStore | None:
    return request.app.state.store


def _limits(request: Request) -> ServiceLimits:
    return request.app.state.limits


class Scoring:
    """The two scoring threads: one for requests of up to :data:`SMALL_SCORE_PAIRS` pairs, one
    for larger ones (one large score matrix in memory at a time, and small requests never
    wait behind it); a request under the fast path's size is scored on the event loop."""

    def __init__(self, pools: dict[str, ThreadPoolExecutor], limits: ServiceLimits):
        self.pools = pools
        self.limits = limits

    async def run(self, serving: Serving, pairs: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(function, *args, **kwargs)
        if serving.fast_path["score_inline"] and pairs <= self.limits.inline_pairs:
            return call()
        pool = self.pools["small" if pairs <= SMALL_SCORE_PAIRS else "large"]
        return await asyncio.get_running_loop().run_in_executor(pool, call)


def _scoring(request: Request) -> Scoring:
    return request.app.state.scoring


Served = Annotated[Serving, Depends(_serving)]
Store = Annotated[DecisionStore | None, Depends(_store)]
Limits = Annotated[ServiceLimits, Depends(_limits)]
Scorer = Annotated[Scoring, Depends(_scoring)]
