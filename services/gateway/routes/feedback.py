"""``POST /v1/models/{name}/feedback``, and ``POST /v1/feedback`` for the default model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.gateway.deps import FeedbackDep, FleetDep
from services.gateway.routes.predict import ModelName
from services.gateway.schemas import (
    ErrorOut,
    FeedbackRequest,
    FeedbackResponse,
)

router = APIRouter(prefix="/v1", tags=["feedback"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not JSON"},
    404: {"model": ErrorOut, "description": "Unknown request_id, or its feedback window passed"},
    409: {
        "model": ErrorOut,
        "description": "The request_id was answered by another model (its route named)",
    },
    422: {
        "model": ErrorOut,
        "description": "Not exactly one of true_label (a classifier's class), true_value (a "
        "regressor's finite number) or reward (a finite number); or an outcome of the other "
        "task (the field and the model's task named)",
    },
    503: {"model": ErrorOut, "description": "Records or broker unavailable: retry"},
}


@router.post(
    "/feedback",
    responses=_ERRORS,
    summary="Report the true outcome of a default-model prediction",
)
async def feedback(
    body: FeedbackRequest, service: FeedbackDep, fleet: FleetDep
) -> FeedbackResponse:
    """Record the outcome once; a repeat answers ``duplicate: true`` and counts nothing."""
    return await service.record(
        fleet.default.name, body.request_id, body.true_label, body.reward, body.true_value
    )


# Documented per registered model, each with its own outcome (services.gateway.openapi).
@router.post("/models/{name}/feedback", include_in_schema=False)
async def feedback_to(
    name: ModelName, body: FeedbackRequest, service: FeedbackDep
) -> FeedbackResponse:
    """Record the outcome once; a repeat answers ``duplicate: true`` and counts nothing."""
    return await service.record(
        name, body.request_id, body.true_label, body.reward, body.true_value
    )
