"""``Annotated`` dependencies the gateway's routes take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.gateway.pool import ModelPool
from services.gateway.service import FeedbackService, PredictionService


@dataclass(frozen=True)
class GatewayServices:
    """What the routes use; built by the composition root and kept on ``app.state``."""

    pool: ModelPool
    predictions: PredictionService
    feedback: FeedbackService


def _services(request: Request) -> GatewayServices:
    services: GatewayServices = request.app.state.gateway
    return services


def _pool(request: Request) -> ModelPool:
    return _services(request).pool


def _predictions(request: Request) -> PredictionService:
    return _services(request).predictions


def _feedback(request: Request) -> FeedbackService:
    return _services(request).feedback


PoolDep = Annotated[ModelPool, Depends(_pool)]
PredictionsDep = Annotated[PredictionService, Depends(_predictions)]
FeedbackDep = Annotated[FeedbackService, Depends(_feedback)]
