"""``POST /v1/admin/reload``: swap in the bundle at the served directory (see :mod:`oirl.serve.reload`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oirl.serve.problems import responses
from oirl.serve.schemas import ErrorResponse, ReloadResponse

admin_router = APIRouter()

_RESPONSES = responses(413, 503, _202={"model": ReloadResponse, "description": "Several workers: the new bundle is sound and "
                                                                               "the workers are being replaced one by one."},
                       _409={"model": ErrorResponse, "description": "The bundle at the served directory is missing or "
                                                                    "corrupt (named in `detail`); the old one keeps serving."})


@admin_router.post("/v1/admin/reload", response_model=ReloadResponse, responses=_RESPONSES)
async def reload(request: Request):
    """Load the bundle at the directory the server was started with and serve it from the next request on.

    Requests under way finish on the bundle they started with. The same bundle again is
    ``unchanged``; a missing or corrupt one is a 409 and the old one keeps serving."""
    outcome = await request.app.state.reloader.reload("POST /v1/admin/reload")
    if outcome.status == "refused":
        return JSONResponse({"detail": f"reload refused: {outcome.problem}; still serving {outcome.model_version}"}, status_code=409)
    body = ReloadResponse(status=outcome.status, model_version=outcome.model_version, previous_version=outcome.previous_version)
    return JSONResponse(body.model_dump(), status_code=202 if outcome.status == "restarting" else 200)
