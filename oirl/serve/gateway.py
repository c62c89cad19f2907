"""The gateway: ``POST /v1/chat/completions``, OpenAI-compatible, in front of an upstream.

An application points its OpenAI client at ``oirl serve MODEL_DIR --upstream URL`` instead
of at its LLM server. Per request the bundle's policy (with the server's exploration, as
in ``/v1/recommend``) picks an arm for the last user message; the prompt is applied and
the arm's model and parameters set (:mod:`oirl.serve.chat`); the decision is recorded by
the one decision path (:mod:`oirl.serve.decide`), its commit running while the upstream
works and done before anything is answered (a store that cannot write is a 503, as for
``/v1/recommend``, and the upstream's answer is then not passed on). The upstream's
answer comes back unchanged plus ``"oirl": {"decision_id", "prompt_id", "model_version"}``
and the header ``x-oirl-decision-id``. ``"stream": true`` passes the server-sent events
through as they arrive, each once it is complete (the decision in the header, and in an
SSE comment line before the first event, which clients skip).

Upstream faults stay here: no connection → 502, no answer within the timeout → 504
(one-line ``{"detail", "request_id"}``, one log line, no traceback); the upstream's own
4xx/5xx pass through with their status and body; a stream that breaks off ends with an
SSE ``error`` event in place of its incomplete last one (the OpenAI client raises it). At
most ``max_in_flight`` requests per worker are with the upstream; one more is a 503 at
once, before the body is read. Gateway requests do not count
against the service's ``concurrent_requests``, so a slow upstream never holds up
``/v1/recommend`` or ``/health``. The upstream key comes from the environment variable
``key_env`` names; it is sent upstream only, never logged, never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from oirl.errors import OirlError
from oirl.serve.chat import last_user_message, upstream_body
from oirl.serve.decide import check_size, choose, record
from oirl.serve.dependencies import Limits, Scorer, Store
from oirl.serve.middleware import request_id_of, unavailable
from oirl.serve.problems import RequestRefused, responses
from oirl.serve.schemas import MAX_TEXT_CHARS

log = logging.getLogger("oirl.serve")
gateway_router = APIRouter()
DECISION_HEADER = "x-oirl-decision-id"


@dataclass(frozen=True)
class UpstreamSettings:
    """Where the gateway forwards to: an OpenAI-compatible base URL (``…/v1``)."""

    base_url: str
    key_env: str | None = None  # the name of the environment variable holding the upstream's key
    max_in_flight: int = 64  # requests with the upstream at once, per worker
    timeout_seconds: float = 300.0  # for each read from the upstream (a stream's next event included)
    connect_seconds: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OirlError(f"--upstream {self.base_url!r}: not an http(s) URL (an OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1)")
        if parts.username or parts.password:
            raise OirlError("--upstream: put no credentials in the URL; name the environment variable holding the key with --upstream-key-env")
        if self.key_env is not None and not os.environ.get(self.key_env):
            raise OirlError(f"--upstream-key-env {self.key_env}: that environment variable is not set (or empty)")
        if self.max_in_flight < 1 or not self.timeout_seconds > 0:
            raise OirlError("--upstream-concurrency must be at least 1 and --upstream-timeout above 0")

    @property
    def origin(self) -> str:
        """Scheme, host and port: what ``/v1/model`` shows (no path, which might carry a tenant)."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"


class Upstream:
    """The pooled connection to the upstream and the count of requests with it."""

    def __init__(self, settings: UpstreamSettings):
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(settings.key_env) if settings.key_env else None
        headers = {"accept-encoding": "identity"}  # bytes pass through as sent: no decoding, no re-encoding
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_seconds),
                                        limits=httpx.Limits(max_connections=settings.max_in_flight,
                                                            max_keepalive_connections=settings.max_in_flight))
        self.in_flight = 0

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"upstream": s.origin, "in_flight": self.in_flight, "max_in_flight": s.max_in_flight,
                "timeout_seconds": s.timeout_seconds, "key": bool(s.key_env)}

    async def close(self) -> None:
        await self.client.aclose()


def _own_decision_id(request: Request, store) -> str | None:
    """The decision id the client chose (header ``x-oirl-decision-id``, a UUID): a client that keeps
    its own ids can send ``/v1/feedback`` with one of them later. None: the gateway makes one."""
    value = request.headers.get(DECISION_HEADER)
    if value is None:
        return None
    where = ("header", DECISION_HEADER)
    if store is None:
        raise RequestRefused("this server records no decisions (start it with 'oirl serve --decisions PATH')", "no_store", where)
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise RequestRefused(f"{value[:80]!r} is not a UUID", "uuid_parsing", where) from None


def _passed_on(upstream_headers: httpx.Headers, own: dict[str, str]) -> dict[str, str]:
    """The upstream's headers a client acts on (``Retry-After`` on a 429, rate limits, its request id),
    with the gateway's own; the rest (lengths, encodings, connection) belong to each hop."""
    kept = {k: v for k, v in upstream_headers.items()
            if k.lower() in ("retry-after", "retry-after-ms", "x-request-id") or k.lower().startswith(("x-ratelimit-", "openai-"))}
    return {**kept, **own}


def _fault(exc: httpx.HTTPError, request_id: str | None, headers: dict[str, str]) -> JSONResponse:
    """502 (no connection, a broken answer) or 504 (no answer in time), one log line."""
    timeout = isinstance(exc, httpx.TimeoutException)
    what = "did not answer in time" if timeout else "is unreachable"
    log.warning("request %s: the upstream %s: %s%s", request_id, what, type(exc).__name__, f": {exc}" if str(exc) else "")
    return JSONResponse({"detail": f"the upstream {what} ({type(exc).__name__})", "request_id": request_id},
                        status_code=504 if timeout else 502, headers=headers)


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestRefused("the body is not UTF-8", "unicode_error") from None
    except json.JSONDecodeError as exc:
        raise RequestRefused(f"the body is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", "json_invalid") from None


_GATEWAY_RESPONSES = responses(413, 422, 503, _502={"description": "The upstream is unreachable (`detail`, `request_id`)."},
                               _504={"description": "The upstream did not answer within the timeout."})


@gateway_router.post("/v1/chat/completions", responses=_GATEWAY_RESPONSES)
async def chat_completions(request: Request, store: Store, limits: Limits, scoring: Scorer) -> Response:
    """An OpenAI chat completions request, forwarded with the chosen prompt (and the arm's model) applied."""
    upstream: Upstream = request.app.state.upstream
    if upstream.in_flight >= upstream.settings.max_in_flight:  # before the body is read
        return unavailable(f"{upstream.settings.max_in_flight} requests with the upstream under way; try again shortly",
                           limits.retry_after_seconds)
    upstream.in_flight += 1
    released = handed_over = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            upstream.in_flight -= 1

    try:
        own_id = _own_decision_id(request, store)
        body = await _read_json(request)
        index, message = last_user_message(body)
        query = message[:MAX_TEXT_CHARS]  # what the recommender sees and records; the upstream gets the whole message
        async with request.app.state.slot.use() as served:  # held for the decision only, not for the upstream's answer
            model = served.model
            candidates = model.candidate_set([], None)
            check_size(limits, candidates.size, f"1 query x the bundle's {candidates.size:,} prompts", [query])
            policy = model.check_policy(None, candidates)
            decided = await choose(request, served, store, scoring, [query], candidates, policy=policy, top_k=1, cost_weight=None,
                                   exploration=request.app.state.default_explore, ids=None if own_id is None else [own_id])
            pick, arm = decided.ranked[0], model.arm(decided.ranked[0].prompt_id)
            decision = {"decision_id": decided.ids[0], "prompt_id": pick.prompt_id, "model_version": model.version}
        # The commit runs while the upstream works (it takes longer); nothing is answered before it is done.
        # A client's own id may have been used before: that is found out first, at no cost of an upstream call.
        recording = None
        if own_id is not None:
            await record(request, store, decided)
        else:
            recording = asyncio.ensure_future(record(request, store, decided))
            recording.add_done_callback(lambda task: task.cancelled() or task.exception())  # awaited below; never "unretrieved"
        forwarded = upstream_body(body, index, pick.prompt, arm)
        headers = {DECISION_HEADER: decision["decision_id"]} if decision["decision_id"] else {}
        request_id = request_id_of(request.scope)
        if forwarded.get("stream") is not True:
            response = await _complete(upstream, forwarded, decision, headers, request_id)
        else:
            response = await _stream(upstream, forwarded, decision, headers, request_id, release)
        try:
            if recording is not None:
                await recording  # a store that cannot write: 503 (problems.py), and the upstream's answer is not passed on
        except BaseException:
            if isinstance(response, UpstreamStream):
                await response.answer.aclose()
            raise
        handed_over = isinstance(response, UpstreamStream)  # it lets the slot go when the stream ends
        return response
    finally:
        if not handed_over:
            release()


async def _complete(upstream: Upstream, forwarded: dict[str, Any], decision: dict[str, Any], headers: dict[str, str],
                    request_id: str | None) -> Response:
    try:
        answer = await upstream.client.post(upstream.url, json=forwarded)
    except httpx.HTTPError as exc:
        return _fault(exc, request_id, headers)
    media_type = answer.headers.get("content-type")
    if answer.is_success and (media_type or "").startswith("application/json"):
        try:
            data = answer.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            return JSONResponse({**data, "oirl": decision}, status_code=answer.status_code, headers=_passed_on(answer.headers, headers))
    return Response(answer.content, status_code=answer.status_code, media_type=media_type,
                    headers=_passed_on(answer.headers, headers))  # as it came


async def _stream(upstream: Upstream, forwarded: dict[str, Any], decision: dict[str, Any], headers: dict[str, str],
                  request_id: str | None, release: Callable[[], None]) -> Response:
    request = upstream.client.build_request("POST", upstream.url, json=forwarded)
    try:
        answer = await upstream.client.send(request, stream=True)
    except httpx.HTTPError as exc:
        return _fault(exc, request_id, headers)
    if not answer.is_success:  # the upstream's refusal, as it came
        try:
            content = await answer.aread()
        except httpx.HTTPError as exc:
            return _fault(exc, request_id, headers)
        finally:
            await answer.aclose()
        return Response(content, status_code=answer.status_code, media_type=answer.headers.get("content-type"),
                        headers=_passed_on(answer.headers, headers))
    return UpstreamStream(answer, _passed_on(answer.headers, headers), decision, request_id, release)


class UpstreamStream(Response):
    """An ASGI response relaying the upstream's event stream chunk by chunk, as it arrives.

    It owns the upstream response and the in-flight slot: both are let go when the stream
    ends, breaks off, or the client goes away (then the upstream call is closed too: no
    generation runs on for nobody)."""

    def __init__(self, answer: httpx.Response, headers: dict[str, str], decision: dict[str, Any], request_id: str | None,
                 release: Callable[[], None]):
        # a Response to FastAPI (returned as it is), but sent by __call__ below: no content-length, the upstream's content-type
        self.status_code, self.background = answer.status_code, None
        media_type = answer.headers.get("content-type", "text/event-stream")
        self.raw_headers = [(b"content-type", media_type.encode("latin-1")), (b"cache-control", b"no-cache"),
                            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]
        self.answer, self.decision, self.request_id, self.release = answer, decision, request_id, release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            gone = asyncio.ensure_future(_disconnected(receive))
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, gone):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await self.answer.aclose()
            self.release()

    async def _pump(self, send) -> None:
        if self.answer.headers.get("content-type", "text/event-stream").startswith("text/event-stream"):  # not into a JSON answer
            prelude = f": oirl {json.dumps(self.decision, separators=(',', ':'))}\n\n".encode()
            await send({"type": "http.response.body", "body": prelude, "more_body": True})
        pending = b""  # the start of an event not yet complete: it goes out with its end
        try:
            async for chunk in self.answer.aiter_raw():
                complete, pending = _split_events(pending + chunk)
                if complete:
                    await send({"type": "http.response.body", "body": complete, "more_body": True})
        except httpx.HTTPError as exc:  # a half event would garble the error event: it is dropped
            log.warning("request %s: the upstream's stream broke off: %s", self.request_id, type(exc).__name__)
            error = {"error": {"message": f"the upstream's stream broke off ({type(exc).__name__})", "type": "upstream_error",
                               "request_id": self.request_id}}
            pending = f"data: {json.dumps(error)}\n\n".encode()
        await send({"type": "http.response.body", "body": pending, "more_body": False})


def _split_events(data: bytes) -> tuple[bytes, bytes]:
    """``data`` cut after its last complete server-sent event (a blank line ends one), and the rest."""
    end = max(data.rfind(sep) + len(sep) if data.rfind(sep) >= 0 else 0 for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"))
    return data[:end], data[end:]


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
