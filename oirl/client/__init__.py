"""A Python client for oirl's HTTP service (``oirl serve``).

    from oirl.client import Client

    with Client("http://127.0.0.1:8000", api_key="s3cret") as oirl:
        rec = oirl.recommend("Tom has 3 apples and buys 5 more. How many does he have?")
        answer = my_llm(rec.prompt, rec.query)
        oirl.feedback(rec, 1.0 if answer == "8" else 0.0)   # the server must run with --decisions

The client owns what every application would otherwise write again: one pooled HTTP
connection, retries with exponential backoff and jitter that honour ``Retry-After``, a
deadline per call, typed answers (frozen dataclasses) and one exception class per kind
of failure, all subclasses of :class:`OirlClientError`.

What is retried (``max_retries`` times, within ``deadline`` seconds per call):

* every call: a 503 or 429 (the server, or a proxy, refused the request before doing
  anything: it waits ``Retry-After`` seconds, plus up to ``backoff`` seconds of jitter so
  that clients told the same time do not return at the same instant), and a request that
  never reached the server (connection refused, connect timeout);
* calls that are safe to repeat — ``feedback`` (the same reward again is a duplicate,
  not a second record), ``score``, ``model``, ``prompts`` — also after a lost answer (read
  timeout, dropped connection) and a 502 or 504 from a proxy;
* ``recommend`` not after a lost answer or a 502/504: the server may have recorded the
  decision already, and a repeat would record a second one whose ``decision_id`` the
  first caller never sees. It raises :class:`ConnectionFailedError` with
  ``maybe_processed=True`` (or :class:`ServerError`); repeating is then the caller's
  choice (harmless against a server without ``--decisions``: recommend only reads).

``health()`` asks once and never raises for a 503: it answers what the server says now.

Importing it loads httpx and the standard library only (no numpy, pandas or FastAPI), so
an application can use it without oirl's training dependencies. Modules: ``_client``
(the calls and the retry loop), ``_retry`` (what is retried, how long to wait),
``_answers`` (the typed answers), ``_errors`` (the exceptions).
"""

from oirl.client._answers import (
    Candidate,
    FeedbackResult,
    Health,
    ModelInfo,
    PromptInfo,
    Prompts,
    RankedPrompt,
    Recommendation,
)
from oirl.client._client import Client
from oirl.client._errors import (
    AuthenticationError,
    ConflictError,
    ConnectionFailedError,
    FieldError,
    NotFoundError,
    OirlClientError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
)
from oirl.client._retry import backoff_seconds

__all__ = [
    "AuthenticationError",
    "Candidate",
    "Client",
    "ConflictError",
    "ConnectionFailedError",
    "FeedbackResult",
    "FieldError",
    "Health",
    "ModelInfo",
    "NotFoundError",
    "OirlClientError",
    "PayloadTooLargeError",
    "PromptInfo",
    "Prompts",
    "RankedPrompt",
    "Recommendation",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "backoff_seconds",
]
