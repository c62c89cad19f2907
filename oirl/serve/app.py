"""The HTTP service: a FastAPI app over a loaded bundle.

    app = create_app(load_bundle("models/gsm8k"))

Endpoints (:mod:`oirl.serve.routes`, :mod:`oirl.serve.admin`): ``POST /v1/recommend``,
``POST /v1/score``, ``POST /v1/feedback``, ``GET /v1/prompts``, ``GET /v1/model``,
``POST /v1/admin/reload``, ``GET /health``, with ``--upstream`` the gateway's ``POST
/v1/chat/completions`` (:mod:`oirl.serve.gateway`), and the OpenAPI schema at ``/openapi.json``
(behind the key when one is set; ``/docs`` and ``/redoc`` are then off).

Everything is bounded, and every bound is listed in ``/v1/model`` under ``limits``
(:class:`~oirl.serve.limits.ServiceLimits`):

* per request: the field lengths the schema states, a body of ``body_bytes``, at most
  ``scored_pairs`` (query, prompt) pairs to score and ``texts_to_embed`` distinct texts
  (checked before anything is embedded: 422 naming the cap);
* per process: ``concurrent_requests`` requests with the key under way (one more gets a
  503 at once), an embedding queue of ``queued_texts`` texts (a request that does not fit
  gets a 503 at once), one embedding thread, and two scoring threads: one for requests of
  up to 1,024 pairs, one for larger ones.

Concurrent requests share model calls (:class:`~oirl.serve.runtime.EmbeddingBatcher`).
The layers in front of the routes, and why in that order, are in :mod:`oirl.serve.middleware`;
what each failure answers in :mod:`oirl.serve.problems`; hot reload in :mod:`oirl.serve.reload`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Security
from fastapi.responses import JSONResponse

from oirl.decisions.online import OnlineOffsets
from oirl.decisions.store import DecisionStore
from oirl.errors import OirlError, one_line
from oirl.policy.explore import parse_exploration
from oirl.serve.admin import admin_router
from oirl.serve.dependencies import Scoring, require_key
from oirl.serve.gateway import Upstream, UpstreamSettings, gateway_router
from oirl.serve.limits import ServiceLimits
from oirl.serve.middleware import BodySizeLimit, ConcurrencyLimit, Gate, KeyCheck, RequestIds
from oirl.serve.problems import install_handlers, unauthorized_response
from oirl.serve.reload import ModelSlot, Reloader, load_serving
from oirl.serve.routes import health_router, router
from oirl.serve.schemas import exploration_setting
from oirl.serve.scoring import ServedModel
from oirl.serve.usage import ServedCounts

__all__ = ["ServiceLimits", "app_from_env", "create_app"]
log = logging.getLogger("oirl.serve")


def create_app(recommender, *, api_key: str | None = None, limits: ServiceLimits | None = None, embedder=None,
               explore: tuple[str, float] | None = None, decisions: str | os.PathLike[str] | DecisionStore | None = None,
               model_dir: str | os.PathLike[str] | None = None, reload_on_sighup: bool = False,
               restart_workers: Callable[[], None] | None = None, timer: Callable[[], float] | None = None,
               clock: Callable[[], float] | None = None, online: bool = True, upstream: UpstreamSettings | None = None) -> FastAPI:
    """Build the service around a loaded bundle (a Recommender, or a :class:`ServedModel`).

    ``api_key`` (or ``$OIRL_API_KEY``) turns on bearer auth for everything but
    ``/health``, the schema included. ``embedder`` replaces the bundle's live embedder
    (anything with ``embed(texts, batch_size=...)``). ``explore`` (``("epsilon", 0.1)``
    or ``("softmax", 0.05)``) is the default exploration of ``/v1/recommend``.
    ``decisions`` is an SQLite file or an open store (:mod:`oirl.decisions.store`): every
    recommendation is recorded there before it is answered, and ``/v1/feedback`` records
    its outcome. ``model_dir`` is where ``POST /v1/admin/reload`` (and ``SIGHUP``, with
    ``reload_on_sighup``) finds the next bundle; ``restart_workers`` replaces that in-place
    swap by a restart of every worker (several uvicorn workers). ``timer`` times the
    fast-path check and ``clock`` the embedding batcher (both for tests). With ``online``
    (the default) and a decision store, the feedback since the bundle was trained moves
    what is served before the next retrain (:mod:`oirl.decisions.online`). ``upstream`` turns on
    the gateway, ``POST /v1/chat/completions`` (:mod:`oirl.serve.gateway`).
    """
    api_key = (api_key if api_key is not None else os.environ.get("OIRL_API_KEY")) or None  # "": no auth
    limits = limits or ServiceLimits()
    first = recommender if isinstance(recommender, ServedModel) else ServedModel(recommender, embedder=embedder)
    store = decisions if isinstance(decisions, DecisionStore) or decisions is None else DecisionStore(decisions)
    gateway = Upstream(upstream) if upstream is not None else None
    pools = {size: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"oirl-score-{size}") for size in ("small", "large")}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        slot = ModelSlot(await load_serving(None, limits=limits, model=first, timer=timer, clock=clock))
        reloader = Reloader(slot, model_dir, limits=limits, embedder=embedder, restart_workers=restart_workers, timer=timer, clock=clock)
        reloader.on_swap.append(lambda: setattr(app, "openapi_schema", None))  # the cost rule and version may change
        app.state.slot, app.state.reloader = slot, reloader
        hangup = _reload_on_hangup(reloader) if reload_on_sighup else None
        try:
            yield
        finally:
            if hangup is not None:
                hangup()
            await slot.current.batcher.stop()
            for pool in pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            if store is not None:
                store.close()
            if gateway is not None:
                await gateway.close()

    open_docs = api_key is None
    app = FastAPI(title="oirl", version=first.version, summary="Recommend the best prompt per query.", lifespan=lifespan,
                  openapi_url="/openapi.json" if open_docs else None, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None)
    gate = Gate(limits.concurrent_requests)
    # add_middleware wraps: the last added runs first (see oirl.serve.middleware for the order)
    app.add_middleware(BodySizeLimit, limit=limits.body_bytes)
    app.add_middleware(ConcurrencyLimit, gate=gate, retry_after=limits.retry_after_seconds)
    app.add_middleware(KeyCheck, key=api_key)
    app.add_middleware(RequestIds)
    app.state.api_key, app.state.limits, app.state.gate, app.state.store = api_key, limits, gate, store
    app.state.default_explore = exploration_setting(explore)
    app.state.online = OnlineOffsets(store) if online and store is not None else None
    app.state.scoring = Scoring(pools, limits)
    app.state.usage = ServedCounts()
    app.state.upstream = gateway
    install_handlers(app, limits.retry_after_seconds)

    guard = [Security(require_key)] if api_key else []
    unauthorized = unauthorized_response() if api_key else None
    app.include_router(router, dependencies=guard, responses=unauthorized)
    app.include_router(admin_router, dependencies=guard, responses=unauthorized)
    if gateway is not None:
        app.include_router(gateway_router, dependencies=guard, responses=unauthorized)
    app.include_router(health_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            current = app.state.slot.current.model if hasattr(app.state, "slot") else first
            schema = FastAPI.openapi(app)
            schema["info"]["version"] = current.version
            schema["components"]["schemas"]["RecommendRequest"].update(current.cost_rule())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    if not open_docs:  # with a key the schema needs it too; the HTML pages, which cannot send it, are off

        @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
        async def openapi_json() -> JSONResponse:
            return JSONResponse(app.openapi())

    return app


def _reload_on_hangup(reloader: Reloader) -> Callable[[], None] | None:
    """Reload on SIGHUP (from the event loop), or with several workers take it and do nothing;
    returns the undo, or None where signals cannot be caught here."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task] = set()

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reload (SIGHUP) failed", exc_info=task.exception())

    def hangup() -> None:
        # Several workers: the supervisor owns SIGHUP. One sent to the process group reaches it too,
        # and a worker forwarding it would queue one more restart of every worker per worker.
        if reloader.restart_workers is not None:
            log.debug("SIGHUP in a worker: left to the supervisor")
            return
        task = loop.create_task(reloader.reload("SIGHUP"))
        running.add(task)
        task.add_done_callback(finished)

    try:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):  # not the main thread, or no SIGHUP here
        return None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (what ``oirl serve`` runs): the bundle directory comes from
    ``$OIRL_MODEL_DIR``, the default exploration from ``$OIRL_EXPLORE``, the decision file from
    ``$OIRL_DECISIONS``, the number of workers from ``$OIRL_WORKERS`` and the gateway's upstream as
    :func:`upstream_from_env` reads it. Reloads on SIGHUP."""

    if not log.handlers:  # beside uvicorn's lines, in its style
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    explore = os.environ.get("OIRL_EXPLORE") or None
    online = os.environ.get("OIRL_ONLINE", "1") != "0"
    several = int(os.environ.get("OIRL_WORKERS") or 1) > 1
    try:
        model = ServedModel.load(os.environ["OIRL_MODEL_DIR"])
    except OirlError as exc:  # e.g. a worker started by a restart finds a broken bundle: the old workers keep serving
        log.error("cannot start a worker: %s", one_line(exc))
        sys.exit(3)
    return create_app(model, explore=parse_exploration(explore) if explore else None, decisions=os.environ.get("OIRL_DECISIONS") or None,
                      model_dir=os.environ["OIRL_MODEL_DIR"], reload_on_sighup=True, online=online,
                      restart_workers=(lambda: os.kill(os.getppid(), signal.SIGHUP)) if several else None, upstream=upstream_from_env())


def upstream_from_env() -> UpstreamSettings | None:
    """The gateway's settings from ``$OIRL_UPSTREAM`` (the base URL), ``$OIRL_UPSTREAM_KEY_ENV`` (the *name*
    of the variable holding the key), ``$OIRL_UPSTREAM_CONCURRENCY`` and ``$OIRL_UPSTREAM_TIMEOUT``."""
    url = os.environ.get("OIRL_UPSTREAM") or None
    if url is None:
        return None
    return UpstreamSettings(url, key_env=os.environ.get("OIRL_UPSTREAM_KEY_ENV") or None,
                            max_in_flight=int(os.environ.get("OIRL_UPSTREAM_CONCURRENCY") or 64),
                            timeout_seconds=float(os.environ.get("OIRL_UPSTREAM_TIMEOUT") or 300))
