"""One served decision as a value: its fields, their checks, and the errors of the decision store.

:class:`Decision` is what :meth:`oirl.decisions.store.DecisionStore.record` takes; times
are stored as fixed-width UTC text (:data:`TIME_FORMAT`), so text order is time order.
"""

from __future__ import annotations

import json
import math
import numbers
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from oirl.errors import OirlError

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


# --------------------------------------------------------------------------- errors
# HTTP: invalid → 422, unknown → 404, conflicting → 409, duplicate → 409, a store that
# cannot be used → 503 with Retry-After.


class DecisionStoreError(OirlError):
    """A decision store file that cannot be used (not SQLite, newer schema, closed, a failed write)."""


class InvalidDecisionError(OirlError):
    """A decision with a field that breaks the schema (names the field)."""


class DuplicateDecisionError(OirlError):
    """A decision id recorded before; the batch carrying it was not recorded."""

    def __init__(self, decision_id: str, why: str = "is already recorded"):
        self.decision_id = decision_id
        super().__init__(f"decision_id {decision_id!r} {why}; nothing of this batch was recorded")


class InvalidRewardError(OirlError):
    """A reward that is not a finite number in [0, 1]."""


class UnknownDecisionError(OirlError):
    """Feedback for a decision id the store does not hold."""

    def __init__(self, decision_id: str):
        self.decision_id = decision_id
        super().__init__(f"decision_id {decision_id!r}: no such decision")


class ConflictingFeedbackError(OirlError):
    """A second reward for a decision, different from the one recorded first."""

    def __init__(self, decision_id: str, recorded: float, given: float, feedback_at: str):
        self.decision_id = decision_id
        self.recorded = recorded
        self.given = given
        self.feedback_at = feedback_at
        super().__init__(
            f"decision_id {decision_id!r}: reward {recorded!r} was recorded at {feedback_at}; "
            f"a different reward ({given!r}) cannot replace it"
        )


# --------------------------------------------------------------------------- values


def new_decision_id() -> str:
    """A fresh decision id: a random UUID (version 4) as lower-case text."""
    return str(uuid.uuid4())


def utc_now() -> str:
    """The current time as stored: UTC, ISO-8601, fixed width (``2024-05-01T12:00:00.000000Z``)."""
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One recommendation as served: the candidates, the choice, and how it was made.

    Lists are stored as tuples, ids in canonical UUID form and ``created_at`` in the
    store's fixed-width UTC form; ``explore`` is any JSON value (a copy is kept).
    Raises :class:`InvalidDecisionError` naming the first bad field.
    """

    query: str
    candidate_ids: Sequence[str]
    candidate_prompts: Sequence[str]
    prompt_id: str
    prompt: str
    score: float
    policy: str
    model_version: str
    propensity: float = 1.0
    explore: Any = field(default=None, hash=False)
    #: The online state that served it (``oirl.decisions.online``: feedback counted, offsets), any JSON value.
    online: Any = field(default=None, hash=False)
    decision_id: str = field(default_factory=new_decision_id)
    created_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        normalised = _check_decision(self)
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class FeedbackResult:
    """The outcome of :meth:`DecisionStore.feedback`: the reward now on record.

    ``duplicate`` is true when this exact reward had been recorded before (a retry);
    ``feedback_at`` is when the reward was first recorded.
    """

    decision_id: str
    reward: float
    feedback_at: str
    recorded: bool = True
    duplicate: bool = False


def _check_decision(d: Decision) -> dict[str, Any]:
    """Validate every field of ``d``; return the normalised values to set."""
    for name in ("query", "prompt_id", "prompt", "policy", "model_version"):
        _check_text(getattr(d, name), name)
    ids = _check_texts(d.candidate_ids, "candidate_ids")
    prompts = _check_texts(d.candidate_prompts, "candidate_prompts")
    if len(ids) != len(prompts):
        _bad("candidate_prompts", f"has {len(prompts)} entries but candidate_ids has {len(ids)}")
    if d.prompt_id not in ids:
        _bad("prompt_id", f"{d.prompt_id!r} is not among candidate_ids")
    if (d.prompt_id, d.prompt) not in zip(ids, prompts, strict=True):
        _bad("prompt", f"is not the text of candidate {d.prompt_id!r} in candidate_prompts")
    propensity = _check_number(d.propensity, "propensity")
    if not 0.0 < propensity <= 1.0:
        _bad("propensity", f"must be in (0, 1], got {propensity!r}")
    score = _check_number(d.score, "score")
    try:
        explore = None if d.explore is None else json.loads(to_json(d.explore))
    except (TypeError, ValueError) as exc:
        _bad("explore", f"is not JSON-serialisable: {exc}")
    try:
        online = None if d.online is None else json.loads(to_json(d.online))
    except (TypeError, ValueError) as exc:
        _bad("online", f"is not JSON-serialisable: {exc}")
    return {
        "decision_id": canonical_id(d.decision_id, lambda why: _bad("decision_id", why)),
        "created_at": _canonical_time(d.created_at),
        "candidate_ids": ids,
        "candidate_prompts": prompts,
        "propensity": propensity,
        "score": score,
        "explore": explore,
        "online": online,
    }


def _bad(name: str, why: str) -> None:
    raise InvalidDecisionError(f"decision field {name!r}: {why}")


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        _bad(name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        _bad(name, "is empty")


def _check_texts(values: object, name: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        _bad(name, f"must be a list of strings, got {type(values).__name__}")
    if not values:
        _bad(name, "is empty")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            _bad(name, f"entry {i} must be a string, got {type(value).__name__}")
    return tuple(values)


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _bad(name, f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        _bad(name, f"must be finite, got {value!r}")
    return value


def canonical_id(value: object, fail: Callable[[str], None]) -> str:
    if not isinstance(value, str):
        fail(f"must be a UUID string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        fail(f"{value[:80]!r} is not a UUID")
    raise AssertionError("unreachable")


def _canonical_time(value: object) -> str:
    if isinstance(value, str):
        text = value.strip()
        try:  # Python 3.10's fromisoformat does not take a trailing Z
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            _bad("created_at", f"{text[:40]!r} is not an ISO-8601 time")
    if not isinstance(value, datetime):
        _bad("created_at", f"must be an ISO-8601 string or a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        _bad("created_at", f"{value.isoformat()} has no time zone (use UTC, e.g. a trailing Z)")
    return value.astimezone(timezone.utc).strftime(TIME_FORMAT)


def to_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)


def check_reward(reward: object) -> float:
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise InvalidRewardError(f"reward: must be a number in [0, 1], got {type(reward).__name__}")
    value = float(reward)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise InvalidRewardError(f"reward: must be a finite number in [0, 1], got {value!r}")
    return value


def parse_time(text: str) -> datetime:
    """A stored time (:data:`TIME_FORMAT`) as an aware UTC datetime."""
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


def format_time(moment: datetime) -> str:
    """An aware datetime in the stored form."""
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)
