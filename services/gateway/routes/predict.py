"""``POST /v1/predict`` and ``GET /v1/models``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.gateway.deps import PoolDep, PredictionsDep
from services.gateway.schemas import (
    ErrorOut,
    LoadedModelOut,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
)

router = APIRouter(prefix="/v1", tags=["predict"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not JSON"},
    404: {
        "model": ErrorOut,
        "description": "Only an entity_id was sent, and it has no stored features",
    },
    413: {
        "model": ErrorOut,
        "description": "More instances than GATEWAY_MAX_BATCH, or a body over "
        "GATEWAY_MAX_BODY_BYTES",
    },
    422: {
        "model": ErrorOut,
        "description": "Unknown, missing or ill-typed features, numbers that are not finite "
        "or outside the spec's bounds (each one named); never charged to a model",
    },
    500: {
        "model": ErrorOut,
        "description": "The routed model raised or answered non-finite probabilities for a "
        "valid row (counted against its variant: prediction-failed)",
    },
    503: {"model": ErrorOut, "description": "No model loaded for the champion alias"},
}


@router.post(
    "/predict",
    response_model=None,
    responses={200: {"model": PredictResponse, "description": "The answers"}, **_ERRORS},
    summary="Predict the segment of each instance",
)
async def predict(body: PredictRequest, predictions: PredictionsDep) -> Response:
    """Answer every instance from one variant (sticky per ``entity_id``)."""
    answer = await predictions.predict(body.rows, body.entity_id)
    # Serialised by pydantic directly: FastAPI's response-model pass validated the
    # answer a second time and cost more than scoring a row.
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/models", summary="The models serving now and the challenger's share")
async def models(pool: PoolDep) -> ModelsResponse:
    """Name and version per loaded variant."""
    snapshot = pool.snapshot
    return ModelsResponse(
        model_loaded=snapshot.champion is not None,
        models={v: LoadedModelOut(**m) for v, m in snapshot.describe().items()},
        experiment_id=snapshot.routing.experiment_id,
        challenger_share=snapshot.routing.challenger_share,
    )
