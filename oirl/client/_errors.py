"""The client's exceptions, one class per kind of failure, and the one for an error answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from oirl.client._retry import REFUSED, retry_after
from oirl.errors import OirlError

SHOWN_FIELD_ERRORS = 3  # in a ValidationError's message; all are in `.errors`


class OirlClientError(OirlError):
    """A call to the service that failed. ``status`` is the HTTP status (None: no answer),
    ``detail`` the server's explanation, ``attempts`` how many requests were made."""

    def __init__(self, message: str, *, status: int | None = None, method: str = "", url: str = "",
                 detail: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url
        self.detail = detail
        self.attempts = attempts


class AuthenticationError(OirlClientError):
    """401: no key or a wrong key (``api_key=`` or ``$OIRL_API_KEY``)."""


class NotFoundError(OirlClientError):
    """404: unknown ``candidate_ids`` or ``decision_id`` (in ``unknown_ids``), or feedback to
    a server that records no decisions (``unknown_ids`` empty)."""

    def __init__(self, message: str, *, unknown_ids: tuple[str, ...] = (), **kwargs: Any):
        super().__init__(message, **kwargs)
        self.unknown_ids = unknown_ids


class ConflictError(OirlClientError):
    """409: candidates naming one prompt twice, or a second, different reward for a decision."""


class PayloadTooLargeError(OirlClientError):
    """413: a request body over the server's ``limits.body_bytes``; send fewer queries per call."""


@dataclass(frozen=True)
class FieldError:
    """One field the server refused: where (``loc``, without the leading ``"body"``), why and the
    start of the value."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    input: str | None = None

    def __str__(self) -> str:
        where = ".".join(map(str, self.loc)) or "body"
        return f"{where}: {self.msg} ({self.type})"


class ValidationError(OirlClientError):
    """422: the request breaks the schema or a per-request cap; ``errors`` lists the fields
    (the server sends the first 20 of ``error_count``)."""

    def __init__(self, message: str, *, errors: tuple[FieldError, ...] = (), error_count: int = 0, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.errors = errors
        self.error_count = error_count


class ServerError(OirlClientError):
    """5xx: the server (or a proxy in front of it) failed on this request."""


class ServiceUnavailableError(ServerError):
    """503 (or 429) still after the retries or the deadline; ``retry_after`` is the server's last
    ``Retry-After`` in seconds (None if it sent none)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ConnectionFailedError(OirlClientError):
    """No answer: the connection failed or timed out. ``maybe_processed`` is true when the request
    may have reached the server (a lost answer), false when it never left this machine."""

    def __init__(self, message: str, *, maybe_processed: bool, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.maybe_processed = maybe_processed


_BY_STATUS: dict[int, type[OirlClientError]] = {401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
                                                413: PayloadTooLargeError, 422: ValidationError}



def error_for(response: httpx.Response, method: str, url: str, *, attempts: int, note: str, has_key: bool,
           unknown: tuple[str, ...]) -> OirlClientError:
    """The exception for an error answer: its class by status, its message naming the call and the server's reason."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if detail is None:
        detail = " ".join(response.text.split())[:200] or response.reason_phrase
    where = f"{method} {url}: {status}"
    common: dict[str, Any] = {"status": status, "method": method, "url": url, "attempts": attempts}
    if status == 422 and isinstance(detail, list):
        errors = tuple(_field_error(e) for e in detail if isinstance(e, dict))
        count = int(body.get("error_count", len(errors)))
        shown = "; ".join(map(str, errors[:SHOWN_FIELD_ERRORS]))
        more = f" (and {count - SHOWN_FIELD_ERRORS} more)" if count > SHOWN_FIELD_ERRORS else ""
        return ValidationError(f"{where} invalid request: {shown}{more}{note}", errors=errors, error_count=count,
                               detail=shown, **common)
    detail = str(detail)
    if status == 401:
        hint = "the api_key given was refused" if has_key else "no api_key given (pass api_key= or set OIRL_API_KEY)"
        return AuthenticationError(f"{where} {detail}; {hint}{note}", detail=detail, **common)
    if status == 404:
        ids = body.get("unknown_ids") if isinstance(body, dict) else None
        # a feedback 404 names no ids: it is the decision asked about, unless the server records none at all
        found = tuple(ids) if ids is not None else (() if "records no decisions" in detail else unknown)
        return NotFoundError(f"{where} {detail}{note}", unknown_ids=found, detail=detail, **common)
    if status in REFUSED:
        seconds = retry_after(response)
        hint = f"; the server asks to retry after {seconds:g} s" if seconds is not None else ""
        return ServiceUnavailableError(f"{where} service unavailable: {detail}{hint}{note}", retry_after=seconds,
                                       detail=detail, **common)
    if status == 413:
        detail += "; send fewer or shorter texts per call"
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else OirlClientError)
    return kind(f"{where} {detail}{note}", detail=detail, **common)


def _field_error(error: Mapping[str, Any]) -> FieldError:
    loc = tuple(error.get("loc") or ())
    if loc[:1] == ("body",):
        loc = loc[1:]
    return FieldError(loc=loc, msg=str(error.get("msg", "")), type=str(error.get("type", "")), input=error.get("input"))
