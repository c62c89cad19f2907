"""How the service answers what goes wrong: status, body, and what is logged.

Client mistakes get plain words and the input as sent (cut short, never echoed whole);
server-side failures (a failed model call, a reward model scoring NaN, a decision store that cannot write) get a
short detail and a ``request_id`` under which the server logged the cause: no exception
text and no filesystem path reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from oirl.decisions.records import ConflictingFeedbackError, DecisionStoreError, DuplicateDecisionError, UnknownDecisionError
from oirl.errors import BrokenModel, OirlError, one_line
from oirl.serve.middleware import request_id_of, unavailable
from oirl.serve.runtime import EmbeddingFailed, Overloaded
from oirl.serve.schemas import ErrorResponse, UnknownIdsResponse, ValidationErrorResponse, unicode_text
from oirl.serve.scoring import CandidateConflict, MissingCost, UnknownPromptError

log = logging.getLogger("oirl.serve")
MAX_ERRORS = 20  # validation errors listed in one 422
PREVIEW_CHARS = 100  # of an offending value, in a 422
BLANK = "must not be empty or only white space"


class RequestRefused(OirlError):
    """A schema-valid request refused for what the schema cannot say: a per-request cap,
    a cost the cost-aware policy lacks (422, with ``loc`` and ``type``)."""

    def __init__(self, message: str, kind: str, loc: tuple[str, ...] = ("body",)):
        super().__init__(message)
        self.kind = kind
        self.loc = loc


def cut(text: str, limit: int) -> str:
    return unicode_text(text if len(text) <= limit else text[: limit - 1] + "…")


def preview(value: Any) -> str | int | float | bool | None:
    """The offending value as sent: numbers, booleans and null as they are, texts cut short, containers by size."""
    if value is None or isinstance(value, (bool, int, float)):
        return value if not isinstance(value, float) or value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return cut(value, PREVIEW_CHARS)
    if isinstance(value, (list, tuple)):
        return f"array of {len(value):,} items"
    if isinstance(value, dict):
        return f"object with {len(value):,} keys"
    return type(value).__name__


def plain_message(error: dict[str, Any]) -> str:
    """pydantic's message, in words where it would show a regex or say "string"."""
    kind, context = error.get("type"), error.get("ctx") or {}
    if kind == "string_pattern_mismatch" or (kind == "string_too_short" and context.get("min_length") == 1):
        return BLANK
    return str(error.get("msg", ""))


def error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422 body that does not echo the request: loc, msg, type and the input as sent (short)."""
    shown = []
    for error in errors[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else cut(str(part), PREVIEW_CHARS) for part in error.get("loc", ())]
        shown.append({"loc": loc, "msg": cut(plain_message(error), 500), "type": str(error.get("type", "value_error")),
                      "input": preview(error.get("input"))})
    return {"detail": shown, "error_count": len(errors)}


def _detail(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": cut(detail, 1000), **extra}, status_code=status)


def install_handlers(app: FastAPI, retry_after: int) -> None:
    """Register the answer to each failure (see the module docstring)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(list(exc.errors())), status_code=422)

    @app.exception_handler(UnknownPromptError)
    async def _unknown_prompt(request: Request, exc: UnknownPromptError):
        return _detail(404, str(exc), unknown_ids=[cut(i, PREVIEW_CHARS) for i in exc.unknown[:20]])

    @app.exception_handler(UnknownDecisionError)
    async def _unknown_decision(request: Request, exc: UnknownDecisionError):
        return _detail(404, f"unknown decision_id {cut(exc.decision_id, PREVIEW_CHARS)!r}")

    @app.exception_handler(CandidateConflict)
    async def _conflict(request: Request, exc: CandidateConflict):
        return _detail(409, str(exc))

    @app.exception_handler(ConflictingFeedbackError)
    async def _conflicting_feedback(request: Request, exc: ConflictingFeedbackError):
        return _detail(409, str(exc))

    @app.exception_handler(DuplicateDecisionError)
    async def _duplicate_decision(request: Request, exc: DuplicateDecisionError):  # a client-chosen id used before (the gateway)
        return _detail(409, f"decision_id {cut(exc.decision_id, PREVIEW_CHARS)!r} is already recorded; choose a new one")

    @app.exception_handler(RequestRefused)
    async def _refused(request: Request, exc: RequestRefused):
        return JSONResponse(error_body([{"loc": list(exc.loc), "msg": str(exc), "type": exc.kind}]), status_code=422)

    @app.exception_handler(MissingCost)
    async def _missing_cost(request: Request, exc: MissingCost):
        return JSONResponse(error_body([{"loc": ["body", "policy"], "msg": str(exc), "type": "missing_cost"}]), status_code=422)

    @app.exception_handler(DecisionStoreError)
    async def _store_failed(request: Request, exc: DecisionStoreError):
        request_id = request_id_of(request.scope)
        log.error("request %s: %s", request_id, exc)
        return unavailable("the decision store is unavailable; try again later", retry_after, request_id)

    @app.exception_handler(BrokenModel)
    async def _broken_model(request: Request, exc: BrokenModel):  # the server's fault, whatever the request asked
        request_id = request_id_of(request.scope)
        log.error("request %s: %s", request_id, one_line(exc))
        return JSONResponse({"detail": f"the {exc.model} produced a non-finite score", "request_id": request_id}, status_code=500)

    @app.exception_handler(OirlError)
    async def _bad_input(request: Request, exc: OirlError):
        return JSONResponse(error_body([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]), status_code=422)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return unavailable(str(exc), retry_after)

    @app.exception_handler(EmbeddingFailed)
    async def _embedding_failed(request: Request, exc: EmbeddingFailed):
        request_id = request_id_of(request.scope)
        log.error("request %s: embedding failed: %s", request_id, exc)
        return JSONResponse({"detail": "embedding failed", "request_id": request_id}, status_code=500)


RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before trying again.", "required": True,
                                      "schema": {"type": "integer"}}}
_RESPONSES: dict[int, dict[str, Any]] = {
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
    500: {"model": ErrorResponse, "description": "A failure on the server's side, logged under `request_id`."},
    503: {"model": ErrorResponse, "headers": RETRY_AFTER_HEADER,
          "description": "Busy (`limits.concurrent_requests` requests under way, a full embedding queue, or no "
                         "embedding progress for `limits.stall_seconds`), or the decision store cannot write; "
                         "try again after `Retry-After` seconds."},
}


def responses(*codes: int, **replaced: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route: these statuses, with ``replaced`` ones (``_404={...}``) spelled out."""
    table = {code: _RESPONSES[code] for code in codes}
    for name, entry in replaced.items():
        table[int(name.lstrip("_"))] = entry
    return table


def unauthorized_response() -> dict[int | str, dict[str, Any]]:
    return {401: _RESPONSES[401]}
