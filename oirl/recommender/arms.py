"""What an arm carries beyond its prompt: the model to call and generation parameters.

A prompt at two temperatures, or one prompt on two models, is two arms (two prompt ids);
the gateway (:mod:`oirl.serve.gateway`) sets them on the upstream request. An arm is
stored as a plain dict with only the keys it sets: ``{"model": "llama-3-8b",
"params": {"temperature": 0.2}}``; ``{}`` sets nothing (the request's own model and
parameters pass through).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from oirl.errors import OirlError

#: The generation parameters an arm may set, in OpenAI's chat completions names and ranges.
ARM_PARAMS = ("temperature", "top_p", "max_tokens")


class ArmParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"\S")]


class ArmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelName | None = None
    params: ArmParams | None = None


def arm_settings(model: Any = None, params: Any = None, *, where: str) -> dict[str, Any]:
    """The checked arm as a dict of the keys it sets; an :class:`OirlError` naming ``where`` and the field."""
    try:
        checked = ArmSettings.model_validate({"model": model, "params": params})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise OirlError(f"{where}, field {field!r}: {first['msg']}") from None
    return as_dict(checked)


def as_dict(checked: ArmSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if checked.model is not None:
        out["model"] = checked.model
    if checked.params is not None and (params := checked.params.model_dump(exclude_none=True)):
        out["params"] = params
    return out
