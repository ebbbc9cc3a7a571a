"""``POST /v1/models/{name}/predict``, and ``POST /v1/predict`` for the default model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from services.gateway.deps import FleetDep, PredictionsDep
from services.gateway.schemas import (
    ErrorOut,
    PredictRequest,
    PredictResponse,
    ValuePredictResponse,
)

router = APIRouter(prefix="/v1", tags=["predict"])

#: A model's name in a path.
ModelName = Annotated[str, Path(description="A registered model (see GET /v1/models).")]

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
        "description": "The routed model raised or answered non-finite probabilities (or "
        "values) for a valid row (counted against its variant: prediction-failed)",
    },
    503: {
        "model": ErrorOut,
        "description": "No model loaded for the champion alias (or it is loading): retry "
        "after Retry-After",
    },
}


@router.post(
    "/predict",
    response_model=None,
    responses={
        200: {
            # Each model's path documents its own task's shape (services.gateway.openapi).
            "model": PredictResponse | ValuePredictResponse,
            "description": "The answers: classes and probabilities (a classifier), or values "
            "(a regressor)",
        },
        **_ERRORS,
    },
    summary="Predict with the default model (FLYWHEEL_MODEL_NAME)",
)
async def predict(body: PredictRequest, predictions: PredictionsDep, fleet: FleetDep) -> Response:
    """Answer every instance from one variant (sticky per ``entity_id``)."""
    return await _answer(fleet.default.name, body, predictions)


# Documented per registered model, each with its own row schema (services.gateway.openapi).
@router.post("/models/{name}/predict", response_model=None, include_in_schema=False)
async def predict_with(
    name: ModelName, body: PredictRequest, predictions: PredictionsDep
) -> Response:
    """Answer every instance from one variant of ``name`` (sticky per ``entity_id``)."""
    return await _answer(name, body, predictions)


async def _answer(name: str, body: PredictRequest, predictions: PredictionsDep) -> Response:
    answer = await predictions.predict(name, body.rows, body.entity_id)
    # Serialised by pydantic directly: FastAPI's response-model pass validated the
    # answer a second time and cost more than scoring a row.
    return Response(answer.model_dump_json(), media_type="application/json")
