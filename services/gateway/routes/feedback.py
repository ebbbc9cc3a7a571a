"""``POST /v1/feedback``."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import FeedbackDep
from services.gateway.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    responses={404: {"description": "Unknown request_id, or its feedback window passed"}},
    summary="Report the true outcome of a prediction",
)
async def feedback(body: FeedbackRequest, service: FeedbackDep) -> FeedbackResponse:
    """Record the outcome once; a repeat answers ``duplicate: true`` and counts nothing."""
    return await service.record(body.request_id, body.true_label, body.reward)
