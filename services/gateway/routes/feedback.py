"""``POST /v1/feedback``."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import FeedbackDep
from services.gateway.schemas import ErrorOut, FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    responses={
        400: {"model": ErrorOut, "description": "The body is not JSON"},
        404: {
            "model": ErrorOut,
            "description": "Unknown request_id, or its feedback window passed",
        },
        422: {
            "model": ErrorOut,
            "description": "Not one of true_label (a class) or reward (a finite number)",
        },
        503: {"model": ErrorOut, "description": "Records or broker unavailable: retry"},
    },
    summary="Report the true outcome of a prediction",
)
async def feedback(body: FeedbackRequest, service: FeedbackDep) -> FeedbackResponse:
    """Record the outcome once; a repeat answers ``duplicate: true`` and counts nothing."""
    return await service.record(body.request_id, body.true_label, body.reward)
