"""``Annotated`` dependencies the gateway's routes take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.gateway.feedback import FeedbackService
from services.gateway.fleet import ModelFleet
from services.gateway.service import PredictionService


@dataclass(frozen=True)
class GatewayServices:
    """What the routes use; built by the composition root and kept on ``app.state``."""

    fleet: ModelFleet
    predictions: PredictionService
    feedback: FeedbackService


def _services(request: Request) -> GatewayServices:
    services: GatewayServices = request.app.state.gateway
    return services


# ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one
# hand-off per dependency per request, which cost a quarter of a one-row prediction.
async def _fleet(request: Request) -> ModelFleet:
    return _services(request).fleet


async def _predictions(request: Request) -> PredictionService:
    return _services(request).predictions


async def _feedback(request: Request) -> FeedbackService:
    return _services(request).feedback


FleetDep = Annotated[ModelFleet, Depends(_fleet)]
PredictionsDep = Annotated[PredictionService, Depends(_predictions)]
FeedbackDep = Annotated[FeedbackService, Depends(_feedback)]
