"""``GET /v1/models`` and ``GET /v1/models/{name}``: what the gateway serves, per model."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import FleetDep
from services.gateway.fleet import ModelStatus
from services.gateway.routes.predict import ModelName
from services.gateway.schemas import ErrorOut, LoadedModelOut, ModelsResponse, ModelStatusOut

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", summary="Every model: its state, loaded versions and split")
async def models(fleet: FleetDep) -> ModelsResponse:
    """Every registered model this gateway knows of; the default model's also at the top."""
    default = status_out(fleet.default_status())
    return ModelsResponse(
        model_loaded=default.state == "serving",
        models=default.variants,
        experiment_id=default.experiment_id,
        challenger_share=default.challenger_share,
        default_model=default.name,
        by_model={s.name: status_out(s) for s in fleet.statuses()},
    )


@router.get(
    "/models/{name}",
    responses={404: {"model": ErrorOut, "description": "Unknown model (the known ones named)"}},
    summary="One model: its state, loaded versions and split",
)
async def model(name: ModelName, fleet: FleetDep) -> ModelStatusOut:
    """Whether ``name`` serves, which versions, and its challenger's share."""
    return status_out(await fleet.status(name))


def status_out(status: ModelStatus) -> ModelStatusOut:
    """The HTTP shape of a model's status."""
    return ModelStatusOut(
        name=status.name,
        state=status.state,
        variants={v: LoadedModelOut(**m) for v, m in status.variants.items()},
        experiment_id=status.experiment_id,
        challenger_share=status.challenger_share,
        error=status.error,
    )
