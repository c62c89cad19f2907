"""What the service answers, as frozen dataclasses, and what a recommend request takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """A candidate prompt with an optional id and cost (a plain string is a candidate too)."""

    prompt: str
    prompt_id: str | None = None
    cost: float | None = None


@dataclass(frozen=True)
class RankedPrompt:
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool  # a bundle prompt (trained on), not a new one passed as text


@dataclass(frozen=True)
class Recommendation:
    """The prompt served for one query. ``decision_id`` is what :meth:`Client.feedback` needs
    (None: the server records no decisions); ``propensity`` the probability the prompt was
    served with (None: the server neither records nor explores)."""

    query: str
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool
    ranking: tuple[RankedPrompt, ...]
    decision_id: str | None
    propensity: float | None
    policy: str
    model_version: str


@dataclass(frozen=True)
class FeedbackResult:
    decision_id: str
    reward: float
    duplicate: bool  # this reward had been recorded before (a retry)
    recorded: bool = True


@dataclass(frozen=True)
class PromptInfo:
    prompt_id: str
    prompt: str
    train_mean_reward: float


@dataclass(frozen=True)
class Prompts:
    """The bundle's prompt table."""

    model_version: str
    prompts: tuple[PromptInfo, ...]
    default_prompt_id: str


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` says that a client acts on; everything else is in ``raw``."""

    model_version: str
    model_kind: str | None  # None: a cold bundle (``oirl init``), no reward model yet
    embedder: str
    default_policy: str
    default_prompt_id: str
    records_decisions: bool  # the server has --decisions: recommendations carry a decision_id
    explore: Mapping[str, Any] | None = field(hash=False)  # the server's default exploration
    limits: Mapping[str, Any] = field(hash=False, repr=False)
    raw: Mapping[str, Any] = field(hash=False, repr=False, compare=False)


@dataclass(frozen=True)
class Health:
    """The server's state; without the key (when one is set) a server says only ``status``,
    and the other fields are None."""

    status: str  # "ok" or "unavailable"
    reason: str | None
    model_version: str | None
    queued_texts: int | None
    requests_in_flight: int | None
    texts_embedded: int | None
    raw: Mapping[str, Any] = field(hash=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# what recommend() takes: candidates as texts, Candidate or {"prompt", "prompt_id"?, "cost"?}; exploration as
# "epsilon:0.1", ("softmax", 0.05), {"method": "epsilon", "epsilon": 0.1}, or False (none, whatever the server's default)
Candidates = Sequence[str | Candidate | Mapping[str, Any]]
Explore = str | tuple[str, float] | Mapping[str, Any] | bool



def recommendation_from(query: str, result: Mapping[str, Any], policy: str, model_version: str) -> Recommendation:
    ranking = tuple(RankedPrompt(r["prompt_id"], r["prompt"], float(r["score"]), bool(r["in_bundle"])) for r in result["ranking"])
    propensity = result.get("propensity")
    return Recommendation(query=query, prompt_id=result["prompt_id"], prompt=result["prompt"], score=float(result["score"]),
                          in_bundle=bool(result["in_bundle"]), ranking=ranking, decision_id=result.get("decision_id"),
                          propensity=None if propensity is None else float(propensity), policy=policy, model_version=model_version)


