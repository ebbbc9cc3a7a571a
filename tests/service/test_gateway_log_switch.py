"""``GATEWAY_LOG_PREDICTIONS`` turns prediction logging off (for the logging-cost benchmark)."""

from __future__ import annotations

import httpx
import pytest
from _gateway_fakes import (
    SPEC,
    FakeModelRegistry,
    FakeRoutingState,
    InMemoryPredictionRecords,
    trained_pipeline,
)
from fastapi import FastAPI

from services.gateway.app import GatewayPorts, create_app
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.settings import Settings
from shared.datasets import generate_customers
from shared.events import PredictionLogged
from shared.testing import RecordingPublisher


def _gateway(settings: Settings, publisher: RecordingPublisher) -> FastAPI:
    ports = GatewayPorts(
        FakeModelRegistry(), FakeRoutingState(), InMemoryPredictionRecords(), publisher
    )
    app = create_app(settings, ports=ports)
    app.state.gateway.fleet.default.pool.swap(
        ServingSnapshot(
            champion=LoadedModel("customer-segment", "1", trained_pipeline(1)),
            challenger=None,
            routing=RoutingTable(None, 0.0),
        )
    )
    return app


async def _predict_and_drain(app: FastAPI) -> int:
    """POST one row, drain the buffer; return the HTTP status."""
    row = generate_customers(1, seed=5)[list(SPEC.feature_names)].to_dict("records")[0]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.post("/v1/predict", json={"features": row})
    events: PredictionEventBuffer = app.state.prediction_events
    while await events.drain_once():
        pass
    return response.status_code


def test_logging_is_on_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().log_predictions is True
    monkeypatch.setenv("GATEWAY_LOG_PREDICTIONS", "false")
    assert Settings().log_predictions is False


@pytest.mark.parametrize("log_predictions", [True, False])
async def test_predictions_are_logged_only_when_the_switch_is_on(log_predictions: bool) -> None:
    publisher = RecordingPublisher()
    app = _gateway(Settings(log_predictions=log_predictions), publisher)
    assert await _predict_and_drain(app) == 200
    assert len(publisher.of_type(PredictionLogged)) == (1 if log_predictions else 0)
