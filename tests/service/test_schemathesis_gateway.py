"""Property-based API test of the gateway: no request a client can send gets a 5xx.

The app is built as its composition root builds it, over in-memory ports, serving a
champion and a challenger of the default model, a champion of a second model with
other features (card-fraud, its own documented paths) and one of a regression model
(monthly-spend: values answered, true values taken), and driven in-process.
Schemathesis generates requests from the OpenAPI document (its examples, boundary
values such as very large numbers, then random valid and invalid bodies) and runs its
default checks on every answer. The example count is bounded so CI stays quick.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from _gateway_fakes import (
    FRAUD,
    FRAUD_SPEC,
    MODEL,
    SPEND,
    SPEND_SPEC,
    FakeModelRegistry,
    FakeRoutingState,
    InMemoryFeatureStore,
    InMemoryPredictionRecords,
    registered,
    trained_pipeline,
)
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from starlette.types import ASGIApp

from services.gateway.app import GatewayPorts, create_app
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.settings import Settings
from shared.testing import RecordingPublisher, without_lifespan

#: Examples per operation and generation phase: enough to reach large numbers and odd
#: strings, few enough that the whole file runs in well under a minute on two cores.
EXAMPLES = 40

bounded = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


async def _answers(*_: Any, **__: Any) -> bool:
    return True


async def _load(app: FastAPI, *names: str) -> None:
    for name in names:
        await app.state.gateway.fleet.serving(name)


def serving_gateway() -> FastAPI:
    """The gateway over in-memory ports, a champion and a challenger at 50 %, card-fraud's
    champion, monthly-spend's (a regressor), Kafka and Redis answering readiness probes."""
    registry = FakeModelRegistry()
    registry.model_aliases[FRAUD] = {"champion": "1", "challenger": None}
    registry.model_aliases[SPEND] = {"champion": "1", "challenger": None}
    ports = GatewayPorts(
        registry,
        FakeRoutingState(),
        InMemoryPredictionRecords(),
        RecordingPublisher(),
        InMemoryFeatureStore(),
        registered(FRAUD_SPEC, SPEND_SPEC),
    )
    app = create_app(Settings(max_batch=8), ports=ports)
    asyncio.run(_load(app, FRAUD, SPEND))  # their champions
    app.state.gateway.fleet.default.pool.swap(
        ServingSnapshot(
            champion=LoadedModel(MODEL, "1", trained_pipeline(1)),
            challenger=LoadedModel(MODEL, "2", trained_pipeline(2)),
            routing=RoutingTable("exp-1", 0.5),
        )
    )
    runtime = app.state.runtime
    runtime.broker_started.set()
    for topic in runtime.consumer.health.waiting:  # the consumers joined their groups
        runtime.consumer.health.assigned(topic)
    runtime.broker.ping = _answers
    runtime.redis.ping = _answers
    return app


# Loaded when the module is collected (schemathesis's fixture-based loader relies on a
# pytest internal, Node._nodeid, that pytest 9.2 no longer has); each test then calls a
# gateway of its own, passed as ``app``.
#: Invalid data must be refused with a 4xx; a batch over ``maxItems`` is refused with the
#: gateway's documented 413 (more instances than GATEWAY_MAX_BATCH), which schemathesis's
#: default list lacks: when every generated row is valid, that 413 is the right answer.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "5xx"]}}}
)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", without_lifespan(serving_gateway()), config=CONFIG
)


@pytest.fixture
def gateway() -> ASGIApp:
    return without_lifespan(serving_gateway())


@schema.parametrize()
@bounded
def test_the_gateway_answers_every_request_without_a_5xx(
    case: schemathesis.Case[Any], gateway: ASGIApp
) -> None:
    case.call_and_validate(app=gateway)
