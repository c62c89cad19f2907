"""The service's ASGI layers, outermost first, each deciding before the body is read:

1. :class:`RequestIds`: every request gets an id; an exception no handler took becomes
   ``500 {"detail": "internal error", "request_id"}``, logged with its traceback under
   that id (the client sees no exception text).
2. :class:`KeyCheck`: with an API key set, any path but ``/health`` without the key is a
   401 at once: before the body is read and before a concurrency slot is taken, so
   clients without the key (malformed, oversize or slow bodies) cannot crowd out those
   with it.
3. :class:`ConcurrencyLimit`: a 503 with ``Retry-After`` for a ``/v1`` request beyond the
   number under way (the gateway's ``/v1/chat/completions`` has its own bound instead). uvicorn's ``--limit-concurrency`` does not fit here: it counts every
   connection and task (``/health``, requests without the key) before our key check, and
   answers a plain-text 503 without ``Retry-After``.
4. :class:`BodySizeLimit`: a 413 for a body over the limit, declared or streamed.
"""

from __future__ import annotations

import hmac
import logging
import uuid

from fastapi.responses import JSONResponse

log = logging.getLogger("oirl.serve")
OPEN_PATHS = ("/health",)
#: Bounded by their own limit (the gateway's requests with the upstream, oirl.serve.gateway), not by the service's:
#: a slow upstream must not fill the slots /v1/recommend needs.
UNGATED_PATHS = ("/v1/chat/completions",)


def unavailable(detail: str, retry_after: int, request_id: str | None = None) -> JSONResponse:
    body = {"detail": detail} if request_id is None else {"detail": detail, "request_id": request_id}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


def request_id_of(scope) -> str | None:
    return (scope.get("state") or {}).get("request_id")


class RequestIds:
    """Gives each request an id (``scope["state"]["request_id"]``) and turns an uncaught exception into a 500 naming it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex[:16]
        scope["state"] = {**(scope.get("state") or {}), "request_id": request_id}
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            if started:  # part of an answer is out: all we can do is end the connection
                raise
            response = JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)
            await response(scope, receive, send)


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (compared in constant time)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), key.encode())


def has_key(scope, key: str | None) -> bool:
    """Whether the request may see what the key guards (always, when no key is set)."""
    if not key:
        return True
    headers = dict(scope.get("headers") or [])
    return key_matches(headers.get(b"authorization", b"").decode("latin-1"), key)


def unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "missing or wrong API key (Authorization: Bearer <key>)"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


class KeyCheck:
    """401 for any path but :data:`OPEN_PATHS` without the key, before anything else happens."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.key = key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key and scope["path"] not in OPEN_PATHS and not has_key(scope, self.key):
            return await unauthorized()(scope, receive, send)
        return await self.app(scope, receive, send)


class Gate:
    """Counts the /v1 requests under way."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0


class ConcurrencyLimit:
    """A 503 with Retry-After, before the body is read, for a /v1 request beyond ``gate.limit`` under way."""

    def __init__(self, app, gate: Gate, retry_after: int):
        self.app = app
        self.gate = gate
        self.retry_after = retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or scope["path"] in UNGATED_PATHS:
            return await self.app(scope, receive, send)
        if self.gate.in_flight >= self.gate.limit:
            response = unavailable(f"{self.gate.limit} requests under way; try again shortly", self.retry_after)
            return await response(scope, receive, send)
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1


class BodySizeLimit:
    """413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
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
