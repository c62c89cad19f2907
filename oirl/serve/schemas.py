"""The HTTP service's request and response bodies (what ``/openapi.json`` states).

Requests are strict (``"3"`` is not an integer, ``false`` is not a cost) and refuse
unknown fields; every text and list has a length bound, so the schema alone bounds the
work of a request up to the caps of :class:`oirl.serve.limits.ServiceLimits`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from oirl.serve.scoring import POLICY_NAMES

MAX_QUERIES = 256
MAX_CANDIDATES = 256
MAX_PAIRS = 4096
MAX_TEXT_CHARS = 20_000
MAX_ID_CHARS = 512


def unicode_text(text: Any) -> Any:
    """A string with any lone surrogate (JSON allows "\\ud800") replaced by U+FFFD: such a
    string can be neither validated, hashed, tokenised nor sent back."""
    if not isinstance(text, str):
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# Some character that is not white space. `\s` differs between regex engines (Python's
# str.isspace() counts \x1c-\x1f and \x85, ECMA-262 counts \ufeff), so the class leaves
# out all of them: the schema means the same to pydantic, the recommender and clients.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=NOT_BLANK), BeforeValidator(unicode_text)]
PromptId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=NOT_BLANK), BeforeValidator(unicode_text)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _integral(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0, not "3", true or 3.5 (the models are strict)
    return int(value) if isinstance(value, float) and value.is_integer() else value


TopK = Annotated[int, Field(ge=1, le=MAX_CANDIDATES), BeforeValidator(_integral)]
Policy = Literal[POLICY_NAMES]  # type: ignore[valid-type]

# strict: "3" is not an integer and false is not a cost, as the schema says
_REQUEST = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- requests


class CandidateIn(BaseModel):
    """A candidate prompt as an object: its text, and optionally an id and a cost."""

    model_config = _REQUEST
    prompt: Text = Field(description="The prompt text.")
    prompt_id: PromptId | None = Field(None, description="Id to report it under (default: `p-` and a hash of the text). "
                                                         "A bundle prompt's text keeps the bundle's id.")
    cost: NonNegative | None = Field(None, description="Cost of one call with this prompt, for the cost-aware policy; "
                                                       "replaces the bundle's cost for a bundle prompt.")


class EpsilonGreedy(BaseModel):
    """Explore around the policy's pick: it has probability 1 - epsilon + epsilon / K, every other candidate epsilon / K."""

    model_config = _REQUEST
    method: Literal["epsilon"]
    epsilon: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Softmax(BaseModel):
    """Draw a candidate with probability proportional to exp(score / temperature)."""

    model_config = _REQUEST
    method: Literal["softmax"]
    temperature: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


class SquareCB(BaseModel):
    """SquareCB's inverse gap weighting: every other candidate 1 / (K + gamma x its predicted gap to the policy's pick),
    the pick the rest (equal scores: uniform; the larger gamma, the greedier)."""

    model_config = _REQUEST
    method: Literal["squarecb"]
    gamma: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


Explore = Annotated[EpsilonGreedy | Softmax | SquareCB, Field(discriminator="method")]
#: Each method's parameter field.
EXPLORE_PARAMETER = {"epsilon": "epsilon", "softmax": "temperature", "squarecb": "gamma"}


def exploration_setting(explore: tuple[str, float] | None) -> EpsilonGreedy | Softmax | SquareCB | None:
    """A server's ``--explore`` (``("epsilon", 0.1)``, ``("softmax", 0.05)``, ``("squarecb", 50)``) as the request field would say it."""
    if explore is None:
        return None
    method, parameter = explore
    model = {"epsilon": EpsilonGreedy, "softmax": Softmax, "squarecb": SquareCB}[method]
    return model(method=method, **{EXPLORE_PARAMETER[method]: parameter})


def exploration_of(setting: EpsilonGreedy | Softmax | SquareCB | None) -> tuple[str, float] | None:
    """A request's exploration as (method, parameter)."""
    return None if setting is None else (setting.method, getattr(setting, EXPLORE_PARAMETER[setting.method]))


class RecommendRequest(BaseModel):
    model_config = _REQUEST
    queries: list[Text] = Field(min_length=1, max_length=MAX_QUERIES, description="Query texts.")
    candidates: list[Text | CandidateIn] | None = Field(
        None, max_length=MAX_CANDIDATES,
        description="Candidate prompts, as texts or objects (new prompts allowed; give a `cost` to price one for the "
                    "cost-aware policy). With `candidate_ids` too, the candidates are the union: the named bundle "
                    "prompts, then these; naming one prompt twice is a 409. Neither: the bundle's prompts.")
    candidate_ids: list[PromptId] | None = Field(
        None, max_length=MAX_CANDIDATES, json_schema_extra={"uniqueItems": True},
        description="Ids of bundle prompts to choose among (unknown ids: 404), joined with `candidates`.")
    top_k: TopK = Field(3, description="Length of each ranking.")
    policy: Policy | None = Field(None, description="Selection policy; default: the bundle's, chosen by cross-validation. "
                                                    "`cost-aware` needs a cost for every candidate (the bundle's or given).")
    cost_weight: NonNegative | None = Field(None, description="Lambda of the cost-aware policy (reward minus lambda x cost); "
                                                              "default: the bundle's (set by `oirl calibrate`), else 0. "
                                                              "Other policies ignore it.")
    explore: Explore | None = Field(None, description="Serve a random candidate instead of always the policy's pick, and "
                                                      "report the probability it was drawn with (`propensity`); default: the "
                                                      "server's `--explore`, if any. `{\"method\": \"epsilon\", \"epsilon\": 0}` "
                                                      "turns a server default off.")

    @field_validator("candidate_ids")
    @classmethod
    def _unique_ids(cls, ids: list[str] | None) -> list[str] | None:
        if ids and len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        return ids


class FeedbackRequest(BaseModel):
    model_config = _REQUEST
    # Any text: one that is not a decision id the store holds (malformed or unknown) is a 404.
    decision_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] = Field(
        description="A `decision_id` from `/v1/recommend`.")
    reward: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(description="The outcome, in [0, 1].")


class Pair(BaseModel):
    model_config = _REQUEST
    query: Text
    prompt: Text


class ScoreRequest(BaseModel):
    model_config = _REQUEST
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_PAIRS)


# --------------------------------------------------------------------------- responses


class RankedPrompt(BaseModel):
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool = Field(description="A bundle prompt (trained on), not a new one passed as text.")


class RecommendResult(BaseModel):
    index: int
    prompt_id: str
    prompt: str
    score: float
    in_bundle: bool
    ranking: list[RankedPrompt]
    decision_id: str | None = Field(None, description="Id to send the outcome to `/v1/feedback` with (when the server "
                                                       "records decisions).")
    propensity: float | None = Field(None, description="The probability with which this prompt was served (1.0 when not "
                                                       "exploring); set when the request explores or the server records decisions.")
    reason: str | None = Field(None, description="Why the prompt served is not the top of the ranking (the conservative "
                                                 "policy kept its default, the cost-aware policy saved cost, exploration drew it); "
                                                 "absent when it is the top.")


class RecommendResponse(BaseModel):
    object: Literal["prompt.recommendation"] = "prompt.recommendation"
    model_version: str = Field(description="The bundle that answered (every result of one request comes from one bundle).")
    policy: str = Field(description="The policy applied.")
    results: list[RecommendResult]


class FeedbackResponse(BaseModel):
    recorded: Literal[True] = True
    decision_id: str
    reward: float
    duplicate: bool = Field(description="This reward had been recorded before (a retry).")


class ScoreResponse(BaseModel):
    model_version: str
    scores: list[float]


class PromptEntry(BaseModel):
    prompt_id: str
    prompt: str
    train_mean_reward: float
    model: str | None = Field(None, description="The model the gateway calls with this arm (absent: the request's).")
    params: dict[str, float | int] | None = Field(None, description="Generation parameters the gateway sets with this arm "
                                                                    "(`temperature`, `top_p`, `max_tokens`).")


class PromptsResponse(BaseModel):
    model_version: str
    prompts: list[PromptEntry]
    default_prompt_id: str


class Health(BaseModel):
    """Without the key (when one is set) only ``status``; the rest with the key or when no key is set."""

    status: Literal["ok", "unavailable"]
    reason: str | None = Field(None, description="Why the service is unavailable.")
    model_version: str | None = None
    queued_texts: int | None = Field(None, description="Texts waiting for the embedding model.")
    queued_requests: int | None = None
    requests_in_flight: int | None = None
    embedding_call_seconds: float | None = Field(None, description="How long the current model call has run, if one runs.")
    texts_embedded: int | None = Field(None, description="Texts embedded since start-up (by the current model's embedder).")


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged", "restarting"] = Field(
        description="`reloaded`: new requests use the new bundle; `unchanged`: the bundle at the directory is the one served; "
                    "`restarting`: the new bundle is sound and the server's workers are being replaced one by one.")
    model_version: str = Field(description="The version now served (or, when restarting, about to be).")
    previous_version: str


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = Field(None, description="Set on server-side failures: the id under which the server logged it.")


class UnknownIdsResponse(BaseModel):
    detail: str
    unknown_ids: list[str] = Field(description="The unknown ids (the first 20, each cut to 100 characters).")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: str | int | float | bool | None = Field(
        None, description="The offending value as sent: a number or boolean as such, a text cut to 100 characters, "
                          "a list or object described by its size.")


class ValidationErrorResponse(BaseModel):
    detail: list[FieldError] = Field(description="The first 20 errors.")
    error_count: int
