"""The client: one pooled connection, the calls, and the retry loop every call goes through."""

from __future__ import annotations

import json
import math
import numbers
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, overload

import httpx

from oirl import __version__
from oirl.client._answers import (
    Candidate,
    Candidates,
    Explore,
    FeedbackResult,
    Health,
    ModelInfo,
    PromptInfo,
    Prompts,
    Recommendation,
    recommendation_from,
)
from oirl.client._errors import ConnectionFailedError, OirlClientError, error_for
from oirl.client._retry import GATEWAY, LOCAL, NOT_SENT, REFUSED, backoff_seconds, retry_after

# Seconds per attempt: above the server's stall limit (30 s without embedding progress), so a stuck
# request comes back as a 503, which any call may retry, not as a timeout, which recommend may not.
DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 180.0  # seconds per call, retries and waits included
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF = 0.5  # seconds before the first retry, doubling each time
DEFAULT_MAX_BACKOFF = 8.0


class Client:
    """A connection to one oirl service, with retries, a deadline per call and typed answers.

    ``api_key`` defaults to ``$OIRL_API_KEY`` (empty: none). ``timeout`` bounds each attempt
    (connect, send, wait for the answer), ``deadline`` each call with its retries and waits
    (None: no deadline); ``max_retries`` retries follow waits of ``backoff`` seconds doubling
    up to ``max_backoff``, or the server's ``Retry-After``. ``transport``, ``sleep``, ``clock``
    (monotonic seconds) and ``rng`` (jitter) can be replaced, e.g. in tests.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 deadline: float | None = DEFAULT_DEADLINE, max_retries: int = DEFAULT_MAX_RETRIES,
                 backoff: float = DEFAULT_BACKOFF, max_backoff: float = DEFAULT_MAX_BACKOFF,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        _check_positive("timeout", timeout)
        if deadline is not None:
            _check_positive("deadline", deadline)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not (backoff >= 0 and max_backoff >= 0):
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff!r} and {max_backoff!r}")
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// address, got {base_url!r}")
        self.base_url = str(url).rstrip("/")
        self.timeout, self.deadline, self.max_retries = timeout, deadline, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self._sleep, self._clock, self._rng = sleep, clock, rng or random.Random()
        key = api_key if api_key is not None else os.environ.get("OIRL_API_KEY")
        self._has_key = bool(key)
        headers = {"User-Agent": f"oirl-client/{__version__}", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, api_key={'***' if self._has_key else None})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ endpoints

    @overload  # a str is a Sequence[str] too: this overload comes first
    def recommend(self, queries: str, candidates: Candidates | None = ..., candidate_ids: Sequence[str] | None = ...,  # type: ignore[overload-overlap]
                  top_k: int = ..., policy: str | None = ..., cost_weight: float | None = ...,
                  explore: Explore | None = ...) -> Recommendation: ...

    @overload
    def recommend(self, queries: Sequence[str], candidates: Candidates | None = ..., candidate_ids: Sequence[str] | None = ...,
                  top_k: int = ..., policy: str | None = ..., cost_weight: float | None = ...,
                  explore: Explore | None = ...) -> list[Recommendation]: ...

    def recommend(self, queries: str | Sequence[str], candidates: Candidates | None = None, candidate_ids: Sequence[str] | None = None,
                  top_k: int = 3, policy: str | None = None, cost_weight: float | None = None,
                  explore: Explore | None = None) -> Recommendation | list[Recommendation]:
        """The prompt to use for each query: one :class:`Recommendation` for a string, a list
        (in order) for a list of strings.

        ``candidates``: texts, :class:`Candidate` or ``{"prompt", "prompt_id"?, "cost"?}``;
        ``candidate_ids``: bundle prompt ids (both: the union; neither: the bundle's prompts).
        ``policy``: argmax, conservative, fallback, cost-aware (None: the bundle's default);
        ``cost_weight``: its lambda (None: the bundle's, set by ``oirl calibrate``, else 0).
        ``explore``: ``"epsilon:0.1"``, ``("softmax", 0.05)``, a dict as the API takes it, or
        False to turn a server default off (None: the server's default). Not retried once
        the request may have reached the server (see the module docstring).
        """
        single = isinstance(queries, str)
        texts = [queries] if single else list(queries)
        body: dict[str, Any] = {"queries": texts, "top_k": top_k}
        if cost_weight is not None:
            body["cost_weight"] = _number(cost_weight)
        if candidates is not None:
            body["candidates"] = [_candidate_body(c) for c in candidates]
        if candidate_ids is not None:
            body["candidate_ids"] = list(candidate_ids)
        if policy is not None:
            body["policy"] = policy
        if explore is not None:
            body["explore"] = _explore_body(explore)
        answer = self._call("POST", "/v1/recommend", body, idempotent=False)
        with _reading(answer) as got:
            results = [recommendation_from(texts[r["index"]], r, got["policy"], got["model_version"]) for r in got["results"]]
        return results[0] if single else results

    def feedback(self, decision: str | Recommendation, reward: float) -> FeedbackResult:
        """Record the outcome (a reward in [0, 1]) of a recommendation, given it or its
        ``decision_id``. Safe to repeat: the same reward again answers ``duplicate=True``; a
        different one raises :class:`ConflictError`."""
        decision_id = decision.decision_id if isinstance(decision, Recommendation) else decision
        if decision_id is None:
            raise OirlClientError(f"feedback: this recommendation has no decision_id: the server at {self.base_url} "
                                  "records no decisions (start it with 'oirl serve MODEL --decisions PATH')")
        body = {"decision_id": decision_id, "reward": _number(reward)}
        answer = self._call("POST", "/v1/feedback", body, idempotent=True, unknown=(decision_id,))
        with _reading(answer) as got:
            return FeedbackResult(decision_id=got["decision_id"], reward=float(got["reward"]), duplicate=bool(got["duplicate"]),
                                  recorded=bool(got.get("recorded", True)))

    def score(self, pairs: Iterable[tuple[str, str]]) -> list[float]:
        """The reward model's score of each (query, prompt) pair, in order."""
        body = {"pairs": [{"query": query, "prompt": prompt} for query, prompt in pairs]}
        answer = self._call("POST", "/v1/score", body, idempotent=True)
        with _reading(answer) as got:
            return [float(s) for s in got["scores"]]

    def model(self) -> ModelInfo:
        """The bundle's metadata, policy, limits and the server's feedback settings."""
        answer = self._call("GET", "/v1/model", None, idempotent=True)
        with _reading(answer) as raw:
            policy, feedback = raw["policy"], raw.get("feedback") or {}
            reward_model = raw["model"]  # null on a cold bundle (`oirl init`): it serves its default prompt
            return ModelInfo(model_version=raw["model_version"], model_kind=None if reward_model is None else reward_model["kind"],
                             embedder=str(raw["embedder"]),
                             default_policy=policy["default"], default_prompt_id=policy["default_prompt_id"],
                             records_decisions=feedback.get("decisions") is not None, explore=feedback.get("explore"),
                             limits=raw.get("limits", {}), raw=raw)

    def prompts(self) -> Prompts:
        """The bundle's prompts with their mean training reward, and its default prompt."""
        answer = self._call("GET", "/v1/prompts", None, idempotent=True)
        with _reading(answer) as got:
            return Prompts(model_version=got["model_version"], default_prompt_id=got["default_prompt_id"],
                           prompts=tuple(PromptInfo(p["prompt_id"], p["prompt"], float(p["train_mean_reward"])) for p in got["prompts"]))

    def health(self) -> Health:
        """The server's state now: one request, no retry; a 503 answers ``status="unavailable"``
        with its ``reason`` rather than raising."""
        answer = self._call("GET", "/health", None, idempotent=True, retries=False, accept=(200, 503))
        with _reading(answer) as raw:
            def count(name: str) -> int | None:
                return None if raw.get(name) is None else int(raw[name])

            return Health(status=raw["status"], reason=raw.get("reason"), model_version=raw.get("model_version"),
                          queued_texts=count("queued_texts"), requests_in_flight=count("requests_in_flight"),
                          texts_embedded=count("texts_embedded"), raw=raw)

    # ------------------------------------------------------------------ one call, with retries

    def _call(self, method: str, path: str, body: Any, *, idempotent: bool, retries: bool = True,
              accept: tuple[int, ...] = (200,), unknown: tuple[str, ...] = ()) -> _Answer:
        """Send until an accepted answer, a final error, ``max_retries`` retries or the deadline."""
        url = f"{self.base_url}{path}"
        content = _encode(body, method, url) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            left = math.inf if self.deadline is None else self.deadline - (self._clock() - started)
            try:
                response = self._http.request(method, path, content=content, headers=headers, timeout=max(min(self.timeout, left), 0.05))
            except LOCAL as exc:
                raise OirlClientError(f"{method} {url}: {type(exc).__name__}: {exc}", method=method, url=url) from exc
            except httpx.TransportError as exc:
                failure = _Failure(method, url, exc=exc, sent=not isinstance(exc, NOT_SENT))
                retryable, server_wait = idempotent or not failure.sent, None
            else:
                if response.status_code in accept:
                    return _Answer(response, method, url)
                failure = _Failure(method, url, response=response)
                status = response.status_code
                retryable = status in REFUSED or (idempotent and status in GATEWAY)
                server_wait = retry_after(response) if status in REFUSED else None
            if not (retries and retryable):
                raise failure.error(attempt, "", self._has_key, unknown)
            if attempt > self.max_retries:
                raise failure.error(attempt, f" (after {attempt} attempts)", self._has_key, unknown)
            jitter = self._rng.random()
            if server_wait is None:
                wait = backoff_seconds(attempt, base=self.backoff, cap=self.max_backoff, jitter=jitter)
            else:  # the server's time, plus some jitter: clients told the same time do not all return at once
                wait = server_wait + self.backoff * jitter
            left = math.inf if self.deadline is None else self.deadline - (self._clock() - started)
            if wait >= left:
                asked = "the server asks to wait" if server_wait is not None else "the next retry is due in"
                raise failure.error(attempt, f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''}: {asked} "
                                             f"{wait:.1f} s, past the deadline of {self.deadline:g} s)", self._has_key, unknown)
            self._sleep(wait)


@dataclass(frozen=True)
class _Answer:
    response: httpx.Response
    method: str
    url: str


@dataclass(frozen=True)
class _Failure:
    """An attempt that failed: an error answer (``response``) or none (``exc``)."""

    method: str
    url: str
    response: httpx.Response | None = None
    exc: httpx.TransportError | None = None
    sent: bool = True  # the request may have reached the server

    def error(self, attempts: int, note: str, has_key: bool, unknown: tuple[str, ...]) -> OirlClientError:
        if self.response is not None:
            return error_for(self.response, self.method, self.url, attempts=attempts, note=note, has_key=has_key, unknown=unknown)
        what = "no answer (the request may have been processed)" if self.sent else "could not reach the server"
        reason = f"{type(self.exc).__name__}: {self.exc}" if str(self.exc) else type(self.exc).__name__
        return ConnectionFailedError(f"{self.method} {self.url}: {what}: {reason}{note}", maybe_processed=self.sent,
                                     method=self.method, url=self.url, attempts=attempts)


@contextmanager
def _reading(answer: _Answer) -> Iterator[Any]:
    """The answer's JSON, read in the block; a body that is not JSON or lacks a field becomes one
    clear error: the server answered something this client does not understand."""
    try:
        yield answer.response.json()
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise OirlClientError(f"{answer.method} {answer.url}: unexpected answer ({type(exc).__name__}: {exc}); is this an "
                              "oirl server of a compatible version?", status=answer.response.status_code,
                              method=answer.method, url=answer.url) from exc


# --------------------------------------------------------------------------- helpers


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _number(value: Any) -> Any:
    """A real number (bool, numpy scalar) as a float, for JSON; anything else as it is, for the server to refuse."""
    return float(value) if isinstance(value, numbers.Real) else value


def _candidate_body(candidate: str | Candidate | Mapping[str, Any]) -> Any:
    if isinstance(candidate, Candidate):
        candidate = {"prompt": candidate.prompt, "prompt_id": candidate.prompt_id, "cost": candidate.cost}
    if isinstance(candidate, Mapping):
        return {k: _number(v) if k == "cost" else v for k, v in candidate.items() if v is not None}
    return candidate


def _explore_body(explore: Explore) -> dict[str, Any]:
    """``"epsilon:0.1"``, ``("softmax", 0.05)``, a mapping, or False (no exploration) as the API's object."""
    if explore is False:
        return {"method": "epsilon", "epsilon": 0.0}
    if explore is True:
        raise ValueError("explore=True: say how, e.g. 'epsilon:0.1' or ('softmax', 0.05)")
    if isinstance(explore, Mapping):
        return dict(explore)
    if isinstance(explore, str) and ":" not in explore:
        raise ValueError(f"explore: {explore!r} is not METHOD:VALUE, e.g. 'epsilon:0.1' or 'softmax:0.05'")
    method, value = explore.split(":", 1) if isinstance(explore, str) else explore
    parameter = {"epsilon": "epsilon", "softmax": "temperature", "squarecb": "gamma"}.get(method)
    if parameter is None:
        raise ValueError(f"explore: unknown method {method!r} (epsilon, softmax or squarecb)")
    try:
        return {"method": method, parameter: float(value)}
    except (TypeError, ValueError):
        raise ValueError(f"explore: {method}'s {parameter} must be a number, got {value!r}") from None


def _encode(body: Any, method: str, url: str) -> bytes:
    """The body as UTF-8 JSON (escaped ASCII when a text holds a lone surrogate, which UTF-8 cannot carry)."""
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise OirlClientError(f"{method} {url}: the request cannot be sent as JSON: {exc}", method=method, url=url) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("ascii")


