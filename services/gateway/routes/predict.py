"""``POST /v1/predict`` and ``GET /v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.gateway.deps import PoolDep, PredictionsDep
from services.gateway.schemas import LoadedModelOut, ModelsResponse, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["predict"])

_ERRORS: dict[int | str, dict[str, str]] = {
    413: {
        "description": "More instances than GATEWAY_MAX_BATCH, or a body over "
        "GATEWAY_MAX_BODY_BYTES"
    },
    422: {"description": "Unknown, missing or ill-typed features (each one named)"},
    500: {
        "description": "The routed model raised or answered non-finite probabilities "
        "(counted against its variant: prediction-failed)"
    },
    503: {"description": "No model loaded for the champion alias"},
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
